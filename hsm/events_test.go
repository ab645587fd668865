package hsm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// logEvents collects a client's log as hclog JSON lines.
type logEvents struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logEvents) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// named returns the events whose message starts with prefix.
func (l *logEvents) named(t *testing.T, prefix string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if msg, _ := ev["@message"].(string); strings.HasPrefix(msg, prefix) {
			out = append(out, ev)
		}
	}
	return out
}

func (l *logEvents) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// An outage and a refused PIN are each logged once at their start and
// once at their end, whatever the number of requests in between, and the
// end names how long it lasted, on the clock of a synctest bubble so the
// durations are exact. The PIN is in no line.
func TestOutageAndRefusedPINAreLoggedOnceWithTheirLength(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		synctest.Test(t, func(t *testing.T) {
			const backoff = 45 * time.Second
			events := &logEvents{}
			ft := faulttoken.New(nil)
			cfg := hsm.TokenConfig(tokenA, 2)
			cfg.Intercept = ft.Intercept
			cfg.LoginBackoff = backoff
			cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: events, JSONFormat: true, Level: hclog.Info})
			c, err := hsm.Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			ctx := context.Background()
			id := newKey(t, c)
			blob, err := c.EncryptGCM(ctx, id, []byte("kept"), []byte("aad"))
			if err != nil {
				t.Fatal(err)
			}

			ft.SetAbsent(true)
			for range 5 {
				if _, err := c.DecryptGCM(ctx, id, blob, []byte("aad")); err == nil {
					t.Fatal("a request succeeded with the token away")
				}
				time.Sleep(time.Second)
			}
			if n := len(events.named(t, "HSM lost")); n != 1 {
				t.Fatalf("%d \"HSM lost\" events for one outage, want 1:\n%s", n, events)
			}
			if n := len(events.named(t, "HSM regained")); n != 0 {
				t.Fatalf("\"HSM regained\" logged while the token is away:\n%s", events)
			}
			ft.SetAbsent(false)
			if _, err := c.DecryptGCM(ctx, id, blob, []byte("aad")); err != nil {
				t.Fatalf("after the token's return: %v", err)
			}
			regained := events.named(t, "HSM regained")
			if len(regained) != 1 {
				t.Fatalf("%d \"HSM regained\" events, want 1:\n%s", len(regained), events)
			}
			// Lost at 0; five requests a second apart, each past the
			// backoff of the attempt before, so each attempts at once;
			// back at 5 s and regained by the request sent then.
			if got, want := regained[0]["outage"], (5 * time.Second).String(); got != want {
				t.Errorf("outage %v, want %s", got, want)
			}

			ft.SetFailing("C_Login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
			ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
			for range 10 {
				if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err == nil {
					t.Fatal("a request succeeded with the PIN refused")
				}
			}
			if n := len(events.named(t, "login refused")); n != 1 {
				t.Fatalf("%d \"login refused\" events for one refusal, want 1:\n%s", n, events)
			}
			ft.SetFailing("C_Login", nil)
			time.Sleep(backoff)
			if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
				t.Fatalf("once the backoff ended with the PIN taken again: %v", err)
			}
			resumed := events.named(t, "login resumed")
			if len(resumed) != 1 {
				t.Fatalf("%d \"login resumed\" events, want 1:\n%s", len(resumed), events)
			}
			if got, want := resumed[0]["refused_for"], backoff.String(); got != want {
				t.Errorf("refused_for %v, want %s", got, want)
			}
			if strings.Contains(events.String(), tokenA.PIN) {
				t.Errorf("the log holds the PIN:\n%s", events)
			}
		})
	})
}
