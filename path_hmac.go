package hsmkms

import (
	"context"
	"crypto"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
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
func hmacHash(d *framework.FieldData, bits int, imported bool) (crypto.Hash, string) {
	hashName := "sha2-256"
	for _, f := range []string{"urlalgorithm", "algorithm", "hash_algorithm"} {
		if v, ok := d.GetOk(f); ok && v.(string) != "" {
			hashName = strings.ToLower(v.(string))
			break
		}
	}
	hash, ok := wire.LookupHash(hashName, wire.UseHMAC)
	if !ok {
		return 0, "algorithm " + hashName + " is not one of: " + strings.Join(wire.HashNames(wire.UseHMAC), ", ")
	}
	if !imported && bits < hash.Size()*8 {
		return 0, fmt.Sprintf("this HMAC key has %d bits, shorter than the output of %s; use a key of at least %d bits", bits, hashName, hash.Size()*8)
	}
	return hash, ""
}

func (b *backend) pathHMACWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	client, _, k, items, batch, resp, err := b.cryptoRequest(ctx, req, d, opHMAC, []string{"input", "key_version", "reference"})
	if resp != nil || err != nil {
		return resp, err
	}
	hash, msg := hmacHash(d, hmacKeyBits(k), k.Imported)
	if msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	results := make([]batchResult, len(items))
	for i, item := range items {
		version, kv, msg := k.encryptionVersion(item.KeyVersion)
		if msg != "" {
			results[i] = batchResult{Error: msg}
			continue
		}
		mac, err := b.hmacOf(ctx, client, k, kv, hash, item)
		if err != nil {
			results[i] = itemFailure(err)
			continue
		}
		results[i] = batchResult{HMAC: wire.Format(version, mac), KeyVersion: version}
	}
	b.stats.add("hmac", int64(len(items)))
	if batch {
		return okBatchResponse(batchHMAC, results, items), nil
	}
	if r := results[0]; r.Error != "" {
		return singleFailure("hmac", r)
	}
	return &logical.Response{Data: map[string]interface{}{"hmac": results[0].HMAC, "key_version": results[0].KeyVersion}}, nil
}

func (b *backend) hmacOf(ctx context.Context, client *hsm.Client, k *keyEntry, kv *keyVersion, hash crypto.Hash, item cryptoItem) ([]byte, error) {
	data, err := base64.StdEncoding.DecodeString(item.Input)
	if err != nil {
		return nil, userErrorf("input is not valid base64")
	}
	if k.keyType().family == familyAES {
		if kv.HMACObjectID == nil {
			return nil, userErrorf("this version of AES key %q has no HMAC key: it was made before AES keys got one, or is wrapped or adopted; rotate the key (a new version gets one), or use a key of type hmac", k.Name)
		}
		return client.HMAC(ctx, kv.HMACObjectID, hash, data)
	}
	release, err := b.pinVersion(ctx, client, k, kv)
	if err != nil {
		return nil, err
	}
	defer release()
	return client.HMAC(ctx, kv.ObjectID, hash, data)
}

// hmacCompanionBits is the size of an AES version's HMAC key: enough for
// HMAC-SHA-512.
const hmacCompanionBits = 512

// hmacKeyBits is the size of the key hmac uses for k.
func hmacKeyBits(k *keyEntry) int {
	if k.keyType().family == familyAES {
		return hmacCompanionBits
	}
	return k.keyType().bits
}

// verifyHMACItems checks HMACs made by hmac: computed again in the HSM with
// the version the HMAC names, compared in constant time.
func (b *backend) verifyHMACItems(ctx context.Context, client *hsm.Client, k *keyEntry, d *framework.FieldData, items []cryptoItem) ([]batchResult, string) {
	if f := k.keyType().family; f != familyHMAC && f != familyAES {
		return nil, "key " + k.Name + " is of type " + k.Type + "; hmac verification needs a key of type hmac or an AES key"
	}
	hash, msg := hmacHash(d, hmacKeyBits(k), k.Imported)
	if msg != "" {
		return nil, msg
	}
	results := make([]batchResult, len(items))
	for i, item := range items {
		version, want, err := wire.Parse(wire.NounHMAC, item.HMAC)
		if err != nil {
			results[i] = itemFailure(err)
			continue
		}
		kv, msg := k.decryptionVersion(version)
		if msg != "" {
			results[i] = batchResult{Error: strings.Replace(msg, "ciphertext", "hmac", 1)}
			continue
		}
		got, err := b.hmacOf(ctx, client, k, kv, hash, item)
		if err != nil {
			results[i] = itemFailure(err)
			continue
		}
		valid := subtle.ConstantTimeCompare(got, want) == 1
		results[i] = batchResult{Valid: &valid}
	}
	return results, ""
}
