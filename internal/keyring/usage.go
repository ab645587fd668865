package keyring

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

const usageStoragePrefix = "usage/"

// UsageFlushInterval is the least time between two writes of one key's
// usage: on Raft a write costs about 200 reads, so a request never writes.
const UsageFlushInterval = time.Minute

// Usage is what a key served: counts per operation and its last use, in
// all and per version. Its JSON is stored in usage/<name>.
type Usage struct {
	LastUsed time.Time             `json:"last_used,omitempty"`
	Ops      map[string]uint64     `json:"operations,omitempty"`
	Versions map[int]*VersionUsage `json:"versions,omitempty"`
}

// VersionUsage is one version's part of a key's usage.
type VersionUsage struct {
	LastUsed time.Time         `json:"last_used,omitempty"`
	Ops      map[string]uint64 `json:"operations,omitempty"`
}

func (u *Usage) add(v int, op string, n uint64, at time.Time) {
	if u.Ops == nil {
		u.Ops = map[string]uint64{}
	}
	u.Ops[op] += n
	if at.After(u.LastUsed) {
		u.LastUsed = at
	}
	if v <= 0 {
		return
	}
	if u.Versions == nil {
		u.Versions = map[int]*VersionUsage{}
	}
	vu := u.Versions[v]
	if vu == nil {
		vu = &VersionUsage{Ops: map[string]uint64{}}
		u.Versions[v] = vu
	}
	vu.Ops[op] += n
	if at.After(vu.LastUsed) {
		vu.LastUsed = at
	}
}

// merge adds other's counts into u.
func (u *Usage) merge(other *Usage) {
	for op, n := range other.Ops {
		u.add(0, op, n, other.LastUsed)
	}
	for v, vu := range other.Versions {
		for op, n := range vu.Ops {
			if u.Versions == nil {
				u.Versions = map[int]*VersionUsage{}
			}
			if u.Versions[v] == nil {
				u.Versions[v] = &VersionUsage{Ops: map[string]uint64{}}
			}
			u.Versions[v].Ops[op] += n
		}
		if u.Versions[v] != nil && vu.LastUsed.After(u.Versions[v].LastUsed) {
			u.Versions[v].LastUsed = vu.LastUsed
		}
	}
	if other.LastUsed.After(u.LastUsed) {
		u.LastUsed = other.LastUsed
	}
}

func (u *Usage) clone() *Usage {
	out := &Usage{LastUsed: u.LastUsed, Ops: maps.Clone(u.Ops)}
	for v, vu := range u.Versions {
		if out.Versions == nil {
			out.Versions = map[int]*VersionUsage{}
		}
		out.Versions[v] = &VersionUsage{LastUsed: vu.LastUsed, Ops: maps.Clone(vu.Ops)}
	}
	return out
}

// usageTracker holds the counts since each key's last flush, and what
// storage held at the last read or flush (LIST with key_info reads every
// key's usage).
type usageTracker struct {
	mu      sync.Mutex
	pending map[string]*Usage
	flushed map[string]time.Time
	stored  map[string]*Usage
}

// RecordUse counts n uses of version of key name by op, in memory.
func (r *Keyring) RecordUse(name string, version int, op string, n int) {
	if n <= 0 {
		return
	}
	now := r.Now().UTC()
	r.usage.mu.Lock()
	defer r.usage.mu.Unlock()
	if r.usage.pending == nil {
		r.usage.pending = map[string]*Usage{}
	}
	u := r.usage.pending[name]
	if u == nil {
		u = &Usage{}
		r.usage.pending[name] = u
	}
	u.add(version, op, uint64(n), now)
}

// Usage is a key's usage: what storage holds plus what this node counted
// since its last flush.
func (r *Keyring) Usage(ctx context.Context, s logical.Storage, name string) (*Usage, error) {
	r.usage.mu.Lock()
	stored, cached := r.usage.stored[name]
	r.usage.mu.Unlock()
	if !cached {
		var err error
		if stored, err = loadUsage(ctx, s, name); err != nil {
			return nil, err
		}
		r.setStoredUsage(name, stored)
	}
	u := stored.clone()
	r.usage.mu.Lock()
	if p := r.usage.pending[name]; p != nil {
		u.merge(p)
	}
	r.usage.mu.Unlock()
	return u, nil
}

func (r *Keyring) setStoredUsage(name string, u *Usage) {
	r.usage.mu.Lock()
	defer r.usage.mu.Unlock()
	if r.usage.stored == nil {
		r.usage.stored = map[string]*Usage{}
	}
	r.usage.stored[name] = u
}

// forgetStoredUsage drops what this node read of a key's usage, which
// another node wrote.
func (r *Keyring) forgetStoredUsage(name string) {
	r.usage.mu.Lock()
	defer r.usage.mu.Unlock()
	delete(r.usage.stored, name)
}

// SetUsage stores a key's usage as given (a restore carries it).
func (r *Keyring) SetUsage(ctx context.Context, s logical.Storage, name string, u *Usage) error {
	r.forgetUsage(name)
	if err := storeUsage(ctx, s, name, u); err != nil {
		return err
	}
	r.setStoredUsage(name, u.clone())
	return nil
}

func loadUsage(ctx context.Context, s logical.Storage, name string) (*Usage, error) {
	entry, err := s.Get(ctx, usageStoragePrefix+name)
	if err != nil {
		return nil, fmt.Errorf("reading the usage of key %q: %w", name, err)
	}
	u := &Usage{}
	if entry != nil {
		if err := entry.DecodeJSON(u); err != nil {
			return nil, fmt.Errorf("decoding the usage of key %q: %w", name, err)
		}
	}
	return u, nil
}

func storeUsage(ctx context.Context, s logical.Storage, name string, u *Usage) error {
	entry, err := logical.StorageEntryJSON(usageStoragePrefix+name, u)
	if err != nil {
		return err
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing the usage of key %q: %w", name, err)
	}
	return nil
}

// FlushUsage writes the counts of every key not flushed for
// UsageFlushInterval (all of them when force: a clean shutdown) and
// returns how many keys it wrote. Only the active node flushes.
func (r *Keyring) FlushUsage(ctx context.Context, s logical.Storage, force bool) (int, error) {
	now := r.Now()
	r.usage.mu.Lock()
	due := map[string]*Usage{}
	for name, u := range r.usage.pending {
		if force || now.Sub(r.usage.flushed[name]) >= UsageFlushInterval {
			due[name] = u
			delete(r.usage.pending, name)
		}
	}
	r.usage.mu.Unlock()
	written := 0
	var firstErr error
	for name, counted := range due {
		err := r.flushOne(ctx, s, name, counted)
		r.usage.mu.Lock()
		if err != nil {
			// Nothing is lost: the counts go back for the next flush.
			if p := r.usage.pending[name]; p != nil {
				counted.merge(p)
			}
			if r.usage.pending == nil {
				r.usage.pending = map[string]*Usage{}
			}
			r.usage.pending[name] = counted
			if firstErr == nil {
				firstErr = err
			}
		} else {
			if r.usage.flushed == nil {
				r.usage.flushed = map[string]time.Time{}
			}
			r.usage.flushed[name] = now
			written++
		}
		r.usage.mu.Unlock()
	}
	return written, firstErr
}

func (r *Keyring) flushOne(ctx context.Context, s logical.Storage, name string, counted *Usage) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, err := Load(ctx, s, name); err != nil || k == nil {
		return err // a key purged meanwhile keeps no usage
	}
	u, err := loadUsage(ctx, s, name)
	if err != nil {
		return err
	}
	u.merge(counted)
	if err := storeUsage(ctx, s, name, u); err != nil {
		return err
	}
	r.setStoredUsage(name, u)
	return nil
}

func (r *Keyring) forgetUsage(name string) {
	r.usage.mu.Lock()
	defer r.usage.mu.Unlock()
	delete(r.usage.pending, name)
	delete(r.usage.flushed, name)
	delete(r.usage.stored, name)
}
