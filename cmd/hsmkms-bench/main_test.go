package main

import (
	"strings"
	"testing"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/loadbench"
)

// The in-process targets come from `go test -bench` output: the handler
// ratios, and the seam's per token and operation; what did not run is a
// MISSED target, never a met one.
func TestGoBenchRatios(t *testing.T) {
	out := `BenchmarkHandlerEncryptAES64-2   69862   52809 ns/op
BenchmarkHSMEncryptAES64-2       76700   44689 ns/op
BenchmarkSeam/softhsm2/EncryptAESGCM64-2  29822  138589 ns/op  66922 direct-ns/op  36803 direct-p50-ns  71448 iface-ns/op  37284 iface-p50-ns  1.005 iface/direct
BenchmarkSeam/nss/EncryptAESGCM64-2  5169  982194 ns/op  1.031 iface/direct
BenchmarkSeam/nss/SignRSA2048PKCS1-2  22  203580918 ns/op  0.9673 iface/direct
`
	byName := map[string]loadbench.Ratio{}
	for _, r := range goBenchRatios(out) {
		byName[r.Name] = r
		if !r.AtMost {
			t.Errorf("%s: not an upper bound", r.Name)
		}
	}
	check := func(name string, value float64, met bool) {
		t.Helper()
		got, ok := byName[name]
		if !ok {
			t.Fatalf("no target %q in %v", name, byName)
		}
		if got.Met != met || (value > 0 && (got.Value < value-1e-9 || got.Value > value+1e-9)) {
			t.Errorf("%s: %+v, want value %v met %v", name, got, value, met)
		}
	}
	check("SoftHSM2: in-process AES-GCM 64 B encrypt: handler / bare hsm call", 52809.0/44689.0, true)
	check("SoftHSM2: in-process rsa-2048 sign: handler / bare hsm call", 0, false) // not run
	check("SoftHSM2: PKCS11 seam, AES-GCM 64 B encrypt: interface / concrete", 1.005, true)
	check("NSS softokn: PKCS11 seam, AES-GCM 64 B encrypt: interface / concrete", 1.031, false)
	check("NSS softokn: PKCS11 seam, RSA-2048 PKCS#1 v1.5 sign: interface / concrete", 0.9673, true)
	check("SoftHSM2: PKCS11 seam, RSA-2048 PKCS#1 v1.5 sign: interface / concrete", 0, false) // not run
	if n := byName["SoftHSM2: PKCS11 seam, RSA-2048 PKCS#1 v1.5 sign: interface / concrete"].Note; !strings.Contains(n, "not measured") {
		t.Errorf("note %q", n)
	}
}
