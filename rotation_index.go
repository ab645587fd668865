package hsmkms

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/logical"
)

// The rotation index names the keys with an auto_rotate_period, so that
// the periodic check reads those keys and not every key of a mount that
// may hold 100,000. An entry is written when such a key is stored and
// removed when the key is deleted, or lazily by the check when the key no
// longer rotates.
const (
	rotationIndexPrefix = "rotation/"
	// rotationIndexBuilt marks that the index covers keys stored before it
	// existed.
	rotationIndexBuilt = "rotation_index_built"
)

func rotates(k *keyEntry) bool {
	return k.AutoRotatePeriod > 0 && (!k.Imported || k.AllowRotation)
}

func indexForRotation(ctx context.Context, s logical.Storage, k *keyEntry) error {
	if !rotates(k) {
		return nil
	}
	if err := s.Put(ctx, &logical.StorageEntry{Key: rotationIndexPrefix + k.Name}); err != nil {
		return fmt.Errorf("indexing key %q for rotation: %w", k.Name, err)
	}
	return nil
}

// keysToCheckForRotation lists the keys the periodic check looks at,
// building the index from every key once.
func (b *backend) keysToCheckForRotation(ctx context.Context, s logical.Storage) ([]string, error) {
	built, err := s.Get(ctx, rotationIndexBuilt)
	if err != nil {
		return nil, fmt.Errorf("reading the rotation index: %w", err)
	}
	if built == nil {
		names, err := s.List(ctx, keyStoragePrefix)
		if err != nil {
			return nil, fmt.Errorf("listing keys: %w", err)
		}
		for _, name := range names {
			k, err := loadKey(ctx, s, name)
			if err != nil {
				return nil, err
			}
			if k != nil {
				if err := indexForRotation(ctx, s, k); err != nil {
					return nil, err
				}
			}
		}
		if err := s.Put(ctx, &logical.StorageEntry{Key: rotationIndexBuilt, Value: []byte("1")}); err != nil {
			return nil, fmt.Errorf("marking the rotation index built: %w", err)
		}
	}
	names, err := s.List(ctx, rotationIndexPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing the rotation index: %w", err)
	}
	return names, nil
}
