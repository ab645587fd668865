package keyring

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/logical"
)

// KeyStoragePrefix is where key entries are stored, one per name.
const KeyStoragePrefix = "keys/"

// The rotation index names the keys with an auto_rotate_period, so that
// the periodic check reads those keys and not every key of a mount that
// may hold 100,000. An entry is written when such a key is stored and
// removed when the key is deleted, or lazily by the check when the key no
// longer rotates.
const (
	RotationIndexPrefix = "rotation/"
	// rotationIndexBuilt marks that the index covers keys stored before it
	// existed.
	rotationIndexBuilt = "rotation_index_built"
)

// Load reads a key entry from storage; nil when there is none.
func Load(ctx context.Context, s logical.Storage, name string) (*Entry, error) {
	entry, err := s.Get(ctx, KeyStoragePrefix+name)
	if err != nil {
		return nil, fmt.Errorf("reading key %q: %w", name, err)
	}
	if entry == nil {
		return nil, nil
	}
	var k Entry
	if err := entry.DecodeJSON(&k); err != nil {
		return nil, fmt.Errorf("decoding key %q: %w", name, err)
	}
	return &k, nil
}

// store writes a key entry and, for a key that rotates, its index entry.
func store(ctx context.Context, s logical.Storage, k *Entry) error {
	entry, err := logical.StorageEntryJSON(KeyStoragePrefix+k.Name, k)
	if err != nil {
		return fmt.Errorf("encoding key %q: %w", k.Name, err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing key %q: %w", k.Name, err)
	}
	if k.Rotates() {
		if err := s.Put(ctx, &logical.StorageEntry{Key: RotationIndexPrefix + k.Name}); err != nil {
			return fmt.Errorf("indexing key %q for rotation: %w", k.Name, err)
		}
	}
	return nil
}

// Names lists the names of the stored keys.
func Names(ctx context.Context, s logical.Storage) ([]string, error) {
	names, err := s.List(ctx, KeyStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	return names, nil
}

// KeysToCheckForRotation lists the keys the periodic check looks at,
// building the index from every key once.
func KeysToCheckForRotation(ctx context.Context, s logical.Storage) ([]string, error) {
	built, err := s.Get(ctx, rotationIndexBuilt)
	if err != nil {
		return nil, fmt.Errorf("reading the rotation index: %w", err)
	}
	if built == nil {
		names, err := Names(ctx, s)
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			k, err := Load(ctx, s, name)
			if err != nil {
				return nil, err
			}
			if k != nil && k.Rotates() {
				if err := s.Put(ctx, &logical.StorageEntry{Key: RotationIndexPrefix + k.Name}); err != nil {
					return nil, fmt.Errorf("indexing key %q for rotation: %w", k.Name, err)
				}
			}
		}
		if err := s.Put(ctx, &logical.StorageEntry{Key: rotationIndexBuilt, Value: []byte("1")}); err != nil {
			return nil, fmt.Errorf("marking the rotation index built: %w", err)
		}
	}
	names, err := s.List(ctx, RotationIndexPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing the rotation index: %w", err)
	}
	return names, nil
}

// DropFromRotationIndex removes a key that no longer rotates.
func DropFromRotationIndex(ctx context.Context, s logical.Storage, name string) error {
	if err := s.Delete(ctx, RotationIndexPrefix+name); err != nil {
		return fmt.Errorf("deleting key %q from the rotation index: %w", name, err)
	}
	return nil
}
