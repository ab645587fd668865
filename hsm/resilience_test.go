package hsm_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// Close racing calls on the same client never reaches a finalised module.
func TestCloseRacingCallsNeverCrashes(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		for i := 0; i < 100; i++ {
			c, err := hsm.Open(context.Background(), hsm.TokenConfig(tokenA, 2))
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for g := 0; g < 3; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; j < 5; j++ {
						_, _ = c.TokenInfo()
						_ = c.Stats()
						_ = c.Quirks()
						if _, err := c.Random(context.Background(), 16); err != nil && !errors.Is(err, hsm.ErrClosed) {
							t.Errorf("random during close: %v", err)
						}
					}
				}()
			}
			c.Close()
			wg.Wait()
			if _, err := c.TokenInfo(); !errors.Is(err, hsm.ErrClosed) {
				t.Fatalf("TokenInfo after Close: %v", err)
			}
		}
	})
}

// Sessions borrowed while the client closes are closed when they come
// back: every session the client opened is closed. The token holds the
// callers' calls (faulttoken's call signal) until Close has drained the
// pool, so the sessions surely come back to a closed pool.
func TestNoSessionLeakedByCloseUnderLoad(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		const size, busy = 4, 3
		ft := faulttoken.New(nil)
		cfg := hsm.TokenConfig(tokenA, size)
		cfg.Intercept = ft.Intercept
		c, err := hsm.Open(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()

		// hold makes C_GenerateRandom report its arrival and wait until
		// gate is closed.
		arrived := make(chan struct{})
		hold := func(gate chan struct{}) {
			ft.OnCall("C_GenerateRandom", func() {
				select {
				case arrived <- struct{}{}:
				case <-gate:
				}
				<-gate
			})
		}

		// Open every session of the pool: size calls, each held until all
		// of them have one.
		gate := make(chan struct{})
		hold(gate)
		var wg sync.WaitGroup
		for range size {
			wg.Go(func() {
				if _, err := c.Random(ctx, 16); err != nil {
					t.Errorf("filling the pool: %v", err)
				}
			})
		}
		for range size {
			<-arrived
		}
		close(gate)
		wg.Wait()

		// busy callers take idle sessions and are held in the token; one
		// session stays idle, for Close to close while draining.
		gate = make(chan struct{})
		hold(gate)
		for range busy {
			wg.Go(func() {
				for j := 0; j < 50; j++ {
					if _, err := c.Random(ctx, 16); errors.Is(err, hsm.ErrClosed) {
						return
					}
				}
			})
		}
		for range busy {
			<-arrived
		}
		if st := c.Stats(); st.Open != size || st.InUse != busy || st.Idle != size-busy {
			t.Fatalf("before Close: %+v, want %d sessions, %d in use", st, size, busy)
		}
		drained := make(chan struct{})
		var once sync.Once
		ft.OnCall("C_CloseSession", func() { once.Do(func() { close(drained) }) })
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			c.Close()
		}()
		<-drained
		close(gate)
		<-closed
		wg.Wait()
		if opened, closed := ft.Calls("C_OpenSession"), ft.Calls("C_CloseSession"); opened != closed {
			t.Fatalf("%d sessions opened, %d closed", opened, closed)
		}
	})
}

// A handle goes stale and the object is then not found, as when the
// token's storage went away under the module: re-initialising (not "key
// not found" for good) is the answer.
func TestObjectNotFoundAfterAHandleErrorReinitialises(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		id := newKey(t, c)
		blob, err := c.EncryptGCM(ctx, id, []byte("kept"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		ft.FailNext("C_DecryptInit", pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID))
		ft.HideObjects(1)
		got, err := c.DecryptGCM(ctx, id, blob, []byte("aad"))
		if err != nil || string(got) != "kept" {
			t.Fatalf("decrypt after a stale handle and a lost object: %q %v", got, err)
		}
		if st := c.Stats(); st.Reconnects != 1 {
			t.Fatalf("reconnects %d, want 1", st.Reconnects)
		}
		// A key that is really gone is still reported as such.
		if err := c.DestroyObjects(ctx, id, anyLabel); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DecryptGCM(ctx, id, blob, []byte("aad")); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Fatalf("destroyed key: %v, want ErrKeyNotFound", err)
		}
	})
}

// A second client of a logged-in token with another PIN is refused
// without a login, naming the mount that holds the login; twice in quick
// succession is refused without even comparing.
func TestSharedLoginNamesItsMountsAndLimitsGuesses(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, _, tokenB *tokentest.Token) {
		cfg := hsm.TokenConfig(tokenB, 1)
		cfg.Owner = "kms-a/"
		first, err := hsm.Open(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		guess := hsm.TokenConfig(tokenB, 1)
		guess.Owner, guess.PIN = "kms-b/", "0000"
		_, err = hsm.Open(context.Background(), guess)
		if !errors.Is(err, hsm.ErrPINIncorrect) || !strings.Contains(err.Error(), "kms-a/") {
			t.Fatalf("another mount's PIN: %v, want ErrPINIncorrect naming kms-a/", err)
		}
		guess.PIN = "1111"
		_, err = hsm.Open(context.Background(), guess)
		if !errors.Is(err, hsm.ErrPINIncorrect) || !strings.Contains(err.Error(), "try again later") {
			t.Fatalf("a second guess at once: %v, want a refusal without comparing", err)
		}
	})
}

// anyLabel lets a test destroy what it made, whatever the label.
func anyLabel(string) bool { return true }
