package hsmkms

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/vault/sdk/logical"
)

// Key entries are read on every request, and a plugin's storage read is a
// round trip to Vault; the backend keeps the entries it has read. A cached
// entry is never modified: writers load a fresh copy from storage, change
// it, store it and publish the new pointer (saveKey), so readers that hold
// the old one see a consistent key.

// cachedKey returns the key from the cache or storage; nil when none.
func (b *backend) cachedKey(ctx context.Context, s logical.Storage, name string) (*keyEntry, error) {
	if k, ok := b.keyCache.Load(name); ok {
		return k.(*keyEntry), nil
	}
	k, err := loadKey(ctx, s, name)
	if err != nil || k == nil {
		return k, err
	}
	b.keyCache.Store(name, k)
	return k, nil
}

// saveKey stores the key and publishes it to readers.
func (b *backend) saveKey(ctx context.Context, s logical.Storage, k *keyEntry) error {
	if err := storeKey(ctx, s, k); err != nil {
		b.keyCache.Delete(k.Name)
		return err
	}
	b.keyCache.Store(k.Name, k)
	return nil
}

// deleteKey removes the key's storage entry and forgets it.
func (b *backend) deleteKey(ctx context.Context, s logical.Storage, name string) error {
	defer b.keyCache.Delete(name)
	if err := s.Delete(ctx, keyStoragePrefix+name); err != nil {
		return fmt.Errorf("deleting key %q: %w", name, err)
	}
	return nil
}

// invalidateKey drops a key that another node changed (performance
// standbys and replication call Invalidate with the storage path).
func (b *backend) invalidateKey(storagePath string) bool {
	name, ok := strings.CutPrefix(storagePath, keyStoragePrefix)
	if ok {
		b.keyCache.Delete(name)
	}
	return ok
}
