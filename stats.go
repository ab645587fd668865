package hsmkms

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// opStats counts operations since the backend started. Names are fixed
// strings from the handlers; values only grow.
type opStats struct {
	started time.Time
	mu      sync.RWMutex
	counts  map[string]*atomic.Int64
}

func newOpStats() *opStats {
	return &opStats{started: time.Now(), counts: map[string]*atomic.Int64{}}
}

func (s *opStats) add(name string, n int64) {
	s.mu.RLock()
	c, ok := s.counts[name]
	s.mu.RUnlock()
	if !ok {
		s.mu.Lock()
		if c, ok = s.counts[name]; !ok {
			c = new(atomic.Int64)
			s.counts[name] = c
		}
		s.mu.Unlock()
	}
	c.Add(n)
}

func (s *opStats) count(name string) { s.add(name, 1) }

func (s *opStats) snapshot() map[string]int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	names := make([]string, 0, len(s.counts))
	for n := range s.counts {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make(map[string]int64, len(names))
	for _, n := range names {
		out[n] = s.counts[n].Load()
	}
	return out
}
