package keyring

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
)

// Keyring is one mount's keys: the one place that turns a name into a key,
// changes keys, and keeps the caches that spare a storage round trip per
// request. Readers take no lock; every change is made under Lock.
type Keyring struct {
	owner string // the mount's backend UUID, in every object label
	log   hclog.Logger
	// Now is the clock; tests move it to see rotations happen.
	Now func() time.Time
	// storage is the mount's view, for work outside a request's own (the
	// rewrap job, unwrapping deep in a handler).
	storage logical.Storage
	// open gives the mount's HSM client to background work.
	open func(ctx context.Context, s logical.Storage) (HSM, error)

	mu   sync.Mutex
	keys Cache[Entry]
	keks Cache[KEKState]

	usage usageTracker

	rewrapRunning atomic.Bool
	rewrapDone    atomic.Pointer[chan struct{}]
	stopping      chan struct{}
	stopOnce      sync.Once
}

// New makes the keyring of the mount owner. open gives background work
// the mount's HSM client.
func New(owner string, log hclog.Logger, storage logical.Storage, open func(ctx context.Context, s logical.Storage) (HSM, error)) *Keyring {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Keyring{owner: owner, log: log, Now: time.Now, storage: storage, open: open, stopping: make(chan struct{})}
}

// Owner is the mount's backend UUID.
func (r *Keyring) Owner() string { return r.owner }

// Storage is the mount's storage view.
func (r *Keyring) Storage() logical.Storage { return r.storage }

// Lock serialises changes to keys (create, delete, state, quota,
// rotation) and to the KEK.
func (r *Keyring) Lock()   { r.mu.Lock() }
func (r *Keyring) Unlock() { r.mu.Unlock() }

// Stop ends background work when the mount goes away.
func (r *Keyring) Stop() { r.stopOnce.Do(func() { close(r.stopping) }) }

// Get returns a key from the cache or storage; nil when there is none.
func (r *Keyring) Get(ctx context.Context, s logical.Storage, name string) (*Entry, error) {
	return r.keys.Load(name, func() (*Entry, error) { return Load(ctx, s, name) })
}

// Resolve turns a request's name into its key: the name is checked, and a
// key that does not exist is the caller's error. Every path that names a
// key goes through it (or ForChange).
func (r *Keyring) Resolve(ctx context.Context, s logical.Storage, name string) (*Entry, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	k, err := r.Get(ctx, s, name)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return nil, Userf("no key named %q in this mount", name)
	}
	return k, nil
}

// ForChange is Resolve for a writer: it takes the lock and reads a fresh
// copy from storage for the caller to change and Save. The caller calls
// unlock, which is nil when an error is returned (nothing is locked then).
func (r *Keyring) ForChange(ctx context.Context, s logical.Storage, name string) (k *Entry, unlock func(), err error) {
	if err := CheckName(name); err != nil {
		return nil, nil, err
	}
	r.mu.Lock()
	k, err = Load(ctx, s, name)
	if err == nil && k == nil {
		err = Userf("no key named %q in this mount", name)
	}
	if err != nil {
		r.mu.Unlock()
		return nil, nil, err
	}
	return k, r.mu.Unlock, nil
}

// Exists reports whether a key of that name exists, from the cache when it
// can (encrypt's existence check runs on every request).
func (r *Keyring) Exists(ctx context.Context, s logical.Storage, name string) (bool, error) {
	if CheckName(name) != nil {
		return false, nil
	}
	k, err := r.Get(ctx, s, name)
	return k != nil, err
}

// Save stores the key and publishes it to readers. Callers hold the lock.
func (r *Keyring) Save(ctx context.Context, s logical.Storage, k *Entry) error {
	if err := store(ctx, s, k); err != nil {
		r.keys.Publish(k.Name, nil)
		return err
	}
	r.keys.Publish(k.Name, k)
	return nil
}

// Delete removes the key's storage entries and forgets it. Callers hold
// the lock.
func (r *Keyring) Delete(ctx context.Context, s logical.Storage, name string) error {
	defer r.keys.Publish(name, nil)
	if err := s.Delete(ctx, KeyStoragePrefix+name); err != nil {
		return fmt.Errorf("deleting key %q: %w", name, err)
	}
	return DropFromRotationIndex(ctx, s, name)
}

// Forget drops a key from the cache, so the next read goes to storage.
func (r *Keyring) Forget(name string) { r.keys.Publish(name, nil) }

// ForgetAll drops every cached key and the KEK state, as after a restart.
func (r *Keyring) ForgetAll() {
	r.keys.Forget()
	r.keks.Forget()
}

// Invalidate handles another node's change to storagePath (performance
// standbys and replication call it): the changed key or KEK state is read
// again when next used, and the unwrapped copies of a changed key go
// (forget is given each cached version that was wrapped).
func (r *Keyring) Invalidate(storagePath string, forget func(id []byte)) bool {
	if storagePath == KEKStorageKey {
		r.keks.Publish(KEKStorageKey, nil)
		return true
	}
	if name, ok := strings.CutPrefix(storagePath, usageStoragePrefix); ok {
		r.forgetStoredUsage(name)
		return true
	}
	name, ok := strings.CutPrefix(storagePath, KeyStoragePrefix)
	if !ok {
		return false
	}
	if k, cached := r.keys.Get(name); cached && forget != nil {
		for _, kv := range k.Versions {
			if kv.Wrapped() {
				forget(kv.ObjectID)
			}
		}
	}
	r.keys.Publish(name, nil)
	return true
}

// Counts are the keys of a mount by state and residency.
type Counts struct {
	Total       int
	ByState     map[string]int
	ByResidency map[string]int
}

// Count counts the keys by state and residency, from the cache when it
// can: after the first count every entry is cached.
func (r *Keyring) Count(ctx context.Context, s logical.Storage) (Counts, error) {
	c := Counts{ByState: map[string]int{}, ByResidency: map[string]int{}}
	for _, state := range States {
		c.ByState[state] = 0
	}
	c.ByResidency[ResidencyHSM], c.ByResidency[ResidencyWrapped] = 0, 0
	names, err := Names(ctx, s)
	if err != nil {
		return c, err
	}
	for _, name := range names {
		k, err := r.Get(ctx, s, name)
		if err != nil {
			return c, err
		}
		if k == nil {
			continue
		}
		c.Total++
		c.ByState[k.State]++
		c.ByResidency[k.Residency]++
	}
	return c, nil
}
