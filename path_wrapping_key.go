package hsmkms

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

const wrappingKeyStorageKey = "wrapping_key"

// wrappingKeyName stands for the wrapping key in object labels and WAL
// entries; it starts with '.', so no key can have it.
const wrappingKeyName = ".wrapping_key"

// wrappingKeyEntry is the mount's BYOK wrapping key: an RSA-4096 pair on
// the token, made once.
type wrappingKeyEntry struct {
	ObjectID  []byte `json:"object_id"`
	Label     string `json:"label"`
	PublicKey []byte `json:"public_key"` // PKIX DER
}

func (w *wrappingKeyEntry) hsmKey() (hsm.WrappingKey, error) {
	pub, err := x509.ParsePKIXPublicKey(w.PublicKey)
	if err != nil {
		return hsm.WrappingKey{}, fmt.Errorf("decoding the stored wrapping key: %w", err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return hsm.WrappingKey{}, fmt.Errorf("the stored wrapping key is a %T", pub)
	}
	return hsm.WrappingKey{ID: w.ObjectID, Public: rsaPub}, nil
}

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
	w, err := b.wrappingKey(ctx, req.Storage, client)
	if err != nil {
		return respondError("wrapping key", err)
	}
	return &logical.Response{Data: map[string]interface{}{"public_key": wire.PublicKeyPEM(w.PublicKey)}}, nil
}

// wrappingKey returns the mount's wrapping key, making it on first use.
func (b *backend) wrappingKey(ctx context.Context, s logical.Storage, client *hsm.Client) (*wrappingKeyEntry, error) {
	if w, err := loadWrappingKey(ctx, s); err != nil || w != nil {
		return w, err
	}
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	if w, err := loadWrappingKey(ctx, s); err != nil || w != nil {
		return w, err
	}
	obj, err := b.beginObject(ctx, s, client, wrappingKeyName, objectLabel(b.owner, wrappingKeyName, 1))
	if err != nil {
		return nil, err
	}
	pub, err := client.GenerateWrappingKey(ctx, obj.ID, obj.Label)
	if err != nil {
		obj.abandon(ctx)
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		obj.abandon(ctx)
		return nil, fmt.Errorf("encoding the wrapping key: %w", err)
	}
	w := &wrappingKeyEntry{ObjectID: obj.ID, Label: obj.Label, PublicKey: der}
	entry, err := logical.StorageEntryJSON(wrappingKeyStorageKey, w)
	if err != nil {
		return nil, err
	}
	if err := s.Put(ctx, entry); err != nil {
		// The WAL rollback looks in storage before destroying anything.
		return nil, fmt.Errorf("storing the wrapping key: %w", err)
	}
	obj.stored(ctx)
	return w, nil
}

func loadWrappingKey(ctx context.Context, s logical.Storage) (*wrappingKeyEntry, error) {
	entry, err := s.Get(ctx, wrappingKeyStorageKey)
	if err != nil {
		return nil, fmt.Errorf("reading the wrapping key: %w", err)
	}
	if entry == nil {
		return nil, nil
	}
	var w wrappingKeyEntry
	if err := entry.DecodeJSON(&w); err != nil {
		return nil, fmt.Errorf("decoding the wrapping key: %w", err)
	}
	return &w, nil
}
