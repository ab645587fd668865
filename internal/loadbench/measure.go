// Package loadbench measures throughput and latency of a repeated operation
// run by concurrent workers for a fixed time, and reports figures and
// ratios. The raw-HSM and HTTP scenarios of cmd/hsmkms-bench are built on it.
package loadbench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Result is one measured scenario.
type Result struct {
	Name        string        `json:"name"`
	Concurrency int           `json:"concurrency"`
	Ops         int64         `json:"ops"`
	Items       int64         `json:"items"` // ops times items per op (batches)
	Errors      int64         `json:"errors"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	OpsPerSec   float64       `json:"ops_per_sec"`
	ItemsPerSec float64       `json:"items_per_sec"`
	P50         time.Duration `json:"p50_ns"`
	P99         time.Duration `json:"p99_ns"`
	FirstError  string        `json:"first_error,omitempty"`
}

// Worker makes one operation; the index says which worker runs it.
type Worker func(ctx context.Context, worker int) error

// Run runs op from concurrency workers until duration has passed (or ctx
// ends) and measures every call. itemsPerOp scales items per second.
func Run(ctx context.Context, name string, concurrency int, duration time.Duration, itemsPerOp int, op Worker) Result {
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	var (
		mu        sync.Mutex
		latencies []time.Duration
		errs      int64
		firstErr  error
		wg        sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			var localErrs int64
			var localFirst error
			for ctx.Err() == nil {
				t0 := time.Now()
				err := op(ctx, w)
				if err != nil {
					if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
						break // the run ended mid-call
					}
					localErrs++
					if localFirst == nil {
						localFirst = err
					}
					continue
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, local...)
			errs += localErrs
			if firstErr == nil {
				firstErr = localFirst
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	return summarise(name, concurrency, itemsPerOp, elapsed, latencies, errs, firstErr)
}

func summarise(name string, concurrency, itemsPerOp int, elapsed time.Duration, latencies []time.Duration, errs int64, firstErr error) Result {
	slices.Sort(latencies)
	r := Result{
		Name:        name,
		Concurrency: concurrency,
		Ops:         int64(len(latencies)),
		Items:       int64(len(latencies)) * int64(itemsPerOp),
		Errors:      errs,
		Elapsed:     elapsed,
		P50:         Percentile(latencies, 50),
		P99:         Percentile(latencies, 99),
	}
	if secs := elapsed.Seconds(); secs > 0 {
		r.OpsPerSec = float64(r.Ops) / secs
		r.ItemsPerSec = float64(r.Items) / secs
	}
	if firstErr != nil {
		r.FirstError = firstErr.Error()
	}
	return r
}

// Percentile returns the p-th percentile (nearest rank) of sorted values.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

// Ratio is a target: numerator's rate over denominator's, against a bound.
type Ratio struct {
	Name        string  `json:"name"`
	Numerator   string  `json:"numerator"`
	Denominator string  `json:"denominator"`
	Value       float64 `json:"value"`
	Target      float64 `json:"target"`
	AtMost      bool    `json:"at_most"` // the value must stay at or under Target, not reach it
	Met         bool    `json:"met"`
	Note        string  `json:"note,omitempty"`
}

// ComputeCostRatio compares two costs (time per op): the value must stay at
// or under bound.
func ComputeCostRatio(name, num, den string, numCost, denCost, bound float64) Ratio {
	r := Ratio{Name: name, Numerator: num, Denominator: den, Target: bound, AtMost: true}
	if denCost > 0 {
		r.Value = numCost / denCost
	}
	r.Met = denCost > 0 && r.Value <= bound
	return r
}

// ComputeRatio compares two results' items per second.
func ComputeRatio(name string, num, den Result, target float64) Ratio {
	r := Ratio{Name: name, Numerator: num.Name, Denominator: den.Name, Target: target}
	if den.ItemsPerSec > 0 {
		r.Value = num.ItemsPerSec / den.ItemsPerSec
	}
	r.Met = r.Value >= target && num.Errors == 0 && den.Errors == 0
	return r
}

// Table renders results and ratios as aligned text.
func Table(results []Result, ratios []Ratio) string {
	out := fmt.Sprintf("%-58s %5s %10s %12s %10s %10s %7s\n", "scenario", "conc", "ops/s", "items/s", "p50", "p99", "errors")
	for _, r := range results {
		out += fmt.Sprintf("%-58s %5d %10.0f %12.0f %10s %10s %7d\n", r.Name, r.Concurrency, r.OpsPerSec, r.ItemsPerSec,
			round(r.P50), round(r.P99), r.Errors)
	}
	if len(ratios) > 0 {
		out += fmt.Sprintf("\n%-62s %7s %9s %s\n", "target", "value", "bound", "")
		for _, r := range ratios {
			mark := "met"
			if !r.Met {
				mark = "MISSED"
			}
			bound := fmt.Sprintf(">= %.2f", r.Target)
			if r.AtMost {
				bound = fmt.Sprintf("<= %.2f", r.Target)
			}
			out += fmt.Sprintf("%-62s %7.2f %9s %s %s\n", r.Name, r.Value, bound, mark, r.Note)
		}
	}
	return out
}

func round(d time.Duration) string {
	switch {
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(100 * time.Nanosecond).String()
	}
}
