package hsm_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// The module's recovery backoffs, on the clock of a testing/synctest
// bubble: the times are proven exactly and nothing waits in real time.
// The tokens stay real; their PKCS#11 calls run in real time but take no
// bubble time, since the bubble's clock moves only when every goroutine
// in it waits on the clock or on another of its goroutines.

// recoveryBackoff is the least time between two attempts to bring a
// module back, as README promises it ("at most twice a second"): a copy,
// not hsm's constant, so that changing the constant fails these tests.
const recoveryBackoff = 500 * time.Millisecond

// callClock records when, on the bubble's clock since start, each call of
// one PKCS#11 function reached the token.
type callClock struct {
	mu sync.Mutex
	at []time.Duration
}

func clockCalls(ft *faulttoken.Token, name string, start time.Time) *callClock {
	c := &callClock{}
	ft.OnCall(name, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.at = append(c.at, time.Since(start))
	})
	return c
}

func (c *callClock) times() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.at)
}

// The token goes away under 20 concurrent requests: the module is
// re-initialised at once, then once per backoff, each attempt shared by
// every request waiting for it, so the HSM sees two attempts, not twenty.
// A request sent after the token's return waits for the next attempt
// rather than fail, and succeeds: the client heals by itself, no reload,
// no new client.
func TestTokenNotPresentAndBack(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		synctest.Test(t, func(t *testing.T) {
			c, ft := openFaulty(t, tokenA, 2)
			ctx := context.Background()
			id := newKey(t, c)
			blob, err := c.EncryptGCM(ctx, id, []byte("kept"), []byte("aad"))
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			inits := clockCalls(ft, "C_Initialize", start)
			logins := clockCalls(ft, "C_Login", start)
			ft.SetAbsent(true)
			errs := make([]error, 20)
			answered := make([]time.Duration, 20)
			var wg sync.WaitGroup
			for i := range errs {
				wg.Go(func() {
					_, errs[i] = c.DecryptGCM(ctx, id, blob, []byte("aad"))
					answered[i] = time.Since(start)
				})
			}
			wg.Wait()
			for i, err := range errs {
				if !errors.Is(err, hsm.ErrUnavailable) || errors.Is(err, hsm.ErrDecrypt) {
					t.Fatalf("token away, request %d: %v, want ErrUnavailable", i, err)
				}
				if answered[i] > recoveryBackoff {
					t.Errorf("token away, request %d answered at %v, after the attempt at %v it waited for", i, answered[i], recoveryBackoff)
				}
			}
			if got, want := inits.times(), []time.Duration{0, recoveryBackoff}; !slices.Equal(got, want) {
				t.Fatalf("20 concurrent requests during the outage: C_Initialize at %v, want at %v", got, want)
			}

			ft.SetAbsent(false)
			back := time.Since(start)
			got, err := c.DecryptGCM(ctx, id, blob, []byte("aad"))
			if err != nil || string(got) != "kept" {
				t.Fatalf("the first request after the token's return: %q, %v", got, err)
			}
			if at, want := time.Since(start), back+recoveryBackoff; at != want {
				t.Errorf("the first request after the token's return (at %v) answered at %v, want %v: at the next attempt", back, at, want)
			}
			// The module was initialised by the attempt at 500 ms and only
			// the token was missing: the login alone is made again.
			if got, want := logins.times(), []time.Duration{back + recoveryBackoff}; !slices.Equal(got, want) {
				t.Errorf("C_Login at %v, want at %v", got, want)
			}
			if n := len(inits.times()); n != 2 {
				t.Errorf("%d C_Initialize calls, want no more after the token's return", n)
			}
			if _, err := c.EncryptGCM(ctx, id, []byte("again"), []byte("aad")); err != nil {
				t.Fatalf("after recovery: %v", err)
			}
		})
	})
}

// C_Initialize itself fails while the HSM is unreachable (network HSM
// clients do): every request is answered ErrUnavailable, one attempt per
// backoff reaches the module, and once C_Initialize succeeds again the
// client heals by itself at the next attempt; no request sent after the
// outage's end fails.
func TestInitializeFailingThenSucceedingRecovers(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		synctest.Test(t, func(t *testing.T) {
			c, ft := openFaulty(t, tokenA, 2)
			ctx := context.Background()
			id := newKey(t, c)
			start := time.Now()
			inits := clockCalls(ft, "C_Initialize", start)
			ft.SetFailing("C_Initialize", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
			ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
			const outage = 3 * recoveryBackoff
			var answered []time.Duration
			// Bounded, not until the outage's end: a client that stopped
			// waiting for the next attempt would take no bubble time.
			for range 4 {
				if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); !errors.Is(err, hsm.ErrUnavailable) {
					t.Fatalf("during the outage, at %v: %v, want ErrUnavailable", time.Since(start), err)
				}
				answered = append(answered, time.Since(start))
			}
			// The first request meets the device error and re-initialises
			// at once; each later one waits for the next attempt.
			want := []time.Duration{0, recoveryBackoff, 2 * recoveryBackoff, outage}
			if !slices.Equal(answered, want) {
				t.Errorf("requests during the outage answered at %v, want %v", answered, want)
			}
			if got := inits.times(); !slices.Equal(got, want) {
				t.Errorf("C_Initialize at %v, want %v", got, want)
			}
			ft.SetFailing("C_Initialize", nil)
			for i := 0; i < 10; i++ {
				if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
					t.Fatalf("request %d after the outage: %v", i, err)
				}
			}
			if at, want := time.Since(start), outage+recoveryBackoff; at != want {
				t.Errorf("after the outage, 10 requests were answered by %v, want %v: at the next attempt", at, want)
			}
			if got := inits.times(); len(got) != 5 || got[4] != outage+recoveryBackoff {
				t.Errorf("C_Initialize at %v, want one more at %v", got, outage+recoveryBackoff)
			}
		})
	})
}

// After the token refused the PIN on a re-login, requests are answered
// with an error naming the cause, and no C_Login reaches the token until
// login_backoff has passed (a real HSM locks the PIN after a few
// failures), then one; a PIN the token would take again is not tried
// before the backoff of the last refusal ends either.
func TestRefusedPINIsNotTriedAgainOnEveryRequest(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		synctest.Test(t, func(t *testing.T) {
			const backoff = 45 * time.Second // not DefaultLoginBackoff: the configured one counts
			ft := faulttoken.New(nil)
			cfg := hsm.TokenConfig(tokenA, 2)
			cfg.Intercept = ft.Intercept
			cfg.LoginBackoff = backoff
			c, err := hsm.Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			ctx := context.Background()
			id := newKey(t, c)
			start := time.Now()
			logins := clockCalls(ft, "C_Login", start)
			refused := func(when string) {
				t.Helper()
				_, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad"))
				if !errors.Is(err, hsm.ErrUnavailable) || !errors.Is(err, hsm.ErrPINIncorrect) {
					t.Fatalf("%s: %v, want ErrUnavailable naming the PIN", when, err)
				}
			}
			ft.SetFailing("C_Login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
			ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
			for i := 0; i < 21; i++ {
				refused("a request with the PIN refused")
			}
			if got := logins.times(); !slices.Equal(got, []time.Duration{0}) {
				t.Fatalf("21 requests after the PIN was refused: C_Login at %v, want once, at 0", got)
			}
			time.Sleep(backoff - time.Nanosecond)
			refused("a request just before login_backoff ends")
			if got := logins.times(); len(got) != 1 {
				t.Fatalf("C_Login at %v: tried again before login_backoff (%v) ended", got, backoff)
			}
			time.Sleep(time.Nanosecond)
			refused("a request when login_backoff ends, the token refusing still")
			if got, want := logins.times(), []time.Duration{0, backoff}; !slices.Equal(got, want) {
				t.Fatalf("C_Login at %v, want %v", got, want)
			}
			ft.SetFailing("C_Login", nil)
			time.Sleep(backoff - time.Nanosecond)
			refused("a request before the second refusal's backoff ends")
			if got := logins.times(); len(got) != 2 {
				t.Fatalf("C_Login at %v: tried again before the second refusal's backoff ended", got)
			}
			time.Sleep(time.Nanosecond)
			if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
				t.Fatalf("once the backoff ended with the PIN taken again: %v", err)
			}
			if got, want := logins.times(), []time.Duration{0, backoff, 2 * backoff}; !slices.Equal(got, want) {
				t.Fatalf("C_Login at %v, want %v", got, want)
			}
		})
	})
}
