package hsmkms

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/asn1"
	"encoding/base64"
	"math/big"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

func signFields(verify bool) map[string]*framework.FieldSchema {
	fields := map[string]*framework.FieldSchema{
		"name": nameField,
		"input": {
			Type:        framework.TypeString,
			Description: "Base64 data to sign or verify; with prehashed, the digest itself.",
		},
		"hash_algorithm": {
			Type:        framework.TypeString,
			Description: "Hash: sha2-256 (default), sha2-224, sha2-384, sha2-512, sha3-224, sha3-256, sha3-384, sha3-512, or sha1 (verify only). Hashed by the plugin, the digest signed by the HSM (RSA-PSS with a hash the token lacks is encoded by the plugin and signed raw). May also be given as the last path segment.",
		},
		"algorithm": {
			Type:        framework.TypeString,
			Description: "Deprecated Transit spelling of hash_algorithm.",
		},
		"urlalgorithm": {
			Type:        framework.TypeString,
			Description: "Hash algorithm given in the URL (sign/:name/:hash_algorithm).",
		},
		"prehashed": {
			Type:        framework.TypeBool,
			Description: "The input is already the digest of hash_algorithm; its length must match.",
		},
		"isdigest": {
			Type:        framework.TypeBool,
			Description: "The seeds' name for prehashed.",
		},
		"signature_algorithm": {
			Type:        framework.TypeString,
			Description: "RSA only: pss (default) or pkcs1v15.",
		},
		"marshaling_algorithm": {
			Type: framework.TypeString,
			Description: "asn1 (default: DER for ECDSA, standard base64) or jws (raw r||s of the curve's size for ECDSA, " +
				"url-safe base64 without padding).",
		},
		"salt_length": {
			Type: framework.TypeString,
			Description: "RSA-PSS salt: auto (default: the largest when signing, detected when verifying), hash (the hash's " +
				"length; what PS256/384/512 use), or a number of bytes.",
		},
		"alg": {
			Type: framework.TypeString,
			Description: "JWA name (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512): sets hash_algorithm and " +
				"signature_algorithm, and must fit the key.",
		},
		"key_version": {
			Type:        framework.TypeInt,
			Description: "Key version to sign with; 0 (default) means the latest.",
		},
		"batch_input": {
			Type: framework.TypeSlice,
			Description: "List of objects with 'input'" + map[bool]string{true: " and 'signature'", false: ""}[verify] +
				" (and 'reference', echoed back); the other options apply to every item. Results keep the input order.",
		},
	}
	if verify {
		fields["signature"] = &framework.FieldSchema{
			Type:        framework.TypeString,
			Description: "Signature as sign returned it: vault:v<version>:<base64>.",
		}
		fields["hmac"] = &framework.FieldSchema{
			Type:        framework.TypeString,
			Description: "HMAC as hmac returned it, to check instead of a signature (keys of type hmac).",
		}
		fields["key_version"].Description = "Ignored: the signature names its version."
	}
	return fields
}

func (b *backend) pathSign() *framework.Path {
	return &framework.Path{
		Pattern:      "sign/" + keyNamePattern + framework.OptionalParamRegex("urlalgorithm"),
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "sign", OperationSuffix: "|with-algorithm"},
		Fields:       signFields(false),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathSignWrite, Summary: "Sign data with a private key in the HSM."},
		},
		HelpSynopsis:    "Sign data with an RSA, ECDSA or Ed25519 key whose private half never leaves the HSM.",
		HelpDescription: pathSignHelpDesc,
	}
}

func (b *backend) pathVerify() *framework.Path {
	return &framework.Path{
		Pattern:      "verify/" + keyNamePattern + framework.OptionalParamRegex("urlalgorithm"),
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "verify", OperationSuffix: "|with-algorithm"},
		Fields:       signFields(true),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathVerifyWrite, Summary: "Verify a signature made by sign."},
		},
		HelpSynopsis:    "Verify a signature made with an RSA, ECDSA or Ed25519 key, or an HMAC.",
		HelpDescription: pathVerifyHelpDesc,
	}
}

func signRequestFrom(d *framework.FieldData) signRequest {
	r := signRequest{
		signatureAlgorithm: d.Get("signature_algorithm").(string),
		marshaling:         d.Get("marshaling_algorithm").(string),
		saltLength:         d.Get("salt_length").(string),
		alg:                d.Get("alg").(string),
		prehashed:          d.Get("prehashed").(bool) || d.Get("isdigest").(bool),
	}
	for _, f := range []string{"urlalgorithm", "hash_algorithm", "algorithm"} {
		if v, ok := d.GetOk(f); ok && v.(string) != "" {
			r.hashAlgorithm, r.hashGiven = v.(string), true
			break
		}
	}
	return r
}

// signRequest is an opRequest for sign or verify, with its options.
func (b *backend) signRequest(ctx context.Context, req *logical.Request, d *framework.FieldData, op string, fields []string) (*opRequest, signOptions, error) {
	r, err := b.newOpRequest(ctx, req, d, op, fields)
	if err != nil {
		return nil, signOptions{}, err
	}
	kt := r.key.KeyType()
	if !kt.Signs() {
		return nil, signOptions{}, keyring.Userf("key %q is of type %s, which cannot %s; use an RSA, ECDSA or Ed25519 key", r.key.Name, r.key.Type, op)
	}
	opts, err := readSignOptions(signRequestFrom(d), kt)
	if err != nil {
		return nil, signOptions{}, err
	}
	if op == keyring.OpSign && !wire.HashAllows(opts.hash, wire.UseSign) {
		return nil, signOptions{}, keyring.Userf("hash_algorithm %s verifies old signatures only; sign with sha2-256 or stronger", wire.HashName(opts.hash))
	}
	return r, opts, nil
}

func (b *backend) pathSignWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r, opts, err := b.signRequest(ctx, req, d, keyring.OpSign, []string{"input", "key_version", "reference"})
	if err != nil {
		return respondError("sign", err)
	}
	results := b.each(r, "sign", func(item cryptoItem) (batchResult, error) {
		sig, version, err := b.signItem(ctx, r.client, r.key, opts, item)
		return batchResult{Signature: sig, KeyVersion: version, version: version}, err
	})
	return answer(req, d, r, "sign", batchSign, false, results, func(res batchResult) map[string]interface{} {
		return map[string]interface{}{"signature": res.Signature, "key_version": res.KeyVersion}
	})
}

func (b *backend) pathVerifyWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if isHMACVerify(d) {
		return b.pathVerifyHMAC(ctx, req, d)
	}
	r, opts, err := b.signRequest(ctx, req, d, keyring.OpVerify, []string{"input", "signature", "reference"})
	if err != nil {
		return respondError("verify", err)
	}
	results := b.each(r, "verify", func(item cryptoItem) (batchResult, error) {
		valid, version, err := b.verifyItem(ctx, r.client, r.key, opts, item)
		return batchResult{Valid: &valid, version: version}, err
	})
	return answer(req, d, r, "verify", batchVerify, false, results, func(res batchResult) map[string]interface{} {
		return map[string]interface{}{"valid": *res.Valid}
	})
}

// isHMACVerify tells an HMAC check from a signature check: the request, or
// its first batch item, carries hmac.
func isHMACVerify(d *framework.FieldData) bool {
	if v, ok := d.GetOk("hmac"); ok && v.(string) != "" {
		return true
	}
	if raw, ok := d.GetOk("batch_input"); ok {
		if list, ok := raw.([]interface{}); ok && len(list) > 0 {
			if m, ok := list[0].(map[string]interface{}); ok {
				_, has := m["hmac"]
				return has
			}
		}
	}
	return false
}

func (b *backend) pathVerifyHMAC(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r, err := b.newOpRequest(ctx, req, d, keyring.OpHMACVerify, []string{"input", "hmac", "reference"})
	if err != nil {
		return respondError("verify", err)
	}
	hash, err := hmacHash(d, r.key.KeyType().HMACKeyBits(), r.key.Imported)
	if err != nil {
		return respondError("verify", err)
	}
	results := b.each(r, "verify_hmac", func(item cryptoItem) (batchResult, error) {
		valid, version, err := b.verifyHMAC(ctx, r, hash, item)
		return batchResult{Valid: &valid, version: version}, err
	})
	return answer(req, d, r, "verify", batchHMAC, false, results, func(res batchResult) map[string]interface{} {
		return map[string]interface{}{"valid": *res.Valid}
	})
}

// digestOf hashes the input, or checks the length of a prehashed one.
// digestOf hashes the input, or checks a prehashed one; Ed25519 signs the
// message itself, as in Transit.
func digestOf(opts signOptions, input string, kt keyring.KeyType) ([]byte, error) {
	data, err := base64.StdEncoding.DecodeString(input)
	if err != nil {
		return nil, keyring.Userf("input is not valid base64")
	}
	if kt.SignsMessage() {
		if opts.prehashed {
			return nil, keyring.Userf("ed25519 signs the message itself; prehashed input is not supported")
		}
		return data, nil
	}
	if opts.prehashed {
		if len(data) != opts.hash.Size() {
			return nil, keyring.Userf("prehashed input is %d bytes; a %s digest is %d bytes", len(data), wire.HashName(opts.hash), opts.hash.Size())
		}
		return data, nil
	}
	h := opts.hash.New()
	h.Write(data)
	return h.Sum(nil), nil
}

func (b *backend) signItem(ctx context.Context, client *hsm.Client, k *keyring.Entry, opts signOptions, item cryptoItem) (string, int, error) {
	digest, err := digestOf(opts, item.Input, k.KeyType())
	if err != nil {
		return "", 0, err
	}
	version, kv, err := k.EncryptionVersion(item.KeyVersion)
	if err != nil {
		return "", 0, err
	}
	if err := kv.PrivateKeyMissing(k.Name, version); err != nil {
		return "", 0, err
	}
	release, err := b.ring.Pin(ctx, client, k, kv)
	if err != nil {
		return "", 0, err
	}
	defer release()
	pub, err := b.parsedPublicKey(kv)
	if err != nil {
		return "", 0, err
	}
	var sig []byte
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		if opts.pss {
			sig, err = client.SignRSAPSS(ctx, kv.ObjectID, pub, opts.hash, digest, resolveSaltLength(opts.saltLen, pub, opts.hash))
		} else {
			sig, err = client.SignRSAPKCS1v15(ctx, kv.ObjectID, pub, opts.hash, digest)
		}
	case *ecdsa.PublicKey:
		sig, err = client.SignECDSA(ctx, kv.ObjectID, pub, digest)
		if err == nil && !opts.jws {
			sig, err = rawToASN1(sig)
		}
	case ed25519.PublicKey:
		sig, err = client.SignEd25519(ctx, kv.ObjectID, pub, digest) // digestOf left the message whole
	}
	if err != nil {
		return "", 0, err
	}
	return wire.FormatSignature(version, sig, opts.jws), version, nil
}

func (b *backend) verifyItem(ctx context.Context, client *hsm.Client, k *keyring.Entry, opts signOptions, item cryptoItem) (bool, int, error) {
	version, sig, err := wire.ParseSignature(item.Signature, opts.jws)
	if err != nil {
		return false, 0, err
	}
	kv, err := k.DecryptionVersion(version, wire.NounSignature)
	if err != nil {
		return false, version, err
	}
	digest, err := digestOf(opts, item.Input, k.KeyType())
	if err != nil {
		return false, version, err
	}
	pub, err := b.verifiedPublicKey(ctx, client, k, version, kv)
	if err != nil {
		return false, version, err
	}
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		if opts.pss {
			return rsa.VerifyPSS(pub, opts.hash, digest, sig, &rsa.PSSOptions{SaltLength: opts.saltLen, Hash: opts.hash}) == nil, version, nil
		}
		return rsa.VerifyPKCS1v15(pub, opts.hash, digest, sig) == nil, version, nil
	case *ecdsa.PublicKey:
		if !opts.jws {
			return ecdsa.VerifyASN1(pub, digest, sig), version, nil
		}
		size := (pub.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*size {
			return false, version, nil
		}
		return ecdsa.Verify(pub, digest, new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])), version, nil
	case ed25519.PublicKey:
		return ed25519.Verify(pub, digest, sig), version, nil
	}
	return false, version, nil
}

// rawToASN1 turns the HSM's r||s into the DER SEQUENCE openssl and X.509 use.
func rawToASN1(sig []byte) ([]byte, error) {
	half := len(sig) / 2
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:half]), new(big.Int).SetBytes(sig[half:])})
}

const pathSignHelpDesc = `
Signs the input inside the HSM with the key's private half (RSA PKCS#1 v1.5
or PSS, or ECDSA) and returns vault:v<version>:<base64 signature>. The
digest is computed by the plugin (or given, with prehashed); each signature is
verified with the public key before it is returned. alg takes the JWA names.

Examples:

    $ vault write kms/sign/rsa1 input=$(echo -n hello | base64) alg=PS256
    $ vault write kms/sign/ec1/sha2-384 input=... marshaling_algorithm=jws
`

const pathVerifyHelpDesc = `
Checks a signature made by sign against the input, with the key's public
half, and answers valid: true or false. A signature that cannot be parsed is
a 400. The options must match the ones used to sign.
`
