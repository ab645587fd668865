package keyring

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// DeletionIndexPrefix names the keys pending deletion, so that the purge
// job reads those and not every key.
const DeletionIndexPrefix = "deletion/"

// ScheduleDeletion moves k to pending_deletion until date: it serves
// nothing, its objects stay, and CancelDeletion brings it back until then.
// Callers hold the lock.
func (r *Keyring) ScheduleDeletion(ctx context.Context, s logical.Storage, k *Entry, date time.Time) error {
	k.State, k.DeletionDate = StatePendingDeletion, date.UTC()
	if err := s.Put(ctx, &logical.StorageEntry{Key: DeletionIndexPrefix + k.Name}); err != nil {
		return fmt.Errorf("indexing key %q for deletion: %w", k.Name, err)
	}
	return r.Save(ctx, s, k)
}

// CancelDeletion returns a pending key to deactivated (an operator then
// activates it). Callers hold the lock.
func (r *Keyring) CancelDeletion(ctx context.Context, s logical.Storage, k *Entry) error {
	if k.State != StatePendingDeletion {
		return Userf("key %q is %s, not scheduled for deletion", k.Name, k.State)
	}
	k.State, k.DeletionDate = StateDeactivated, time.Time{}
	if err := r.Save(ctx, s, k); err != nil {
		return err
	}
	if err := s.Delete(ctx, DeletionIndexPrefix+k.Name); err != nil {
		return fmt.Errorf("deleting key %q from the deletion index: %w", k.Name, err)
	}
	return nil
}

// Destroy destroys what k owns on the token (its versions, their HMAC
// companions, cached unwrapped copies), then its metadata and usage. Every
// step can be repeated: a destroy that stopped half-way (an outage, a
// crash) finishes on the next try, and the deletion index keeps the key
// until it did. Callers hold the lock.
func (r *Keyring) Destroy(ctx context.Context, s logical.Storage, client HSM, k *Entry) ([]string, error) {
	var warnings []string
	for _, v := range k.SortedVersions() {
		w, err := DestroyVersion(ctx, client, v, k.Versions[v])
		warnings = append(warnings, w...)
		if err != nil {
			return warnings, err
		}
	}
	if err := r.Delete(ctx, s, k.Name); err != nil {
		return warnings, err
	}
	r.forgetUsage(k.Name)
	if err := s.Delete(ctx, usageStoragePrefix+k.Name); err != nil {
		return warnings, fmt.Errorf("deleting the usage of key %q: %w", k.Name, err)
	}
	if err := s.Delete(ctx, DeletionIndexPrefix+k.Name); err != nil {
		return warnings, fmt.Errorf("deleting key %q from the deletion index: %w", k.Name, err)
	}
	return warnings, nil
}

// PurgeDue destroys every key whose deletion date has passed; the periodic
// function calls it on the active node. It returns the keys it purged.
func (r *Keyring) PurgeDue(ctx context.Context, s logical.Storage, client HSM) ([]string, error) {
	names, err := s.List(ctx, DeletionIndexPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing the deletion index: %w", err)
	}
	var purged []string
	var errs []error
	for _, name := range names {
		done, err := r.purgeIfDue(ctx, s, client, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("purging key %q: %w", name, err))
		}
		if done {
			purged = append(purged, name)
		}
	}
	return purged, errors.Join(errs...)
}

func (r *Keyring) purgeIfDue(ctx context.Context, s logical.Storage, client HSM, name string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, err := Load(ctx, s, name)
	if err != nil {
		return false, err
	}
	if k == nil || k.State != StatePendingDeletion {
		// Cancelled, or purged before its index entry went: nothing due.
		return false, s.Delete(ctx, DeletionIndexPrefix+name)
	}
	if r.Now().Before(k.DeletionDate) {
		return false, nil
	}
	if _, err := r.Destroy(ctx, s, client, k); err != nil {
		return false, err
	}
	return true, nil
}
