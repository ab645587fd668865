package hsmkms

import (
	"context"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

const exportTypePublicKey = "public-key"

func (b *backend) pathExport() *framework.Path {
	return &framework.Path{
		Pattern:      "export/(?P<type>[^/]+)/" + keyNamePattern + framework.OptionalParamRegex("version"),
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "export", OperationSuffix: "key|key-version"},
		Fields: map[string]*framework.FieldSchema{
			"type": {
				Type:        framework.TypeString,
				Description: "What to export: only public-key. Private and secret key material never leaves the HSM.",
			},
			"name": nameField,
			"version": {
				Type:        framework.TypeString,
				Description: "Version to export: a number, v<number> or 'latest'; every version when omitted.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{Callback: b.pathExportRead, Summary: "Export the public key of an RSA, ECDSA or Ed25519 key."},
		},
		HelpSynopsis: "Export public keys, as Transit's export/public-key.",
		HelpDescription: `
Returns Transit's map of version to public key: PEM (PKIX) for an RSA or
ECDSA key, base64 of the raw 32-byte key for Ed25519 (as Transit shows it),
for openssl or any other verifier or encryptor:

    $ vault read -field=keys kms/export/public-key/rsa1/1
`,
	}
}

func (b *backend) pathExportRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := keyring.CheckName(name); err != nil {
		return respondError("export", err)
	}
	if typ := d.Get("type").(string); typ != exportTypePublicKey {
		return respondError("export", keyring.Userf("export type %q is not available: only public-key; key material never leaves the HSM", typ))
	}
	k, err := b.ring.Resolve(ctx, req.Storage, name)
	if err != nil {
		return respondError("export", err)
	}
	if !k.KeyType().Asymmetric() {
		return respondError("export", keyring.Userf("key %q is of type %s and has no public key", name, k.Type))
	}
	keys, err := exportPublicKeys(k, d.Get("version").(string))
	if err != nil {
		return respondError("export", err)
	}
	return &logical.Response{Data: map[string]interface{}{"name": k.Name, "type": k.Type, "keys": keys}}, nil
}
