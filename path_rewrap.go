package hsmkms

import (
	"context"
	"encoding/base64"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
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
	client, conf, k, items, batch, resp, err := b.cryptoRequest(ctx, req, d, opDecrypt, fields)
	if resp != nil || err != nil {
		return resp, err
	}
	if msg := k.usable(opEncrypt); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	results := make([]batchResult, len(items))
	for i, item := range items {
		plaintext, domain, err := b.decryptItem(ctx, client, k, item)
		if err != nil {
			results[i] = itemFailure(err)
			continue
		}
		item.domain = domain // a data key stays a data key
		item.Plaintext, item.plaintextGiven = base64.StdEncoding.EncodeToString(plaintext), true
		clear(plaintext)
		ciphertext, version, err := b.encryptItem(ctx, client, conf, k, item)
		if err != nil {
			results[i] = itemFailure(err)
			continue
		}
		results[i] = batchResult{Ciphertext: ciphertext, KeyVersion: version}
	}
	b.stats.add("rewrap", int64(len(items)))
	if batch {
		// Transit answers a rewrap batch 200 whatever failed, each
		// failure in its item.
		return okBatchResponse(batchEncrypt, results, items), nil
	}
	if r := results[0]; r.Error != "" {
		return singleFailure("rewrap", r)
	}
	return &logical.Response{Data: map[string]interface{}{"ciphertext": results[0].Ciphertext, "key_version": results[0].KeyVersion}}, nil
}
