// Package netsim puts a simulated network between hsm/ and a real PKCS#11
// module, for `make bench`: every call pays a fixed delay before it reaches
// the module, as every call to a network HSM (Luna, CloudHSM, nShield
// Connect: 0.3-3 ms) pays a round trip, and is counted by name, with how
// many calls are in flight at once. The cryptography stays the real
// module's. It also counts, for the plugin, the other round trips a
// request makes: its operations on Vault's storage (CountStorage). Only
// the bench uses it: its raw-token baseline, and the plugin built with the
// hsmkms_benchrtt tag, never a release build.
package netsim

import (
	"maps"
	"sync"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// Network is the delay and the counters shared by every module view it
// wraps. Safe for concurrent use.
type Network struct {
	rtt time.Duration

	mu          sync.Mutex
	calls       map[string]int64
	inFlight    int
	maxInFlight int
	busy        time.Duration
	delayed     time.Duration
	storage     map[string]int64 // nil until TrackStorage
}

// New returns a network whose every call takes rtt longer.
func New(rtt time.Duration) *Network {
	return &Network{rtt: rtt, calls: map[string]int64{}}
}

// RTT is the delay each call pays.
func (n *Network) RTT() time.Duration { return n.rtt }

// Snapshot is a network's counters at one moment, or (Sub) over an interval.
type Snapshot struct {
	RTT   time.Duration    `json:"rtt_ns"`
	Calls map[string]int64 `json:"calls"` // PKCS#11 functions called, by name
	// Busy adds up the time every call spent in flight, delay included:
	// over an interval, divided by its length, it is the mean number of
	// calls (so of sessions) at work at once.
	Busy time.Duration `json:"busy_ns"`
	// Delayed adds up the delay calls actually paid (a sleep is never
	// shorter than asked, and often longer).
	Delayed time.Duration `json:"delayed_ns"`
	// MaxInFlight is the most calls in flight at once since the previous
	// Take.
	MaxInFlight int `json:"max_in_flight"`
	// Storage counts requests' operations on Vault's storage, by name
	// (Get, Put, List, Delete), when StorageCounted.
	StorageCounted bool             `json:"storage_counted"`
	Storage        map[string]int64 `json:"storage,omitempty"`
}

// Total counts every call.
func (s Snapshot) Total() int64 {
	var t int64
	for _, c := range s.Calls {
		t += c
	}
	return t
}

// StorageTotal counts every storage operation.
func (s Snapshot) StorageTotal() int64 {
	var t int64
	for _, c := range s.Storage {
		t += c
	}
	return t
}

// Sub is what happened between before and s (taken after it): the calls,
// busy time, delay and storage operations in between, and s's
// MaxInFlight.
func (s Snapshot) Sub(before Snapshot) Snapshot {
	d := Snapshot{RTT: s.RTT, Calls: sub(s.Calls, before.Calls), Busy: s.Busy - before.Busy, Delayed: s.Delayed - before.Delayed,
		MaxInFlight: s.MaxInFlight, StorageCounted: s.StorageCounted && before.StorageCounted}
	if d.StorageCounted {
		d.Storage = sub(s.Storage, before.Storage)
	}
	return d
}

func sub(after, before map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for name, c := range after {
		if c -= before[name]; c != 0 {
			d[name] = c
		}
	}
	return d
}

// Take returns the counters and starts a new MaxInFlight window.
func (n *Network) Take() Snapshot {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := Snapshot{RTT: n.rtt, Calls: maps.Clone(n.calls), Busy: n.busy, Delayed: n.delayed, MaxInFlight: n.maxInFlight,
		StorageCounted: n.storage != nil, Storage: maps.Clone(n.storage)}
	n.maxInFlight = n.inFlight
	return s
}

// TrackStorage makes snapshots report storage operations, from now on
// counted by CountStorage (zero until then).
func (n *Network) TrackStorage() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.storage == nil {
		n.storage = map[string]int64{}
	}
}

// CountStorage counts one operation of a request on Vault's storage: for
// an external plugin, a round trip to Vault.
func (n *Network) CountStorage(op string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.storage == nil {
		n.storage = map[string]int64{}
	}
	n.storage[op]++
}

// Wrap is an hsm.Config.Intercept (and a wrapper for hsm.OpenBinding's
// binding): inner behind this network.
func (n *Network) Wrap(inner hsm.PKCS11) hsm.PKCS11 {
	return &token{inner: inner, net: n}
}

// enter counts a call of name, puts it in flight and pays its delay.
func (n *Network) enter(name string) time.Time {
	start := time.Now()
	n.mu.Lock()
	n.calls[name]++
	n.inFlight++
	n.maxInFlight = max(n.maxInFlight, n.inFlight)
	n.mu.Unlock()
	n.pay()
	return start
}

// again counts the second call of a binding method that makes two (miekg
// asks for the result's size first) and pays its delay.
func (n *Network) again(name string) {
	n.mu.Lock()
	n.calls[name]++
	n.mu.Unlock()
	n.pay()
}

func (n *Network) pay() {
	if n.rtt <= 0 {
		return
	}
	t0 := time.Now()
	time.Sleep(n.rtt)
	slept := time.Since(t0)
	n.mu.Lock()
	n.delayed += slept
	n.mu.Unlock()
}

// leave takes a call out of flight.
func (n *Network) leave(start time.Time) {
	d := time.Since(start)
	n.mu.Lock()
	n.inFlight--
	n.busy += d
	n.mu.Unlock()
}
