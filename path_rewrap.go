package hsmkms

import (
	"context"
	"encoding/base64"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func (b *backend) pathRewrap() *framework.Path {
	fields := contextFields()
	fields["name"] = nameField
	fields["ciphertext"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "Ciphertext to move to the latest (or key_version) version of the key.",
	}
	fields["key_version"] = &framework.FieldSchema{
		Type:        framework.TypeInt,
		Description: "Version to re-encrypt under; 0 (default) means the latest.",
	}
	fields["padding_scheme"] = paddingField
	return &framework.Path{
		Pattern:      "rewrap/" + keyNamePattern,
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "rewrap"},
		Fields:       fields,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathRewrapWrite, Summary: "Re-encrypt a ciphertext under the key's latest version."},
		},
		HelpSynopsis: "Re-encrypt ciphertexts under the latest key version without returning plaintext.",
		HelpDescription: `
Decrypts the ciphertext with the version that made it and encrypts the result
with the latest version (or key_version), keeping the same context fields.
The plaintext never leaves the plugin. Needs the decrypt and encrypt
operations. batch_input rewraps many at once.

    $ vault write kms/rewrap/app1 ciphertext=vault:v1:...
`,
	}
}

func (b *backend) pathRewrapWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	fields := []string{"ciphertext", "context", "associated_data", "encryption_context", "key_version", "reference", "padding_scheme"}
	r, err := b.newOpRequest(ctx, req, d, keyring.OpDecrypt, fields)
	if err != nil {
		return respondError("rewrap", err)
	}
	if err := r.key.Usable(keyring.OpEncrypt); err != nil {
		return respondError("rewrap", err)
	}
	results := b.each(r, "rewrap", func(item cryptoItem) (batchResult, error) {
		plaintext, _, domain, err := b.decryptItem(ctx, r.client, r.key, item)
		if err != nil {
			return batchResult{}, err
		}
		item.domain = domain // a data key stays a data key
		item.Plaintext, item.plaintextGiven = base64.StdEncoding.EncodeToString(plaintext), true
		clear(plaintext)
		ciphertext, version, err := b.encryptItem(ctx, r.client, r.conf, r.key, item)
		return batchResult{Ciphertext: ciphertext, KeyVersion: version, version: version}, err
	})
	// Transit answers a rewrap batch 200 whatever failed, each failure in
	// its item.
	return answer(req, d, r, "rewrap", batchEncrypt, false, results, func(res batchResult) map[string]interface{} {
		return map[string]interface{}{"ciphertext": res.Ciphertext, "key_version": res.KeyVersion}
	})
}
