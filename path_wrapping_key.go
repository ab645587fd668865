package hsmkms

import (
	"context"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

func (b *backend) pathWrappingKey() *framework.Path {
	return &framework.Path{
		Pattern:      "wrapping_key",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "read", OperationSuffix: "wrapping-key"},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathWrappingKeyRead,
				Summary:  "The public half of the RSA-4096 key that BYOK imports are wrapped for.",
			},
		},
		HelpSynopsis: "Read the wrapping key for BYOK import (Transit's).",
		HelpDescription: `
Returns public_key: the PEM public key of an RSA-4096 key pair made in the
HSM at the first read and kept for the mount's life. Its private half is
sensitive, never extractable, and may only decrypt and unwrap. Wrap a key for
keys/:name/import as Transit does (the vault CLI does it for you):

    $ vault transit import kms/keys/app1 @key.b64 type=aes256-gcm96
`,
	}
}

func (b *backend) pathWrappingKeyRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("wrapping key", err)
	}
	w, err := b.ring.WrappingKey(ctx, req.Storage, client)
	if err != nil {
		return respondError("wrapping key", err)
	}
	return &logical.Response{Data: map[string]interface{}{"public_key": wire.PublicKeyPEM(w.PublicKey)}}, nil
}
