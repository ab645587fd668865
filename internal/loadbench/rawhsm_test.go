package loadbench

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// The raw-HSM scenarios run against a real SoftHSM token, briefly.
func TestRawHSMScenarios(t *testing.T) {
	dir := t.TempDir()
	tok, err := tokentest.NewSoftHSM(dir, "bench", "1111")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Unsetenv("SOFTHSM2_CONF")
	for _, tokenObjects := range []bool{false, true} {
		raw, err := OpenRawHSM(tok.Library, tok.Label, tok.PIN, 2, tokenObjects)
		if err != nil {
			t.Fatal(err)
		}
		for name, op := range map[string]Worker{"aes": raw.EncryptAESGCM64, "rsa": raw.SignRSA2048, "ec": raw.SignECDSAP256} {
			res := Run(context.Background(), name, 2, 100*time.Millisecond, 1, op)
			if res.Ops == 0 || res.Errors != 0 {
				t.Fatalf("%s (token objects %v): %+v", name, tokenObjects, res)
			}
		}
		raw.Close()
	}
}

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
BenchmarkHandlerEncryptAES64-2   	   69862	     52809 ns/op
BenchmarkHSMEncryptAES64-2       	   76700	     44689 ns/op	  120 B/op
PASS`
	got := ParseGoBench(out)
	if got["HandlerEncryptAES64"] != 52809 || got["HSMEncryptAES64"] != 44689 || len(got) != 2 {
		t.Fatalf("%v", got)
	}
}
