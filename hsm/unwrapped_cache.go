package hsm

import (
	"container/list"
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// Limits of the unwrapped-key cache when the caller gives none.
const (
	DefaultUnwrappedTTL  = 15 * time.Minute
	DefaultUnwrappedSize = 1000
)

// WrappedKey is a key kept outside the token, wrapped under a KEK: the
// blob, the KEK's CKA_ID, and the object to unwrap it as (spec.ID is the
// CKA_ID the unwrapped copy carries while it is cached).
type WrappedKey struct {
	KEK  []byte
	Blob []byte
	Spec ImportSpec
}

// CacheStats describe the unwrapped-key cache.
type CacheStats struct {
	Entries   int    `json:"entries"`
	Pinned    int    `json:"pinned"`
	Hits      uint64 `json:"hits"`
	Misses    uint64 `json:"misses"`
	Evictions uint64 `json:"evictions"`
	Unwraps   uint64 `json:"unwraps"`
	TTL       string `json:"ttl"`
	Size      int    `json:"size"`
	// UnwrapsPerSecond is over the last minute.
	UnwrapsPerSecond float64 `json:"unwraps_per_second"`
}

// unwrappedCache keeps unwrapped copies of wrapped keys as session
// objects, never in process memory. The objects live on a session the
// cache owns, not a pooled one: a session object dies with the session
// that made it, and pooled sessions are closed whenever they fail. Other
// sessions find the objects by CKA_ID like token objects. Entries go
// unwrapped_cache_ttl after their last use or, past the size bound, least
// recently used first; an entry in use (pinned) is never evicted, so an
// operation never sees its key vanish.
type unwrappedCache struct {
	c *Client

	mu      sync.Mutex
	session pkcs11.SessionHandle
	gen     uint64 // the module generation the session belongs to; 0: none
	entries map[string]*list.Element
	lru     *list.List // front: most recently used
	ttl     time.Duration
	size    int

	hits, misses, evictions, unwraps atomic.Uint64
	// rateMark and rateUnwraps are where the per-second rate was last
	// measured from; guarded by mu.
	rateMark    time.Time
	rateUnwraps uint64
	rate        float64

	stop chan struct{}
	done chan struct{}
}

type cacheEntry struct {
	id       string // hex CKA_ID
	handle   pkcs11.ObjectHandle
	session  pkcs11.SessionHandle // the cache session it was made on
	lastUse  time.Time
	pins     int
	released bool
}

func newUnwrappedCache(c *Client, ttl time.Duration, size int) *unwrappedCache {
	u := &unwrappedCache{c: c, entries: map[string]*list.Element{}, lru: list.New(), stop: make(chan struct{}), done: make(chan struct{})}
	u.setLimits(ttl, size)
	go u.sweepLoop()
	return u
}

func (u *unwrappedCache) setLimits(ttl time.Duration, size int) {
	if ttl <= 0 {
		ttl = DefaultUnwrappedTTL
	}
	if size <= 0 {
		size = DefaultUnwrappedSize
	}
	u.mu.Lock()
	u.ttl, u.size = ttl, size
	u.mu.Unlock()
}

// SetUnwrappedCacheLimits changes the cache's TTL and size bound.
func (c *Client) SetUnwrappedCacheLimits(ttl time.Duration, size int) { c.cache.setLimits(ttl, size) }

// UnwrappedCacheStats reports the cache.
func (c *Client) UnwrappedCacheStats() CacheStats {
	u := c.cache
	u.mu.Lock()
	defer u.mu.Unlock()
	pinned := 0
	for e := u.lru.Front(); e != nil; e = e.Next() {
		if e.Value.(*cacheEntry).pins > 0 {
			pinned++
		}
	}
	now, unwraps := time.Now(), u.unwraps.Load()
	if elapsed := now.Sub(u.rateMark); u.rateMark.IsZero() || elapsed >= time.Minute {
		if !u.rateMark.IsZero() {
			u.rate = float64(unwraps-u.rateUnwraps) / elapsed.Seconds()
		}
		u.rateMark, u.rateUnwraps = now, unwraps
	} else if elapsed > time.Second {
		u.rate = float64(unwraps-u.rateUnwraps) / elapsed.Seconds()
	}
	return CacheStats{Entries: u.lru.Len(), Pinned: pinned, Hits: u.hits.Load(), Misses: u.misses.Load(),
		Evictions: u.evictions.Load(), Unwraps: unwraps, TTL: u.ttl.String(), Size: u.size, UnwrapsPerSecond: u.rate}
}

// PinWrapped makes sure an unwrapped copy of wk is on the token, as a
// session object with CKA_ID wk.Spec.ID, and keeps it there until release
// is called. The key's operations then use that CKA_ID as with any key.
func (c *Client) PinWrapped(ctx context.Context, wk WrappedKey) (release func(), err error) {
	u := c.cache
	key := hex.EncodeToString(wk.Spec.ID)
	if e := u.pinIfPresent(key); e != nil {
		u.hits.Add(1)
		return func() { u.unpin(e) }, nil
	}
	u.misses.Add(1)
	var entry *cacheEntry
	err = c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		var err error
		entry, err = u.load(p11, sh, key, wk)
		return err
	})
	if err != nil {
		return nil, err
	}
	return func() { u.unpin(entry) }, nil
}

// ForgetUnwrapped destroys the cached copy of the key with CKA_ID id, if
// any: its blob changed or the key is gone.
func (c *Client) ForgetUnwrapped(id []byte) {
	u := c.cache
	u.locked(func() {
		if el, ok := u.entries[hex.EncodeToString(id)]; ok {
			u.evictLocked(el)
		}
	})
}

// Lock order, everywhere: the module's read lock, then u.mu. Objects are
// destroyed with both held, so no re-initialisation runs meanwhile.
func (u *unwrappedCache) locked(f func()) {
	u.c.mod.mu.RLock()
	defer u.c.mod.mu.RUnlock()
	u.mu.Lock()
	defer u.mu.Unlock()
	f()
}

func (u *unwrappedCache) pinIfPresent(key string) (pinned *cacheEntry) {
	u.locked(func() { pinned = u.pinIfPresentLocked(key) })
	return pinned
}

func (u *unwrappedCache) pinIfPresentLocked(key string) *cacheEntry {
	el, ok := u.entries[key]
	if !ok || u.gen != u.c.mod.generation {
		return nil // objects of an earlier generation died with it
	}
	e := el.Value.(*cacheEntry)
	e.pins++
	e.lastUse = time.Now()
	u.lru.MoveToFront(el)
	return e
}

func (u *unwrappedCache) unpin(e *cacheEntry) {
	u.locked(func() {
		e.pins--
		e.lastUse = time.Now()
		if el, ok := u.entries[e.id]; ok && el.Value == e {
			u.lru.MoveToFront(el) // the list stays ordered by last use
		}
		if e.released && e.pins == 0 {
			u.destroyLocked(e)
		}
		u.shrinkLocked()
	})
}

// load unwraps wk on the cache's session; callers run it through do, which
// holds the module's read lock.
func (u *unwrappedCache) load(p11 PKCS11, sh pkcs11.SessionHandle, key string, wk WrappedKey) (*cacheEntry, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.pinIfPresentLocked(key); e != nil { // loaded while this call waited
		return e, nil
	}
	if err := u.ensureSessionLocked(p11); err != nil {
		return nil, err
	}
	kwp, err := u.c.kwpMechanism(p11, sh)
	if err != nil {
		return nil, err
	}
	kek, err := u.c.findObject(p11, sh, wk.KEK, pkcs11.CKO_SECRET_KEY)
	if err != nil {
		return nil, fmt.Errorf("the KEK of a wrapped key: %w", err)
	}
	template, err := sessionTemplate(u.c, wk.Spec)
	if err != nil {
		return nil, err
	}
	h, err := u.c.unwrapObject(p11, u.session, kwp, kek, wk.Blob, template)
	if err != nil {
		if classify(err) == classSession {
			u.resetLocked()
		}
		return nil, err
	}
	u.unwraps.Add(1)
	// The handle goes straight into the lookup cache: a search would
	// scan every object on the token, cached copies included (SoftHSM),
	// which makes each miss slower as the cache grows.
	class := uint(pkcs11.CKO_SECRET_KEY)
	if wk.Spec.Kind == ImportRSA || wk.Spec.Kind == ImportEC {
		class = pkcs11.CKO_PRIVATE_KEY
	}
	u.c.token.cacheHandle(fmt.Sprintf("%d/%s", class, key), cachedHandle{h, u.c.mod.generation})
	e := &cacheEntry{id: key, handle: h, session: u.session, lastUse: time.Now(), pins: 1}
	u.entries[key] = u.lru.PushFront(e)
	u.shrinkLocked()
	return e, nil
}

// ensureSessionLocked opens the cache's session for the module's current
// generation; objects of an earlier one died with it.
func (u *unwrappedCache) ensureSessionLocked(p11 PKCS11) error {
	gen := u.c.mod.generation
	if u.gen == gen && u.session != 0 {
		return nil
	}
	u.resetLocked()
	sh, err := p11.OpenSession(u.c.token.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return call("C_OpenSession (unwrapped-key cache)", err)
	}
	u.session, u.gen = sh, gen
	return nil
}

// resetLocked forgets every entry: their objects died with the session.
func (u *unwrappedCache) resetLocked() {
	for key := range u.entries {
		u.c.token.forgetHandle(key)
	}
	u.entries = map[string]*list.Element{}
	u.lru.Init()
	if u.session != 0 && u.gen == u.c.mod.generation {
		_ = u.c.p11.CloseSession(u.session)
	}
	u.session, u.gen = 0, 0
}

// shrinkLocked evicts expired entries and, past the size bound, the least
// recently used ones that are not in use.
func (u *unwrappedCache) shrinkLocked() {
	now := time.Now()
	// From the least recently used end; the walk stops at the first entry
	// that is neither expired nor beyond the bound, so it costs what it
	// evicts (plus the pinned entries it steps over), not the cache's size.
	for el := u.lru.Back(); el != nil; {
		prev := el.Prev()
		e := el.Value.(*cacheEntry)
		over, expired := u.lru.Len() > u.size, now.Sub(e.lastUse) >= u.ttl
		if !over && !expired {
			if e.pins == 0 {
				break
			}
		} else if e.pins == 0 {
			u.evictLocked(el)
		}
		el = prev
	}
}

func (u *unwrappedCache) evictLocked(el *list.Element) {
	e := el.Value.(*cacheEntry)
	u.lru.Remove(el)
	delete(u.entries, e.id)
	u.evictions.Add(1)
	// The handle must leave the lookup cache before the object goes: the
	// token may give its number to another object.
	u.c.token.forgetHandle(e.id)
	e.released = true
	if e.pins == 0 {
		u.destroyLocked(e)
	}
}

// destroyLocked destroys an entry's object on the cache's session.
func (u *unwrappedCache) destroyLocked(e *cacheEntry) {
	if u.session != 0 && e.session == u.session && u.gen == u.c.mod.generation && !u.c.mod.unloaded {
		_ = u.c.p11.DestroyObject(u.session, e.handle)
	}
}

func (u *unwrappedCache) sweepLoop() {
	defer close(u.done)
	for {
		u.mu.Lock()
		interval := u.ttl / 4
		u.mu.Unlock()
		interval = min(max(interval, 200*time.Millisecond), 30*time.Second)
		select {
		case <-u.stop:
			return
		case <-time.After(interval):
		}
		u.locked(u.shrinkLocked)
	}
}

// close destroys every cached object and closes the session; the client
// is closing.
func (u *unwrappedCache) close() {
	close(u.stop)
	<-u.done
	u.locked(func() {
		for el := u.lru.Front(); el != nil; el = el.Next() {
			u.c.token.forgetHandle(el.Value.(*cacheEntry).id)
		}
		if u.session != 0 && u.gen == u.c.mod.generation && !u.c.mod.unloaded {
			_ = u.c.p11.CloseSession(u.session) // destroys its session objects
		}
		u.entries = map[string]*list.Element{}
		u.lru.Init()
		u.session, u.gen = 0, 0
	})
}
