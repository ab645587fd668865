package hsmkms

import (
	"context"
	"crypto"
	"crypto/subtle"
	"encoding/base64"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

func (b *backend) pathHMAC() *framework.Path {
	return &framework.Path{
		Pattern:      "hmac/" + keyNamePattern + framework.OptionalParamRegex("urlalgorithm"),
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "generate", OperationSuffix: "hmac|hmac-with-algorithm"},
		Fields: map[string]*framework.FieldSchema{
			"name": nameField,
			"input": {
				Type:        framework.TypeString,
				Description: "Base64 data to authenticate.",
			},
			"algorithm": {
				Type:        framework.TypeString,
				Description: "sha2-256 (default), sha2-384 or sha2-512. May also be given as the last path segment.",
			},
			"urlalgorithm": {
				Type:        framework.TypeString,
				Description: "Algorithm given in the URL (hmac/:name/:algorithm).",
			},
			"key_version": {
				Type:        framework.TypeInt,
				Description: "Key version to use; 0 (default) means the latest.",
			},
			"batch_input": {
				Type:        framework.TypeSlice,
				Description: "List of objects with 'input' (and 'reference', echoed back). Results keep the input order.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathHMACWrite, Summary: "Compute an HMAC in the HSM."},
		},
		HelpSynopsis: "Compute an HMAC with a key of type hmac, inside the HSM.",
		HelpDescription: `
Returns vault:v<version>:<base64 HMAC>. Check one with verify/:name and the
hmac field. Keys of type hmac only.

    $ vault write kms/hmac/mac1 input=$(echo -n data | base64)
`,
	}
}

// hmacHash reads the algorithm from the URL, body, or Transit's older field.
// Imported keys skip the size check: a JWK's short key is padded on the
// token (the same HMAC), and a BYOK key's size is the token's to judge.
func hmacHash(d *framework.FieldData, bits int, imported bool) (crypto.Hash, error) {
	hashName := "sha2-256"
	for _, f := range []string{"urlalgorithm", "algorithm", "hash_algorithm"} {
		if v, ok := d.GetOk(f); ok && v.(string) != "" {
			hashName = strings.ToLower(v.(string))
			break
		}
	}
	hash, ok := wire.LookupHash(hashName, wire.UseHMAC)
	if !ok {
		return 0, keyring.Userf("algorithm %s is not one of: %s", hashName, strings.Join(wire.HashNames(wire.UseHMAC), ", "))
	}
	if !imported && bits < hash.Size()*8 {
		return 0, keyring.Userf("this HMAC key has %d bits, shorter than the output of %s; use a key of at least %d bits", bits, hashName, hash.Size()*8)
	}
	return hash, nil
}

func (b *backend) pathHMACWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r, err := b.newOpRequest(ctx, req, d, keyring.OpHMAC, []string{"input", "key_version", "reference"})
	if err != nil {
		return respondError("hmac", err)
	}
	hash, err := hmacHash(d, r.key.KeyType().HMACKeyBits(), r.key.Imported)
	if err != nil {
		return respondError("hmac", err)
	}
	results := b.each(r, "hmac", func(item cryptoItem) (batchResult, error) {
		version, kv, err := r.key.EncryptionVersion(item.KeyVersion)
		if err != nil {
			return batchResult{}, err
		}
		mac, err := b.hmacOf(ctx, r.client, r.key, kv, hash, item)
		return batchResult{HMAC: wire.Format(version, mac), KeyVersion: version, version: version}, err
	})
	return answer(req, d, r, "hmac", batchHMAC, false, results, func(res batchResult) map[string]interface{} {
		return map[string]interface{}{"hmac": res.HMAC, "key_version": res.KeyVersion}
	})
}

func (b *backend) hmacOf(ctx context.Context, client *hsm.Client, k *keyring.Entry, kv *keyring.Version, hash crypto.Hash, item cryptoItem) ([]byte, error) {
	data, err := base64.StdEncoding.DecodeString(item.Input)
	if err != nil {
		return nil, keyring.Userf("input is not valid base64")
	}
	if k.KeyType().HasHMACCompanion() {
		if kv.HMACObjectID == nil {
			return nil, keyring.Userf("this version of AES key %q has no HMAC key: it was made before AES keys got one, or is wrapped or adopted; rotate the key (a new version gets one), or use a key of type hmac", k.Name)
		}
		return client.HMAC(ctx, kv.HMACObjectID, hash, data)
	}
	release, err := b.ring.Pin(ctx, client, k, kv)
	if err != nil {
		return nil, err
	}
	defer release()
	return client.HMAC(ctx, kv.ObjectID, hash, data)
}

// verifyHMAC checks one HMAC made by hmac: computed again in the HSM with
// the version the HMAC names, compared in constant time.
func (b *backend) verifyHMAC(ctx context.Context, r *opRequest, hash crypto.Hash, item cryptoItem) (bool, int, error) {
	version, want, err := wire.Parse(wire.NounHMAC, item.HMAC)
	if err != nil {
		return false, 0, err
	}
	kv, err := r.key.DecryptionVersion(version, wire.NounHMAC)
	if err != nil {
		return false, version, err
	}
	got, err := b.hmacOf(ctx, r.client, r.key, kv, hash, item)
	if err != nil {
		return false, version, err
	}
	return subtle.ConstantTimeCompare(got, want) == 1, version, nil
}
