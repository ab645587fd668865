// Package loadbench measures throughput and latency of a repeated operation
// run by concurrent workers for a fixed time, and reports figures and
// ratios. The raw-HSM and HTTP scenarios of cmd/hsmkms-bench are built on it.
package loadbench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Result is one measured scenario.
type Result struct {
	Name string `json:"name"`
	// Token is the token implementation the scenario ran on (a
	// tokentest.Kind: "softhsm2", "nss"); "" for a scenario without one.
	Token       string        `json:"token,omitempty"`
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

	// RTT is the simulated network HSM's delay on each PKCS#11 call
	// (internal/netsim) in the phase the scenario ran in; a scenario
	// without a token (Transit's) ran at the same time as those.
	RTT time.Duration `json:"hsm_rtt_ns"`
	// CallsCounted: CallsPerOp and Calls were counted through the
	// simulated network, over operations made one after another.
	CallsCounted bool               `json:"pkcs11_calls_counted"`
	CallsPerOp   float64            `json:"pkcs11_calls_per_op,omitempty"`
	Calls        map[string]float64 `json:"pkcs11_calls_per_op_by_name,omitempty"`
	// StorageCounted: the plugin also counted its requests' operations on
	// Vault's storage (each a round trip to Vault), per operation here.
	StorageCounted bool               `json:"storage_counted"`
	StoragePerOp   float64            `json:"storage_ops_per_op,omitempty"`
	Storage        map[string]float64 `json:"storage_ops_per_op_by_name,omitempty"`
	// MaxInFlight and MeanInFlight are the PKCS#11 calls in flight at once
	// during the timed run, at most and on average: the sessions at work.
	MaxInFlight  int     `json:"max_calls_in_flight,omitempty"`
	MeanInFlight float64 `json:"mean_calls_in_flight,omitempty"`
	// MeanDelay is the delay a call actually paid during the timed run.
	MeanDelay time.Duration `json:"mean_delay_per_call_ns,omitempty"`
	// CallTimePerOp is the time an operation's PKCS#11 calls took in all,
	// delay included; MeanLatency less it is the time spent elsewhere
	// (Vault, the plugin, the client).
	CallTimePerOp time.Duration `json:"pkcs11_time_per_op_ns,omitempty"`
	MeanLatency   time.Duration `json:"mean_latency_ns"`
}

// OutsideCalls is the mean time an operation spent outside its PKCS#11
// calls, when they were observed.
func (r Result) OutsideCalls() time.Duration { return r.MeanLatency - r.CallTimePerOp }

// Key names the result uniquely: its name, its token if it has one, and
// the simulated round trip if not 0.
func (r Result) Key() string {
	k := r.Name
	if r.Token != "" {
		k += " [" + r.Token + "]"
	}
	if r.RTT > 0 {
		k += " @" + r.RTT.String()
	}
	return k
}

// observed says whether the result has figures from the simulated network.
func (r Result) observed() bool { return r.CallsCounted || r.MaxInFlight > 0 }

// Worker makes one operation; the index says which worker runs it.
type Worker func(ctx context.Context, worker int) error

// Run runs op from concurrency workers until duration has passed (or ctx
// ends) and measures every call. itemsPerOp scales items per second.
func Run(ctx context.Context, name string, concurrency int, duration time.Duration, itemsPerOp int, op Worker) Result {
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	c := measureWorkers(ctx, concurrency, func(w int) (int, bool) { return w, true }, op)
	return summarise(name, concurrency, itemsPerOp, c.elapsed, c.latencies, c.errs, c.firstErr)
}

// calls are the measured calls of one or more runs.
type calls struct {
	latencies []time.Duration
	errs      int64
	firstErr  error
	elapsed   time.Duration
}

// measureWorkers runs concurrency workers until ctx ends or take says
// there is no more work. take gives each call's argument (the worker's
// index, or the next item), every call is timed, and a call the context
// cut short is not counted.
func measureWorkers(ctx context.Context, concurrency int, take func(worker int) (int, bool), op func(ctx context.Context, arg int) error) calls {
	var (
		mu  sync.Mutex
		all calls
		wg  sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine calls
			for ctx.Err() == nil {
				arg, ok := take(w)
				if !ok {
					break
				}
				t0 := time.Now()
				if err := op(ctx, arg); err != nil {
					if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
						break // the run ended mid-call
					}
					mine.errs++
					if mine.firstErr == nil {
						mine.firstErr = err
					}
					continue
				}
				mine.latencies = append(mine.latencies, time.Since(t0))
			}
			mu.Lock()
			all.latencies = append(all.latencies, mine.latencies...)
			all.errs += mine.errs
			if all.firstErr == nil {
				all.firstErr = mine.firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	all.elapsed = time.Since(start)
	return all
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
	if len(latencies) > 0 {
		var sum time.Duration
		for _, l := range latencies {
			sum += l
		}
		r.MeanLatency = sum / time.Duration(len(latencies))
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
	r := Ratio{Name: name, Numerator: num.Key(), Denominator: den.Key(), Target: target}
	if den.ItemsPerSec > 0 {
		r.Value = num.ItemsPerSec / den.ItemsPerSec
	}
	r.Met = r.Value >= target && num.Errors == 0 && den.Errors == 0
	return r
}

// Row is one scenario's results on every token it ran on, side by side.
type Row struct {
	Scenario    string            `json:"scenario"`
	RTT         time.Duration     `json:"hsm_rtt_ns"`
	Concurrency int               `json:"concurrency"`
	Tokens      map[string]Result `json:"tokens"`
}

// SideBySide groups the results that ran on a token by scenario name and
// simulated round trip, in the order the scenarios first appear, and
// returns the tokens in the same order. Results without a token are left
// out.
func SideBySide(results []Result) (rows []Row, tokens []string) {
	type rowKey struct {
		name string
		rtt  time.Duration
	}
	index := map[rowKey]int{}
	for _, r := range results {
		if r.Token == "" {
			continue
		}
		if !slices.Contains(tokens, r.Token) {
			tokens = append(tokens, r.Token)
		}
		i, ok := index[rowKey{r.Name, r.RTT}]
		if !ok {
			i = len(rows)
			index[rowKey{r.Name, r.RTT}] = i
			rows = append(rows, Row{Scenario: r.Name, RTT: r.RTT, Concurrency: r.Concurrency, Tokens: map[string]Result{}})
		}
		rows[i].Tokens[r.Token] = r
	}
	return rows, tokens
}

// tokenTitles are the column titles of the token kinds.
var tokenTitles = map[string]string{"softhsm2": "SoftHSM2", "nss": "NSS softokn"}

// TokenTitle is how tables name a token kind.
func TokenTitle(token string) string {
	if t, ok := tokenTitles[token]; ok {
		return t
	}
	return token
}

// groupTitle is a token's title centred in dashes over its columns.
func groupTitle(title string, seam bool) string {
	width := len(cellHeader(seam)) - 2
	dashes := max(2, width-len(title)-2)
	return "  " + strings.Repeat("-", dashes/2) + " " + title + " " + strings.Repeat("-", dashes-dashes/2)
}

// cellHeader heads one token's columns; with seam, also the PKCS#11 calls
// and the storage operations per operation, and the most calls in flight
// at once (sessions at work).
func cellHeader(seam bool) string {
	h := fmt.Sprintf(" %11s %9s %9s %6s", "items/s", "p50", "p99", "errors")
	if seam {
		h += fmt.Sprintf(" %6s %5s %5s", "calls", "stor", "sess")
	}
	return h
}

func cell(r Result, ok, seam bool) string {
	if !ok {
		c := fmt.Sprintf(" %11s %9s %9s %6s", "-", "", "", "")
		if seam {
			c += fmt.Sprintf(" %6s %5s %5s", "", "", "")
		}
		return c
	}
	c := fmt.Sprintf(" %11.0f %9s %9s %6d", r.ItemsPerSec, round(r.P50), round(r.P99), r.Errors)
	if seam {
		calls, stor, sess := "-", "-", "-"
		if r.CallsCounted {
			calls = fmt.Sprintf("%.1f", r.CallsPerOp)
		}
		if r.StorageCounted {
			stor = fmt.Sprintf("%.1f", r.StoragePerOp)
		}
		if r.MaxInFlight > 0 {
			sess = fmt.Sprint(r.MaxInFlight)
		}
		c += fmt.Sprintf(" %6s %5s %5s", calls, stor, sess)
	}
	return c
}

// Table renders results and ratios as aligned text, in one section per
// simulated round trip when any is not 0. In each, scenarios that ran on
// tokens come first, one row each with every token's figures side by
// side; then the scenarios without a token; then the targets. items/s is
// operations per second times the items of an operation (a batch's).
// Results with figures from the simulated network add three columns:
// PKCS#11 calls and storage operations per operation (counted) and the
// most calls in flight at once.
func Table(results []Result, ratios []Ratio) string {
	width := len("scenario (no token)")
	var rtts []time.Duration
	seam := false
	for _, r := range results {
		width = max(width, len(r.Name))
		if !slices.Contains(rtts, r.RTT) {
			rtts = append(rtts, r.RTT)
		}
		seam = seam || r.observed()
	}
	sections := len(rtts) > 1 || (len(rtts) == 1 && rtts[0] != 0)
	var out strings.Builder
	for i, rtt := range rtts {
		var in []Result
		for _, r := range results {
			if r.RTT == rtt {
				in = append(in, r)
			}
		}
		if i > 0 {
			out.WriteString("\n")
		}
		if sections {
			fmt.Fprintf(&out, "== simulated network HSM: %v per PKCS#11 call ==\n", rtt)
		}
		writeResults(&out, in, width, seam)
	}
	if len(ratios) > 0 {
		nameWidth := len("target")
		for _, r := range ratios {
			nameWidth = max(nameWidth, len(r.Name))
		}
		fmt.Fprintf(&out, "\n%-*s %7s %9s\n", nameWidth, "target", "value", "bound")
		for _, r := range ratios {
			mark := "met"
			if !r.Met {
				mark = "MISSED"
			}
			bound := fmt.Sprintf(">= %.2f", r.Target)
			if r.AtMost {
				bound = fmt.Sprintf("<= %.2f", r.Target)
			}
			line := fmt.Sprintf("%-*s %7.3f %9s %s %s", nameWidth, r.Name, r.Value, bound, mark, r.Note)
			out.WriteString(strings.TrimRight(line, " ") + "\n")
		}
	}
	return out.String()
}

// writeResults writes one section's results: token rows side by side, then
// the rows without a token.
func writeResults(out *strings.Builder, results []Result, width int, seam bool) {
	rows, tokens := SideBySide(results)
	if len(rows) > 0 {
		fmt.Fprintf(out, "%-*s %5s", width, "", "")
		for _, t := range tokens {
			out.WriteString(groupTitle(TokenTitle(t), seam))
		}
		fmt.Fprintf(out, "\n%-*s %5s", width, "scenario", "conc")
		for range tokens {
			out.WriteString(cellHeader(seam))
		}
		out.WriteString("\n")
		for _, row := range rows {
			fmt.Fprintf(out, "%-*s %5d", width, row.Scenario, row.Concurrency)
			for _, t := range tokens {
				r, ok := row.Tokens[t]
				out.WriteString(cell(r, ok, seam))
			}
			out.WriteString("\n")
		}
	}
	header := false
	for _, r := range results {
		if r.Token != "" {
			continue
		}
		if !header {
			if len(rows) > 0 {
				out.WriteString("\n")
			}
			fmt.Fprintf(out, "%-*s %5s%s\n", width, "scenario (no token)", "conc", cellHeader(seam))
			header = true
		}
		fmt.Fprintf(out, "%-*s %5d%s\n", width, r.Name, r.Concurrency, cell(r, true, seam))
	}
}

func round(d time.Duration) string {
	switch {
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(100 * time.Nanosecond).String()
	}
}
