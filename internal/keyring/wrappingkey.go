package keyring

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"fmt"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

const wrappingKeyStorageKey = "wrapping_key"

// WrappingKeyOwner stands for the wrapping key in object labels and WAL
// entries; it starts with '.', so no key can have it.
const WrappingKeyOwner = ".wrapping_key"

// WrappingKeyEntry is the mount's BYOK wrapping key: an RSA-4096 pair on
// the token, made once. Its JSON is stored.
type WrappingKeyEntry struct {
	ObjectID  []byte `json:"object_id"`
	Label     string `json:"label"`
	PublicKey []byte `json:"public_key"` // PKIX DER
}

// HSMKey is the key as hsm/ takes it.
func (w *WrappingKeyEntry) HSMKey() (hsm.WrappingKey, error) {
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

// LoadWrappingKey reads the wrapping key; nil before its first use.
func LoadWrappingKey(ctx context.Context, s logical.Storage) (*WrappingKeyEntry, error) {
	entry, err := s.Get(ctx, wrappingKeyStorageKey)
	if err != nil {
		return nil, fmt.Errorf("reading the wrapping key: %w", err)
	}
	if entry == nil {
		return nil, nil
	}
	var w WrappingKeyEntry
	if err := entry.DecodeJSON(&w); err != nil {
		return nil, fmt.Errorf("decoding the wrapping key: %w", err)
	}
	return &w, nil
}

// WrappingKey returns the mount's wrapping key, making it on first use.
func (r *Keyring) WrappingKey(ctx context.Context, s logical.Storage, client HSM) (*WrappingKeyEntry, error) {
	if w, err := LoadWrappingKey(ctx, s); err != nil || w != nil {
		return w, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, err := LoadWrappingKey(ctx, s); err != nil || w != nil {
		return w, err
	}
	obj, err := r.BeginObject(ctx, s, client, WrappingKeyOwner, ObjectLabel(r.owner, WrappingKeyOwner, 1))
	if err != nil {
		return nil, err
	}
	pub, err := client.GenerateWrappingKey(ctx, obj.ID, obj.Label)
	if err != nil {
		obj.Abandon(ctx)
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		obj.Abandon(ctx)
		return nil, fmt.Errorf("encoding the wrapping key: %w", err)
	}
	w := &WrappingKeyEntry{ObjectID: obj.ID, Label: obj.Label, PublicKey: der}
	entry, err := logical.StorageEntryJSON(wrappingKeyStorageKey, w)
	if err != nil {
		return nil, err
	}
	if err := s.Put(ctx, entry); err != nil {
		// The WAL rollback looks in storage before destroying anything.
		return nil, fmt.Errorf("storing the wrapping key: %w", err)
	}
	obj.Stored(ctx)
	return w, nil
}
