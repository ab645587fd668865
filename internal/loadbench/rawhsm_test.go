package loadbench

import (
	"context"
	"maps"
	"os"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/netsim"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// The raw-HSM scenarios run against real tokens of every implementation,
// briefly, with session keys and with token keys, through the simulated
// network the bench puts them behind: each makes the two PKCS#11 calls the
// plugin makes for the same operation.
func TestRawHSMScenarios(t *testing.T) {
	for _, kind := range tokentest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			// NewSoftHSM points SOFTHSM2_CONF at the token; restored after.
			t.Setenv("SOFTHSM2_CONF", os.Getenv("SOFTHSM2_CONF"))
			toks, err := tokentest.New(kind, t.TempDir(), tokentest.Spec{Label: "bench", PIN: "1111"})
			if err != nil {
				t.Fatal(err)
			}
			tok := RawToken{Library: toks[0].Library, InitArgs: toks[0].InitArgs, Label: toks[0].Label, PIN: toks[0].PIN}
			if _, err := OpenRawHSM(RawToken{Library: tok.Library, InitArgs: tok.InitArgs, Label: "no-such-token", PIN: tok.PIN}, 1, false, nil); err == nil {
				t.Fatal("opened a token that does not exist")
			}
			for _, tokenObjects := range []bool{false, true} {
				net := netsim.New(0)
				raw, err := OpenRawHSM(tok, 2, tokenObjects, net.Wrap)
				if err != nil {
					t.Fatal(err)
				}
				for _, sc := range []struct {
					name  string
					op    Worker
					calls map[string]int64
				}{
					{"aes encrypt", raw.EncryptAESGCM64, map[string]int64{"C_EncryptInit": 1, "C_Encrypt": 1}},
					{"aes decrypt", raw.DecryptAESGCM64, map[string]int64{"C_DecryptInit": 1, "C_Decrypt": 1}},
					{"rsa", raw.SignRSA2048, map[string]int64{"C_SignInit": 1, "C_Sign": 1}},
					{"ec", raw.SignECDSAP256, map[string]int64{"C_SignInit": 1, "C_Sign": 1}},
				} {
					before := net.Take()
					if err := sc.op(context.Background(), 1); err != nil {
						t.Fatalf("%s: %v", sc.name, err)
					}
					if got := net.Take().Sub(before).Calls; !maps.Equal(got, sc.calls) {
						t.Errorf("%s: calls %v, want %v", sc.name, got, sc.calls)
					}
					res := Run(context.Background(), sc.name, 2, 100*time.Millisecond, 1, sc.op)
					if res.Ops == 0 || res.Errors != 0 {
						t.Errorf("%s (token objects %v): %+v", sc.name, tokenObjects, res)
					}
				}
				raw.Close()
				raw.Close() // idempotent
			}
		})
	}
}

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
BenchmarkHandlerEncryptAES64-2   	   69862	     52809 ns/op
BenchmarkHSMEncryptAES64-2       	   76700	     44689 ns/op	  120 B/op
BenchmarkSeam/nss/EncryptAESGCM64-2  4297  1098042 ns/op  572093 direct-ns/op  277788 direct-p50-ns  278279 iface-p50-ns  1.002 iface/direct  723 B/op  20 allocs/op
BenchmarkSeam/softhsm2/SignRSA2048PKCS1
BenchmarkSeam/softhsm2/SignRSA2048PKCS1-2  502  4840285 ns/op
BenchmarkSign-4096   	   100	     52809 ns/op
BenchmarkOneProc      	   100	     2000 ns/op
PASS`
	got := ParseGoBench(out)
	want := map[string]float64{"HandlerEncryptAES64": 52809, "HSMEncryptAES64": 44689, "Seam/nss/EncryptAESGCM64": 1098042,
		"Seam/softhsm2/SignRSA2048PKCS1": 4840285, "Sign": 52809, "OneProc": 2000}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	m := ParseGoBenchMetrics(out)["Seam/nss/EncryptAESGCM64"]
	if m["direct-p50-ns"] != 277788 || m["iface-p50-ns"] != 278279 || m["iface/direct"] != 1.002 || m["allocs/op"] != 20 || len(m) != 7 {
		t.Fatalf("metrics %v", m)
	}
}
