package hsm_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// After the token refused the PIN on a re-login, requests are answered with
// an error naming the cause, and no further C_Login reaches the token until
// the login backoff ends: a real HSM locks the PIN after a few failures.
func TestRefusedPINIsNotTriedAgainOnEveryRequest(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		id := newKey(t, c)
		logins := ft.Calls("C_Login")
		ft.SetFailing("C_Login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
		ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
		for i := 0; i < 21; i++ {
			_, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad"))
			if !errors.Is(err, hsm.ErrUnavailable) || !errors.Is(err, hsm.ErrPINIncorrect) {
				t.Fatalf("request %d with the PIN refused: %v, want ErrUnavailable naming the PIN", i, err)
			}
		}
		if n := ft.Calls("C_Login") - logins; n != 1 {
			t.Fatalf("21 requests after the PIN was refused made %d C_Login calls, want 1", n)
		}
	})
}

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
// back: every session the client opened is closed.
func TestNoSessionLeakedByCloseUnderLoad(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		ft := faulttoken.New(nil)
		cfg := hsm.TokenConfig(tokenA, 4)
		cfg.Intercept = ft.Intercept
		c, err := hsm.Open(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ft.SetDelay("C_GenerateRandom", 2*time.Millisecond)
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 50; j++ {
					if _, err := c.Random(context.Background(), 16); errors.Is(err, hsm.ErrClosed) {
						return
					}
				}
			}()
		}
		time.Sleep(20 * time.Millisecond)
		c.Close()
		wg.Wait()
		if opened, closed := ft.Calls("C_OpenSession"), ft.Calls("C_CloseSession"); opened != closed {
			t.Fatalf("%d sessions opened, %d closed", opened, closed)
		}
	})
}

// C_Initialize itself fails while the HSM is unreachable (network HSM
// clients do); once it succeeds again the client heals by itself, and no
// request sent after the outage's end fails.
func TestInitializeFailingThenSucceedingRecovers(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		id := newKey(t, c)
		ft.SetFailing("C_Initialize", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
		ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
		outage := time.Now().Add(1500 * time.Millisecond)
		failed := 0
		for time.Now().Before(outage) {
			if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
				if !errors.Is(err, hsm.ErrUnavailable) {
					t.Fatalf("during the outage: %v, want ErrUnavailable", err)
				}
				failed++
			}
		}
		if failed == 0 {
			t.Fatal("no request failed while C_Initialize did")
		}
		ft.SetFailing("C_Initialize", nil)
		for i := 0; i < 10; i++ {
			if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
				t.Fatalf("request %d after the outage: %v", i, err)
			}
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
