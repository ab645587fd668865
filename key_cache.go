package hsmkms

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/vault/sdk/logical"
)

// Key entries are read on every request, and a plugin's storage read is a
// round trip to Vault; the backend keeps the entries it has read. A cached
// entry is never modified: writers (under keysMu) load a fresh copy from
// storage, change it, store it and publish the new pointer (saveKey), so
// readers that hold the old one see a consistent key.
//
// A reader that missed fills the cache after its storage read, which can
// race a writer (or Invalidate on a standby) that published a newer entry
// meanwhile: the reader's older value must not overwrite it. Every
// publication and removal bumps a generation under fillMu; a reader stores
// what it read only if the generation is the one it saw before reading.
type keyCache struct {
	entries sync.Map // name -> *keyEntry
	fillMu  sync.Mutex
	gen     atomic.Uint64
}

func (c *keyCache) publish(name string, k *keyEntry) {
	c.fillMu.Lock()
	defer c.fillMu.Unlock()
	c.gen.Add(1)
	if k == nil {
		c.entries.Delete(name)
		return
	}
	c.entries.Store(name, k)
}

// cachedKey returns the key from the cache or storage; nil when none.
func (b *backend) cachedKey(ctx context.Context, s logical.Storage, name string) (*keyEntry, error) {
	if k, ok := b.keys.entries.Load(name); ok {
		return k.(*keyEntry), nil
	}
	seen := b.keys.gen.Load()
	k, err := loadKey(ctx, s, name)
	if err != nil || k == nil {
		return k, err
	}
	b.keys.fillMu.Lock()
	if b.keys.gen.Load() == seen {
		b.keys.entries.Store(name, k)
	}
	b.keys.fillMu.Unlock()
	return k, nil
}

// saveKey stores the key and publishes it to readers.
func (b *backend) saveKey(ctx context.Context, s logical.Storage, k *keyEntry) error {
	if err := storeKey(ctx, s, k); err != nil {
		b.keys.publish(k.Name, nil)
		return err
	}
	if err := indexForRotation(ctx, s, k); err != nil {
		b.keys.publish(k.Name, nil)
		return err
	}
	b.keys.publish(k.Name, k)
	return nil
}

// deleteKey removes the key's storage entry and forgets it.
func (b *backend) deleteKey(ctx context.Context, s logical.Storage, name string) error {
	defer b.keys.publish(name, nil)
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
		if old, cached := b.keys.entries.Load(name); cached && old != nil {
			if k, isKey := old.(*keyEntry); isKey && k != nil {
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
		}
		b.keys.publish(name, nil)
	}
	return ok
}
