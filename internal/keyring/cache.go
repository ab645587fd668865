// Package keyring is the plugin's model of a key, under the Vault paths as
// Transit's keysutil is under Transit's: what it stores, how it changes, and
// the caches that spare a storage round trip per request.
package keyring

import (
	"sync"
	"sync/atomic"
)

// Cache holds values read from storage by name, for readers that must not
// pay a storage round trip per request. A cached value is never modified:
// writers store a new value and publish it, so readers that hold the old
// one see a consistent value.
//
// A reader that missed fills the cache after its storage read, which can
// race a writer (or an invalidation from another node) that published a
// newer value meanwhile: the reader's older value must not overwrite it.
// Every publication and removal bumps a generation under fillMu; a reader
// stores what it read only if the generation is the one it saw before
// reading.
type Cache[V any] struct {
	entries sync.Map // string -> *V
	fillMu  sync.Mutex
	gen     atomic.Uint64
}

// Get returns the cached value of name, if any.
func (c *Cache[V]) Get(name string) (*V, bool) {
	v, ok := c.entries.Load(name)
	if !ok {
		return nil, false
	}
	return v.(*V), true
}

// Load returns the cached value of name or, on a miss, what read returns,
// which it caches unless a publication happened while read ran. A nil value
// (nothing stored) is not cached.
func (c *Cache[V]) Load(name string, read func() (*V, error)) (*V, error) {
	if v, ok := c.Get(name); ok {
		return v, nil
	}
	seen := c.gen.Load()
	v, err := read()
	if err != nil || v == nil {
		return v, err
	}
	c.fillMu.Lock()
	defer c.fillMu.Unlock()
	if c.gen.Load() == seen {
		c.entries.Store(name, v)
	}
	return v, nil
}

// Publish makes v the value of name for every later reader; nil forgets it.
// Writers call it with nil before a storage write whose outcome readers
// must not guess, and with the new value once it is stored.
func (c *Cache[V]) Publish(name string, v *V) {
	c.fillMu.Lock()
	defer c.fillMu.Unlock()
	c.gen.Add(1)
	if v == nil {
		c.entries.Delete(name)
		return
	}
	c.entries.Store(name, v)
}

// Forget drops every value, as after a restart.
func (c *Cache[V]) Forget() {
	c.fillMu.Lock()
	defer c.fillMu.Unlock()
	c.gen.Add(1)
	c.entries.Clear()
}
