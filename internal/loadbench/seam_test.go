package loadbench

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/netsim"
)

func TestParseRTTs(t *testing.T) {
	for in, want := range map[string][]time.Duration{
		"0 2ms":           {0, 2 * time.Millisecond},
		" 0,500us,\t2ms ": {0, 500 * time.Microsecond, 2 * time.Millisecond},
		"1.5ms":           {1500 * time.Microsecond},
	} {
		got, err := ParseRTTs(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseRTTs(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", " , ", "2", "-1ms", "fast", "2ms 2000us"} {
		if got, err := ParseRTTs(in); err == nil {
			t.Errorf("ParseRTTs(%q) = %v, want an error", in, got)
		}
	}
}

// signer is a module that signs in one call and knows nothing else.
type signer struct{ hsm.PKCS11 }

func (signer) SignInit(pkcs11.SessionHandle, []*pkcs11.Mechanism, pkcs11.ObjectHandle) error {
	return nil
}

func (signer) SignOnce(pkcs11.SessionHandle, []byte, int) ([]byte, error) { return []byte("s"), nil }

// Calls per operation are counted over operations made one after another,
// the warm-up left out; a timed run reports the calls in flight and the
// delay paid.
func TestCountCallsAndRunObserved(t *testing.T) {
	const rtt = 200 * time.Microsecond
	net := netsim.New(rtt)
	p := net.Wrap(signer{})
	ops := 0
	op := func(context.Context, int) error {
		ops++
		if err := p.SignInit(1, nil, 1); err != nil {
			return err
		}
		if ops == 1 { // the warm-up finds a key: one more call
			if _, err := p.SignOnce(1, nil, 1); err != nil {
				return err
			}
		}
		_, err := p.SignOnce(1, nil, 1)
		return err
	}
	r := Result{Name: "sign"}
	if err := CountCalls(context.Background(), net, 4, op, &r); err != nil {
		t.Fatal(err)
	}
	if ops != 5 || !r.CallsCounted || r.CallsPerOp != 2 || !maps.Equal(r.Calls, map[string]float64{"C_SignInit": 1, "C_Sign": 1}) || r.StorageCounted {
		t.Fatalf("%d ops, %+v", ops, r)
	}
	// A plugin's network also counts its requests' storage operations.
	net.TrackStorage()
	withStorage := func(ctx context.Context, w int) error {
		net.CountStorage("Get")
		if w%2 == 0 && ops%2 == 0 {
			net.CountStorage("Put")
		}
		return op(ctx, w)
	}
	r = Result{Name: "sign"}
	if err := CountCalls(context.Background(), net, 4, withStorage, &r); err != nil {
		t.Fatal(err)
	}
	if !r.StorageCounted || r.StoragePerOp != 1.5 || !maps.Equal(r.Storage, map[string]float64{"Get": 1, "Put": 0.5}) || r.CallsPerOp != 2 {
		t.Fatalf("with storage: %+v", r)
	}
	res, err := RunObserved(context.Background(), net, "sign", 2, 50*time.Millisecond, 1, func(context.Context, int) error {
		_, err := p.SignOnce(1, nil, 1)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops == 0 || res.RTT != rtt || res.MaxInFlight < 1 || res.MaxInFlight > 2 || res.MeanInFlight <= 0 || res.MeanDelay < rtt ||
		res.CallTimePerOp < rtt || res.MeanLatency < rtt {
		t.Fatalf("%+v", res)
	}
	if !strings.HasSuffix(res.Key(), " @200µs") {
		t.Errorf("key %q", res.Key())
	}
}

func TestLatencyAndIdealRatios(t *testing.T) {
	ms := time.Millisecond
	enc := Result{Name: "encrypt", Token: "softhsm2", RTT: 2 * ms, Ops: 10, P50: 5 * ms}
	transit := Result{Name: "Transit encrypt", RTT: 2 * ms, Ops: 10, P50: 1 * ms}
	r := ComputeLatencyRatio("encrypt", enc, transit, 4*ms, 1.15)
	if !r.Met || !r.AtMost || r.Value != 1 || r.Denominator != "Transit encrypt @2ms p50 + 4ms" {
		t.Fatalf("%+v", r)
	}
	enc.P50 = 6 * ms
	if r := ComputeLatencyRatio("encrypt", enc, transit, 4*ms, 1.15); r.Met || r.Value != 1.2 {
		t.Fatalf("%+v", r)
	}
	// Within 10% of encrypt's 6 ms p50, and not.
	sign := Result{Name: "sign", Ops: 10, P50: 6500 * time.Microsecond}
	if r := ComputeLatencyRatio("sign", sign, enc, 0, 1.10); !r.Met || r.Denominator != "encrypt [softhsm2] @2ms p50" {
		t.Fatalf("%+v", r)
	}
	sign.P50 = 6700 * time.Microsecond
	if r := ComputeLatencyRatio("sign", sign, enc, 0, 1.10); r.Met {
		t.Fatalf("%+v", r)
	}
	if r := ComputeLatencyRatio("none", sign, Result{Name: "x"}, 0, 1.1); r.Met || r.Value != 0 {
		t.Fatalf("nothing measured met a target: %+v", r)
	}
	sign.Errors = 1
	if r := ComputeLatencyRatio("errors", sign, enc, 0, 2); r.Met {
		t.Fatalf("a scenario with errors met a target: %+v", r)
	}

	ideal := SessionsIdeal(8, 2, 2*ms)
	if ideal != 2000 {
		t.Fatalf("8 sessions at 2 calls of 2 ms: %v items/s, want 2000", ideal)
	}
	if SessionsIdeal(8, 2, 0) != 0 {
		t.Fatal("no round trip has no ideal rate")
	}
	batch := Result{Name: "batch", ItemsPerSec: 1700}
	if r := ComputeIdealRatio("batch", batch, ideal, "8 sessions", 0.8); !r.Met || r.Value != 0.85 || r.AtMost {
		t.Fatalf("%+v", r)
	}
	batch.ItemsPerSec = 1500
	if r := ComputeIdealRatio("batch", batch, ideal, "8 sessions", 0.8); r.Met {
		t.Fatalf("%+v", r)
	}
	if r := ComputeIdealRatio("batch", batch, 0, "none", 0.8); r.Met {
		t.Fatalf("%+v", r)
	}
}

// With a simulated round trip the table has a section per round trip, and
// results with the network's figures show calls per operation and calls
// in flight.
func TestTableSections(t *testing.T) {
	ms := time.Millisecond
	results := []Result{
		{Name: "hsmkms encrypt", Token: "softhsm2", Concurrency: 8, ItemsPerSec: 2000, CallsCounted: true, CallsPerOp: 2, MaxInFlight: 8, StorageCounted: true},
		{Name: "Transit encrypt", Concurrency: 8, ItemsPerSec: 5000},
		{Name: "hsmkms encrypt", Token: "softhsm2", Concurrency: 8, ItemsPerSec: 900, RTT: 2 * ms, CallsCounted: true, CallsPerOp: 2, MaxInFlight: 8, StorageCounted: true, StoragePerOp: 1},
		{Name: "Transit encrypt", Concurrency: 8, ItemsPerSec: 4900, RTT: 2 * ms},
	}
	table := Table(results, nil)
	sections := strings.Split(table, "== simulated network HSM: ")
	if len(sections) != 3 || !strings.HasPrefix(sections[1], "0s per PKCS#11 call") || !strings.HasPrefix(sections[2], "2ms per PKCS#11 call") {
		t.Fatalf("table:\n%s", table)
	}
	for i, want := range []struct{ items, storage string }{{"2000", "0.0"}, {"900", "1.0"}} {
		var row []string
		for _, l := range strings.Split(sections[i+1], "\n") {
			if strings.HasPrefix(l, "hsmkms encrypt ") {
				row = strings.Fields(strings.TrimPrefix(l, "hsmkms encrypt"))
			}
		}
		// conc, items/s p50 p99 errors calls stor sess
		if len(row) != 8 || row[1] != want.items || row[5] != "2.0" || row[6] != want.storage || row[7] != "8" {
			t.Fatalf("section %d row %q in\n%s", i, row, table)
		}
		if !strings.Contains(sections[i+1], "Transit encrypt") || !strings.Contains(sections[i+1], "calls") {
			t.Fatalf("section %d:\n%s", i, sections[i+1])
		}
	}
	if rows, _ := SideBySide(results); len(rows) != 2 || rows[1].RTT != 2*ms {
		t.Fatalf("rows %+v", rows)
	}
}

// A network with a call in flight is not quiet; one with none is.
func TestWaitQuiet(t *testing.T) {
	net := netsim.New(0)
	if err := WaitQuiet(context.Background(), net); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	entered := make(chan struct{})
	done := make(chan error)
	p := net.Wrap(blocker{entered: entered, release: release})
	go func() { done <- p.EncryptInit(1, nil, 1) }()
	<-entered
	// Long enough for several polls: it must not call this quiet.
	ctx, cancel := context.WithTimeout(context.Background(), 5*quietFor)
	defer cancel()
	if err := WaitQuiet(ctx, net); err == nil {
		t.Fatal("a network with a call in flight was quiet")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := WaitQuiet(context.Background(), net); err != nil {
		t.Fatal(err)
	}
}

type blocker struct {
	hsm.PKCS11
	entered, release chan struct{}
}

func (b blocker) EncryptInit(pkcs11.SessionHandle, []*pkcs11.Mechanism, pkcs11.ObjectHandle) error {
	close(b.entered)
	<-b.release
	return nil
}

// Alternating contenders behind simulated networks get the figures each
// one's own slices showed; one without a network gets none; items scale.
func TestRunAlternatingObserved(t *testing.T) {
	slow, fast := netsim.New(2*time.Millisecond), netsim.New(0)
	sign := func(p hsm.PKCS11) Worker {
		return func(context.Context, int) error { _, err := p.SignOnce(1, nil, 1); return err }
	}
	res := RunAlternating(context.Background(), 2, 50*time.Millisecond, 2, []Contender{
		{Name: "slow", Op: sign(slow.Wrap(signer{})), Src: slow, Items: 10},
		{Name: "fast", Op: sign(fast.Wrap(signer{})), Src: fast},
		{Name: "plain", Op: func(context.Context, int) error { return nil }},
	})
	s, f, p := res[0], res[1], res[2]
	if s.RTT != 2*time.Millisecond || s.MeanDelay < 2*time.Millisecond || s.MaxInFlight < 1 || s.MaxInFlight > 2 || s.MeanInFlight <= 0 || s.Items != 10*s.Ops {
		t.Errorf("slow: %+v", s)
	}
	if f.RTT != 0 || f.MeanDelay != 0 || f.MaxInFlight < 1 || f.MaxInFlight > 2 || f.Items != f.Ops {
		t.Errorf("fast: %+v", f)
	}
	if p.MaxInFlight != 0 || p.MeanInFlight != 0 || p.Ops == 0 {
		t.Errorf("plain: %+v", p)
	}
}
