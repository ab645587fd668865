package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/loadbench"
)

// At a simulated round trip the targets are issue 19's, with the round
// trip the calls paid, the sessions the mount's config allows a batch, and
// at 0 only encrypt against decrypt.
func TestPhaseTargets(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/kms-rtt1/config" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(`{"data":{"batch_concurrency":8,"pool_size":16}}`))
	}))
	defer srv.Close()
	ms := time.Millisecond
	rtt := 2 * ms
	b := &bench{o: options{concurrency: 8}, client: loadbench.NewHTTPClient(srv.URL, "t", 1), rep: &report{}, results: map[string]loadbench.Result{}}
	add := func(name, tok string, conc int, p50 time.Duration, itemsPerSec float64, delay time.Duration) {
		r := loadbench.Result{Name: name, Token: tok, RTT: rtt, Concurrency: conc, Ops: 100, P50: p50, ItemsPerSec: itemsPerSec, MeanDelay: delay, MaxInFlight: 8, MeanInFlight: 7,
			MeanLatency: p50, CallTimePerOp: p50 - time.Millisecond}
		b.results[r.Key()] = r
	}
	// The raw token's calls paid 2.2 ms each: the targets' RTT.
	add(rawAES1, "softhsm2", 1, 4500*time.Microsecond, 220, 2200*time.Microsecond)
	add("hsmkms"+encrypt1, "softhsm2", 1, 5500*time.Microsecond, 180, 2300*time.Microsecond)
	add("hsmkms"+decrypt1, "softhsm2", 1, 5600*time.Microsecond, 178, 0)
	add("hsmkms"+signEC1, "softhsm2", 1, 6600*time.Microsecond, 150, 0)
	add("hsmkms"+encrypt, "softhsm2", 8, 10*ms, 800, 2500*time.Microsecond)
	add("hsmkms"+decrypt, "softhsm2", 8, 10*ms, 820, 0)
	add("hsmkms"+signEC, "softhsm2", 8, 10*ms, 790, 0)
	add("hsmkms"+batch1, "softhsm2", 1, 60*ms, 1600, 2500*time.Microsecond)
	add("Transit"+encrypt1, "", 1, 500*time.Microsecond, 2000, 0)
	add("Transit"+encrypt, "", 8, 1500*time.Microsecond, 4000, 0)

	ratios, err := b.phaseTargets(context.Background(), phase{rtt: rtt, mounts: map[string]string{"softhsm2": "kms-rtt1"}}, &token{kind: "softhsm2"})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]loadbench.Ratio{}
	for _, r := range ratios {
		byName[r.Name] = r
	}
	check := func(name string, value float64, met bool) {
		t.Helper()
		r, ok := byName["SoftHSM2 @2ms: "+name]
		if !ok {
			t.Fatalf("no target %q in %v", name, byName)
		}
		if r.Met != met || r.Value < value-1e-9 || r.Value > value+1e-9 {
			t.Errorf("%s: value %v met %v, want %v %v", name, r.Value, r.Met, value, met)
		}
	}
	check("encrypt / decrypt items/s, 8 clients", 800.0/820, true)
	check("encrypt p50 / (Transit p50 + 2 x RTT), 1 client", 5.5/(0.5+4.4), true)
	check("decrypt p50 / encrypt p50, 1 client", 5.6/5.5, true)
	check("ecdsa-p256 sign p50 / encrypt p50, 1 client", 6.6/5.5, false)
	check("encrypt p50 / (Transit p50 + 2 x RTT), 8 clients", 10/(1.5+4.4), false)
	check("decrypt p50 / encrypt p50, 8 clients", 1, true)
	// 8 sessions, 2 calls of 2.2 ms each: 1,818 items/s at best.
	check("batch of 100 items/s / (8 sessions / (2 x RTT)), 1 client", 1600/(8/(2*0.0022)), true)
	if n := byName["SoftHSM2 @2ms: batch of 100 items/s / (8 sessions / (2 x RTT)), 1 client"].Note; !strings.Contains(n, "batch_concurrency 8 of pool_size 16") ||
		!strings.Contains(n, "nominal 2ms: 0.800") || !strings.Contains(n, "2.5ms, the plugin's calls': 1.000") {
		t.Errorf("batch note %q", n)
	}
	if n := byName["SoftHSM2 @2ms: encrypt p50 / (Transit p50 + 2 x RTT), 1 client"].Note; !strings.Contains(n, "RTT 2.2ms, the raw token's") ||
		!strings.Contains(n, "2.3ms, the plugin's calls': 1.078") || !strings.Contains(n, "outside its calls: 1ms") {
		t.Errorf("encrypt note %q", n)
	}
	if len(ratios) != 8 {
		t.Errorf("%d targets at 2 ms, want 8", len(ratios))
	}

	// At 0: encrypt against decrypt alone.
	b.results = map[string]loadbench.Result{}
	for _, r := range []loadbench.Result{{Name: "hsmkms" + encrypt, Token: "softhsm2", ItemsPerSec: 900}, {Name: "hsmkms" + decrypt, Token: "softhsm2", ItemsPerSec: 1000}} {
		b.results[r.Key()] = r
	}
	ratios, err = b.phaseTargets(context.Background(), phase{mounts: map[string]string{"softhsm2": "kms"}}, &token{kind: "softhsm2"})
	if err != nil || len(ratios) != 1 || ratios[0].Met || ratios[0].Name != "SoftHSM2 @0s: encrypt / decrypt items/s, 8 clients" {
		t.Fatalf("at 0: %+v, %v", ratios, err)
	}
}
