package loadbench

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// RunCount calls op exactly once per index, whatever the concurrency, and
// counts a failed call as an error, not an op.
func TestRunCount(t *testing.T) {
	var mu sync.Mutex
	seen := map[int]int{}
	r := RunCount(context.Background(), "count", 3, 100, func(_ context.Context, i int) error {
		mu.Lock()
		seen[i]++
		mu.Unlock()
		if i == 7 {
			return errors.New("seven")
		}
		return nil
	})
	if len(seen) != 100 {
		t.Fatalf("%d distinct indices, want 100", len(seen))
	}
	for i, n := range seen {
		if i < 0 || i >= 100 || n != 1 {
			t.Fatalf("index %d called %d times", i, n)
		}
	}
	if r.Ops != 99 || r.Items != 99 || r.Errors != 1 || r.FirstError != "seven" || r.Concurrency != 3 {
		t.Fatalf("%+v", r)
	}
}

// Each contender runs alone in its slices, and its rate is over its own
// slices' time. The slices, and the sleeps standing for the contenders'
// work, run on the clock of a testing/synctest bubble.
func TestRunAlternating(t *testing.T) {
	synctest.Test(t, testRunAlternating)
}

func testRunAlternating(t *testing.T) {
	var mu sync.Mutex
	running := map[string]int{}
	overlap := false
	op := func(name string, d time.Duration, fail bool) Worker {
		return func(ctx context.Context, _ int) error {
			mu.Lock()
			running[name]++
			for other, n := range running {
				if other != name && n > 0 {
					overlap = true
				}
			}
			mu.Unlock()
			time.Sleep(d)
			mu.Lock()
			running[name]--
			mu.Unlock()
			if fail {
				return errors.New(name)
			}
			return nil
		}
	}
	res := RunAlternating(context.Background(), 2, 100*time.Millisecond, 3, []Contender{
		{Name: "fast", Op: op("fast", time.Millisecond, false)},
		{Name: "slow", Op: op("slow", 10*time.Millisecond, false)},
		{Name: "bad", Op: op("bad", time.Millisecond, true)},
	})
	if overlap {
		t.Fatal("contenders ran at the same time")
	}
	if len(res) != 3 || res[0].Name != "fast" || res[1].Name != "slow" || res[2].Name != "bad" {
		t.Fatalf("%+v", res)
	}
	for _, r := range res[:2] {
		// Three slices of at least 100ms each, whatever the machine.
		if r.Ops == 0 || r.Errors != 0 || r.Elapsed < 300*time.Millisecond {
			t.Errorf("%s: %+v", r.Name, r)
		}
	}
	if res[1].P50 < 10*time.Millisecond { // a sleep lasts at least its time
		t.Errorf("slow: p50 %s, its own calls' time not measured", res[1].P50)
	}
	if res[2].Ops != 0 || res[2].Errors == 0 || res[2].FirstError != "bad" {
		t.Errorf("bad: %+v", res[2])
	}
}

// A deadline stops RunCount early; the calls it cut short are neither ops
// nor errors. On a synctest bubble's clock: the deadline takes no real time.
func TestRunCountDeadline(t *testing.T) {
	synctest.Test(t, testRunCountDeadline)
}

func testRunCountDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r := RunCount(ctx, "bounded", 4, 1000, func(ctx context.Context, i int) error {
		if i < 5 {
			return nil
		}
		<-ctx.Done()
		return ctx.Err()
	})
	if r.Ops != 5 || r.Errors != 0 || r.FirstError != "" {
		t.Fatalf("%+v", r)
	}
}
