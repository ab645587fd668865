package loadbench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	values := make([]time.Duration, 100)
	for i := range values {
		values[i] = time.Duration(i+1) * time.Millisecond
	}
	if got := Percentile(values, 50); got != 50*time.Millisecond {
		t.Fatalf("p50 = %v", got)
	}
	if got := Percentile(values, 99); got != 99*time.Millisecond {
		t.Fatalf("p99 = %v", got)
	}
	if got := Percentile(values[:1], 99); got != time.Millisecond {
		t.Fatalf("one value: %v", got)
	}
	if Percentile(nil, 50) != 0 {
		t.Fatal("empty")
	}
}

// Run against a real HTTP server: counts, items and errors add up.
func TestRunCountsOpsItemsAndErrors(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1)%10 == 0 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Write([]byte(`{"data":{}}`))
	}))
	defer srv.Close()
	client := NewHTTPClient(srv.URL, "token", 4)
	res := Run(context.Background(), "test", 4, 200*time.Millisecond, 100, func(ctx context.Context, _ int) error {
		return client.Post(ctx, "x", []byte(`{}`))
	})
	if res.Ops == 0 || res.Errors == 0 {
		t.Fatalf("ops %d errors %d", res.Ops, res.Errors)
	}
	if res.Items != res.Ops*100 || res.ItemsPerSec <= res.OpsPerSec {
		t.Fatalf("items %d for %d ops", res.Items, res.Ops)
	}
	if total := res.Ops + res.Errors; total > calls.Load() || total < calls.Load()-4 {
		t.Fatalf("ops+errors %d, server saw %d", total, calls.Load())
	}
	if !strings.Contains(res.FirstError, "500") || res.P99 < res.P50 {
		t.Fatalf("result: %+v", res)
	}
}

func TestRatiosAndTable(t *testing.T) {
	fast := Result{Name: "fast", ItemsPerSec: 900}
	slow := Result{Name: "slow", ItemsPerSec: 1000}
	if r := ComputeRatio("fast/slow", fast, slow, 0.85); !r.Met || r.Value != 0.9 {
		t.Fatalf("%+v", r)
	}
	if r := ComputeRatio("fast/slow", fast, slow, 0.95); r.Met {
		t.Fatalf("%+v", r)
	}
	failing := Result{Name: "failing", ItemsPerSec: 5000, Errors: 1}
	if r := ComputeRatio("failing/slow", failing, slow, 1); r.Met {
		t.Fatal("a scenario with errors met its target")
	}
	table := Table([]Result{fast, slow}, []Ratio{ComputeRatio("x", fast, slow, 2)})
	if !strings.Contains(table, "MISSED") || !strings.Contains(table, "fast") {
		t.Fatalf("table:\n%s", table)
	}
}

// Scenarios run on several tokens are one row each, the tokens' figures in
// columns side by side; a scenario missing on a token shows a dash there,
// and scenarios without a token follow on rows of their own.
func TestTableSideBySide(t *testing.T) {
	results := []Result{
		{Name: "raw sign", Token: "softhsm2", Concurrency: 1, ItemsPerSec: 1697},
		{Name: "raw sign, session key", Token: "softhsm2", Concurrency: 1, ItemsPerSec: 2000},
		{Name: "raw sign", Token: "nss", Concurrency: 1, ItemsPerSec: 31, Errors: 2},
		{Name: "Transit sign", Concurrency: 8, ItemsPerSec: 1603},
	}
	rows, tokens := SideBySide(results)
	if len(rows) != 2 || !slices.Equal(tokens, []string{"softhsm2", "nss"}) || len(rows[0].Tokens) != 2 || len(rows[1].Tokens) != 1 {
		t.Fatalf("rows %+v tokens %v", rows, tokens)
	}
	if r := ComputeRatio("nss: x", results[2], results[3], 0.5); r.Numerator != "raw sign [nss]" || r.Denominator != "Transit sign" || r.Met {
		t.Fatalf("%+v", r)
	}
	lines := strings.Split(Table(results, nil), "\n")
	find := func(prefix string) []string {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix+" ") {
				return strings.Fields(strings.TrimPrefix(l, prefix))
			}
		}
		t.Fatalf("no row %q in\n%s", prefix, strings.Join(lines, "\n"))
		return nil
	}
	if !strings.Contains(lines[0], "SoftHSM2") || !strings.Contains(lines[0], "NSS softokn") ||
		strings.Index(lines[0], "SoftHSM2") > strings.Index(lines[0], "NSS") {
		t.Fatalf("header %q", lines[0])
	}
	// conc, then SoftHSM2's items/s p50 p99 errors, then NSS's.
	if got := find("raw sign"); len(got) != 9 || got[1] != "1697" || got[5] != "31" || got[8] != "2" {
		t.Fatalf("raw sign row: %q", got)
	}
	if got := find("raw sign, session key"); len(got) != 6 || got[1] != "2000" || got[5] != "-" {
		t.Fatalf("session key row: %q", got)
	}
	if got := find("Transit sign"); len(got) != 5 || got[1] != "1603" {
		t.Fatalf("Transit row: %q", got)
	}
}

func TestCostRatio(t *testing.T) {
	if r := ComputeCostRatio("seam", "iface", "direct", 1010, 1000, 1.02); !r.Met || !r.AtMost || r.Value != 1.01 {
		t.Fatalf("%+v", r)
	}
	if r := ComputeCostRatio("seam", "iface", "direct", 1030, 1000, 1.02); r.Met {
		t.Fatalf("%+v", r)
	}
	if r := ComputeCostRatio("seam", "iface", "direct", 1000, 0, 1.02); r.Met {
		t.Fatalf("a ratio with nothing measured was met: %+v", r)
	}
	table := Table(nil, []Ratio{ComputeCostRatio("seam", "iface", "direct", 1030, 1000, 1.02)})
	if !strings.Contains(table, "1.030") || !strings.Contains(table, "<= 1.02 MISSED") {
		t.Fatalf("table:\n%s", table)
	}
}

func TestSoakGrowthAndRatios(t *testing.T) {
	at := func(m int, mib int64) SoakSample {
		return SoakSample{At: time.Duration(m) * time.Minute, RSSBytes: mib << 20, OpenSessions: 3}
	}
	samples := []SoakSample{at(0, 50), at(1, 80), at(2, 100), at(3, 102), at(4, 104), at(5, 105)}
	if g := growthOverLast(samples, 3*time.Minute); g < 0.049 || g > 0.051 {
		t.Fatalf("growth %v, want 0.05 (100 -> 105 MiB)", g)
	}
	if g := growthOverLast(samples[:3], 3*time.Minute); g != -1 {
		t.Fatalf("a 2-minute soak gave growth %v", g)
	}
	rep := SoakReport{PoolSize: 4, MaxOpenSessions: 5, RSSGrowthLast3Min: 0.2}
	r := rep.Ratios()
	if r[0].Met || r[1].Met {
		t.Fatalf("20%% growth and 5 of 4 sessions passed: %+v", r)
	}
	rep = SoakReport{PoolSize: 4, MaxOpenSessions: 4, RSSGrowthLast3Min: 0.05}
	if r := rep.Ratios(); !r[0].Met || !r[1].Met {
		t.Fatalf("%+v", r)
	}
	// Memory that shrank meets the target; a soak with nothing to compare
	// does not.
	shrinking := []SoakSample{at(0, 50), at(1, 52), at(4, 51)}
	if g := growthOverLast(shrinking, 3*time.Minute); g >= 0 || g <= growthUnknown {
		t.Fatalf("shrinking RSS: growth %v", g)
	}
	rep = SoakReport{PoolSize: 4, MaxOpenSessions: 4, RSSGrowthLast3Min: growthOverLast(shrinking, 3*time.Minute)}
	if r := rep.Ratios(); !r[0].Met || r[0].Note != "" {
		t.Fatalf("shrinking RSS: %+v", r[0])
	}
	rep.RSSGrowthLast3Min = growthOverLast(shrinking[:2], 3*time.Minute)
	if r := rep.Ratios(); r[0].Met || r[0].Note == "" {
		t.Fatalf("a 1-minute soak: %+v", r[0])
	}
	// The summary shows a sample a minute and the last one.
	var every10s []SoakSample
	for i := 0; i <= 19; i++ {
		every10s = append(every10s, SoakSample{At: time.Duration(i) * 10 * time.Second, RSSBytes: 50 << 20})
	}
	summary := SoakReport{Samples: every10s}.Summary()
	if n := strings.Count(summary, "rss="); n != 5 || !strings.Contains(summary, "t=1m0s") || !strings.Contains(summary, "t=3m10s") {
		t.Fatalf("summary:\n%s", summary)
	}
}
