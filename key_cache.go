package hsmkms

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/vault/sdk/logical"
)

// Key entries are read on every request, and a plugin's storage read is a
// round trip to Vault; the backend keeps the entries it has read in a
// keyring.Cache. Writers (under keysMu) load a fresh copy from storage,
// change it, store it and publish the new pointer (saveKey).

// cachedKey returns the key from the cache or storage; nil when none.
func (b *backend) cachedKey(ctx context.Context, s logical.Storage, name string) (*keyEntry, error) {
	return b.keys.Load(name, func() (*keyEntry, error) { return loadKey(ctx, s, name) })
}

// saveKey stores the key and publishes it to readers.
func (b *backend) saveKey(ctx context.Context, s logical.Storage, k *keyEntry) error {
	if err := storeKey(ctx, s, k); err != nil {
		b.keys.Publish(k.Name, nil)
		return err
	}
	if err := indexForRotation(ctx, s, k); err != nil {
		b.keys.Publish(k.Name, nil)
		return err
	}
	b.keys.Publish(k.Name, k)
	return nil
}

// deleteKey removes the key's storage entry and forgets it.
func (b *backend) deleteKey(ctx context.Context, s logical.Storage, name string) error {
	defer b.keys.Publish(name, nil)
	if err := s.Delete(ctx, keyStoragePrefix+name); err != nil {
		return fmt.Errorf("deleting key %q: %w", name, err)
	}
	if err := s.Delete(ctx, rotationIndexPrefix+name); err != nil {
		return fmt.Errorf("deleting key %q from the rotation index: %w", name, err)
	}
	return nil
}

// invalidateKey drops a key that another node changed (performance
// standbys and replication call Invalidate with the storage path).
func (b *backend) invalidateKey(storagePath string) bool {
	name, ok := strings.CutPrefix(storagePath, keyStoragePrefix)
	if ok {
		// The key changed elsewhere (deleted, deactivated, rotated): its
		// unwrapped copies here go too, and come back from storage when
		// used.
		if k, cached := b.keys.Get(name); cached {
			b.clientMu.RLock()
			client := b.client
			b.clientMu.RUnlock()
			if client != nil {
				for _, kv := range k.Versions {
					if kv.wrapped() {
						client.ForgetUnwrapped(kv.ObjectID)
					}
				}
			}
		}
		b.keys.Publish(name, nil)
	}
	return ok
}
