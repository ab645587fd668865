package loadbench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/netsim"
)

// ParseRTTs reads a list of simulated round trips (Go durations, 0 or
// more, separated by spaces or commas), e.g. "0 2ms" or "0,500us,2ms".
func ParseRTTs(s string) ([]time.Duration, error) {
	var rtts []time.Duration
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' }) {
		d, err := time.ParseDuration(f)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("round trip %q: want a Go duration of 0 or more, e.g. 0, 500us, 2ms", f)
		}
		if slices.Contains(rtts, d) {
			return nil, fmt.Errorf("round trip %v is in the list twice", d)
		}
		rtts = append(rtts, d)
	}
	if len(rtts) == 0 {
		return nil, fmt.Errorf("no round trip in %q", s)
	}
	return rtts, nil
}

// quietFor is how long a network must make no call to count as quiet, and
// quietMax how long WaitQuiet waits for that at most.
const (
	quietFor = 100 * time.Millisecond
	quietMax = 30 * time.Second
)

// WaitQuiet returns once src has seen no call for quietFor (or after
// quietMax): Vault goes on serving the requests a timed run left in flight
// when it ended, and their calls must not be counted against the next
// scenario, nor their load weigh on it.
func WaitQuiet(ctx context.Context, src netsim.Source) error {
	last, err := src.Snapshot(ctx)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(quietMax)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(quietFor):
		}
		s, err := src.Snapshot(ctx)
		if err != nil {
			return err
		}
		if s.Total() == last.Total() && s.MaxInFlight == 0 {
			return nil
		}
		last = s
	}
	return fmt.Errorf("the simulated network was still busy after %v", quietMax)
}

// CountCalls waits for src to be quiet, makes op once (a warm-up, not
// counted: keys and handles cached), then n times one after another, and
// sets r's calls (and, if src counts them, storage operations) per
// operation from what src saw. Nothing else may use
// src's token meanwhile.
func CountCalls(ctx context.Context, src netsim.Source, n int, op Worker, r *Result) error {
	if err := WaitQuiet(ctx, src); err != nil {
		return err
	}
	if err := op(ctx, 0); err != nil {
		return fmt.Errorf("counting calls of %s: %w", r.Name, err)
	}
	before, err := src.Snapshot(ctx)
	if err != nil {
		return err
	}
	for range n {
		if err := op(ctx, 0); err != nil {
			return fmt.Errorf("counting calls of %s: %w", r.Name, err)
		}
	}
	after, err := src.Snapshot(ctx)
	if err != nil {
		return err
	}
	d := after.Sub(before)
	r.CallsCounted = true
	r.CallsPerOp = float64(d.Total()) / float64(n)
	r.Calls = perOp(d.Calls, n)
	if d.StorageCounted {
		r.StorageCounted = true
		r.StoragePerOp = float64(d.StorageTotal()) / float64(n)
		r.Storage = perOp(d.Storage, n)
	}
	return nil
}

func perOp(counts map[string]int64, n int) map[string]float64 {
	out := map[string]float64{}
	for name, c := range counts {
		out[name] = float64(c) / float64(n)
	}
	return out
}

// RunObserved is Run with src's counters read before and after: the most
// calls in flight at once, the mean, and the delay a call paid.
func RunObserved(ctx context.Context, src netsim.Source, name string, concurrency int, duration time.Duration, itemsPerOp int, op Worker) (Result, error) {
	before, err := src.Snapshot(ctx)
	if err != nil {
		return Result{}, err
	}
	r := Run(ctx, name, concurrency, duration, itemsPerOp, op)
	after, err := src.Snapshot(ctx)
	if err != nil {
		return Result{}, err
	}
	observe(&r, after.Sub(before))
	return r, nil
}

// observe sets r's figures from what the network saw during its run.
func observe(r *Result, d netsim.Snapshot) {
	r.RTT = d.RTT
	r.MaxInFlight = d.MaxInFlight
	if secs := r.Elapsed.Seconds(); secs > 0 {
		r.MeanInFlight = d.Busy.Seconds() / secs
	}
	if calls := d.Total(); calls > 0 {
		r.MeanDelay = d.Delayed / time.Duration(calls)
	}
	if r.Ops > 0 {
		r.CallTimePerOp = d.Busy / time.Duration(r.Ops)
	}
}
