package loadbench

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/netsim"
)

// RunCount runs op once for every index in [0, count) from concurrency
// workers, and measures every call: a fixed amount of work (creating N
// keys, touching every key once) rather than a fixed time. A deadline on
// ctx stops it early; the call it cut short is not counted.
func RunCount(ctx context.Context, name string, concurrency, count int, op func(ctx context.Context, i int) error) Result {
	var next atomic.Int64
	take := func(int) (int, bool) {
		i := int(next.Add(1) - 1)
		return i, i < count
	}
	c := measureWorkers(ctx, concurrency, take, op)
	return summarise(name, concurrency, 1, c.elapsed, c.latencies, c.errs, c.firstErr)
}

// Contender is one side of an alternating comparison.
type Contender struct {
	Name string
	Op   Worker
	// Items is the items of one operation (a batch's); 0 means 1.
	Items int
	// Src, if not nil, is the simulated network the contender's calls go
	// through, read around each of its slices (RunObserved's figures).
	Src netsim.Source
}

// RunAlternating gives each contender the whole load (concurrency
// workers) in turn, for slices of length slice, rounds times, and sums
// each one's calls over its slices: both sides see the same drift of a
// shared, noisy machine, and neither's load slows the other's calls, as
// it would if their requests were interleaved. A contender's items/s is
// its calls over the time of its own slices.
func RunAlternating(ctx context.Context, concurrency int, slice time.Duration, rounds int, cs []Contender) []Result {
	accs := make([]calls, len(cs))
	seen := make([]netsim.Snapshot, len(cs)) // what each one's network saw in its slices
	observed := make([]bool, len(cs))
	for i, c := range cs {
		observed[i] = c.Src != nil
		seen[i].Calls = map[string]int64{}
	}
	for round := 0; round < rounds && ctx.Err() == nil; round++ {
		for i, c := range cs {
			var before netsim.Snapshot
			if observed[i] {
				var err error
				if before, err = c.Src.Snapshot(ctx); err != nil {
					observed[i] = false
				}
			}
			s := runSlice(ctx, concurrency, slice, c.Op)
			if observed[i] {
				if after, err := c.Src.Snapshot(ctx); err != nil {
					observed[i] = false
				} else {
					seen[i] = addSnapshots(seen[i], after.Sub(before))
				}
			}
			a := &accs[i]
			a.latencies = append(a.latencies, s.latencies...)
			a.errs += s.errs
			if a.firstErr == nil {
				a.firstErr = s.firstErr
			}
			a.elapsed += s.elapsed
		}
	}
	out := make([]Result, len(cs))
	for i, c := range cs {
		a := accs[i]
		out[i] = summarise(c.Name, concurrency, max(1, c.Items), a.elapsed, a.latencies, a.errs, a.firstErr)
		if observed[i] {
			observe(&out[i], seen[i])
		}
	}
	return out
}

// addSnapshots adds two intervals' figures; MaxInFlight is the larger.
func addSnapshots(a, b netsim.Snapshot) netsim.Snapshot {
	sum := netsim.Snapshot{RTT: b.RTT, Calls: maps.Clone(a.Calls), Busy: a.Busy + b.Busy, Delayed: a.Delayed + b.Delayed, MaxInFlight: max(a.MaxInFlight, b.MaxInFlight)}
	if sum.Calls == nil {
		sum.Calls = map[string]int64{}
	}
	for name, c := range b.Calls {
		sum.Calls[name] += c
	}
	return sum
}

// runSlice is Run's loop for one slice, keeping the raw latencies.
func runSlice(ctx context.Context, concurrency int, d time.Duration, op Worker) calls {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return measureWorkers(ctx, concurrency, func(w int) (int, bool) { return w, true }, op)
}

// ProcessRSS is the resident set of a process in bytes (VmRSS), 0 when it
// cannot be read.
func ProcessRSS(pid int) int64 { return processRSS(pid) }

// FindProcess returns the pid of the first process whose command line
// contains name, other than this one; 0 when there is none.
func FindProcess(name string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := os.Getpid()
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		// argv[0] only: a shell or pgrep naming the plugin in its
		// arguments is not the plugin.
		if argv0, _, _ := strings.Cut(string(cmd), "\x00"); strings.Contains(argv0, name) {
			return pid
		}
	}
	return 0
}

// CacheStatus is a mount's unwrapped-key cache as GET status shows it.
type CacheStatus struct {
	Entries   int     `json:"entries"`
	Pinned    int     `json:"pinned"`
	Hits      uint64  `json:"hits"`
	Misses    uint64  `json:"misses"`
	HitRate   float64 `json:"hit_rate"`
	Evictions uint64  `json:"evictions"`
	Unwraps   uint64  `json:"unwraps"`
	Size      int     `json:"size"`
	TTL       string  `json:"ttl"`
}

// UnwrappedCache reads GET mount/status's unwrapped_cache.
func (c *HTTPClient) UnwrappedCache(ctx context.Context, mount string) (CacheStatus, error) {
	body, err := c.getJSON(ctx, mount+"/status")
	if err != nil {
		return CacheStatus{}, err
	}
	var st struct {
		Data struct {
			Cache *CacheStatus `json:"unwrapped_cache"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return CacheStatus{}, fmt.Errorf("%s/status: %w", mount, err)
	}
	if st.Data.Cache == nil {
		return CacheStatus{}, fmt.Errorf("%s/status has no unwrapped_cache: %.300s", mount, body)
	}
	return *st.Data.Cache, nil
}

// GetJSON returns the body of a GET, for setup and checks.
func (c *HTTPClient) GetJSON(ctx context.Context, path string) ([]byte, error) {
	return c.getJSON(ctx, path)
}
