package hsm_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// callLog is an hsm.Observer that keeps what it was told.
type callLog struct {
	mu      sync.Mutex
	calls   map[string]int
	classes map[string]int // "C_Encrypt/device"
	took    time.Duration
}

func newCallLog() *callLog { return &callLog{calls: map[string]int{}, classes: map[string]int{}} }

func (l *callLog) observe(call string, took time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls[call]++
	l.classes[call+"/"+hsm.ErrorClass(err)]++
	l.took += took
}

func (l *callLog) snapshot() (map[string]int, map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.calls), maps.Clone(l.classes)
}

// The observer is told of every PKCS#11 call the client makes, once per
// call that reaches the module (miekg's two-call methods count twice, as
// the fault token counts them), from the client's opening to its close,
// re-initialisation and login included, with the class of each failure.
func TestObserverSeesEveryModuleCallOnce(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		log := newCallLog()
		ft := faulttoken.New(nil)
		cfg := hsm.TokenConfig(tokenA, 2)
		cfg.Intercept, cfg.Observe = ft.Intercept, log.observe
		c, err := hsm.Open(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		closed := false
		defer func() {
			if !closed {
				c.Close()
			}
		}()
		ctx := context.Background()
		id := newKey(t, c)
		blob, err := c.EncryptGCM(ctx, id, []byte("observed"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.DecryptGCM(ctx, id, blob, []byte("aad")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DecryptGCM(ctx, id, append([]byte{}, blob[:len(blob)-1]...), []byte("aad")); !errors.Is(err, hsm.ErrDecrypt) {
			t.Fatalf("decrypting a cut ciphertext: %v, want ErrDecrypt", err)
		}
		if _, err := c.Random(ctx, 48); err != nil {
			t.Fatal(err)
		}
		before := c.Stats()
		ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
		if _, err := c.EncryptGCM(ctx, id, []byte("after a device error"), []byte("aad")); err != nil {
			t.Fatalf("encrypt after one device error: %v", err)
		}
		after := c.Stats()
		if after.Retries-before.Retries != 1 || after.Reconnects-before.Reconnects != 1 {
			t.Errorf("one device error: %d retries and %d re-initialisations, want 1 and 1",
				after.Retries-before.Retries, after.Reconnects-before.Reconnects)
		}
		c.Close()
		closed = true

		calls, classes := log.snapshot()
		if want := ft.Counts(); !maps.Equal(calls, want) {
			t.Errorf("observed calls %v\nthe module's calls %v", calls, want)
		}
		if classes["C_Encrypt/device"] != 1 {
			t.Errorf("C_Encrypt's device error observed %d times, want 1 (classes %v)", classes["C_Encrypt/device"], classes)
		}
		for _, call := range []string{"C_Initialize", "C_Finalize", "C_Login", "C_OpenSession", "C_GenerateKey", "C_EncryptInit", "C_DecryptInit", "C_GenerateRandom"} {
			if calls[call] == 0 {
				t.Errorf("no %s observed (calls %v)", call, calls)
			}
		}
		if classes["C_Decrypt/none"] == 0 {
			t.Errorf("no successful C_Decrypt observed (classes %v)", classes)
		}
	})
}

func TestErrorClassNamesTheClientsTreatment(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "none"},
		{pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN), "none"},
		{&hsm.ResultSizeError{Size: 16}, "none"},
		{pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID), "session"},
		{pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID), "handle"},
		{pkcs11.Error(pkcs11.CKR_DEVICE_ERROR), "device"},
		{fmt.Errorf("C_Login: %w", pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)), "device"},
		{pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID), "caller"},
		{hsm.ErrDecrypt, "caller"},
		{pkcs11.Error(pkcs11.CKR_PIN_INCORRECT), "pin"},
		{hsm.ErrPINLocked, "pin"},
		{pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED), "other"},
		{errors.New("something else"), "other"},
	} {
		if got := hsm.ErrorClass(tc.err); got != tc.want {
			t.Errorf("ErrorClass(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// The login state follows what the last call found: ok, the PIN refused
// or locked (and kept so through the backoff), the token unreachable, and
// ok again once a call logs in.
func TestLoginStateFollowsTheToken(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(ft *faulttoken.Token)
		clear func(ft *faulttoken.Token)
		want  hsm.LoginState
	}{
		{"PIN refused", func(ft *faulttoken.Token) { ft.SetFailing("C_Login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)) },
			func(ft *faulttoken.Token) { ft.SetFailing("C_Login", nil) }, hsm.LoginPINRefused},
		{"PIN locked", func(ft *faulttoken.Token) { ft.SetFailing("C_Login", pkcs11.Error(pkcs11.CKR_PIN_LOCKED)) },
			func(ft *faulttoken.Token) { ft.SetFailing("C_Login", nil) }, hsm.LoginPINLocked},
		{"token away", func(ft *faulttoken.Token) { ft.SetAbsent(true) }, func(ft *faulttoken.Token) { ft.SetAbsent(false) }, hsm.LoginUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hsm.EachToken(t, func(t *testing.T, tok, _ *tokentest.Token) {
				synctest.Test(t, func(t *testing.T) { loginStateThrough(t, tok, tc.fault, tc.clear, tc.want) })
			})
		})
	}
}

func loginStateThrough(t *testing.T, tok *tokentest.Token, fault, clear func(*faulttoken.Token), want hsm.LoginState) {
	ft := faulttoken.New(nil)
	cfg := hsm.TokenConfig(tok, 1)
	cfg.Intercept = ft.Intercept
	cfg.LoginBackoff = time.Second
	c, err := hsm.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	id := newKey(t, c)
	if got := c.LoginState(); got != hsm.LoginOK {
		t.Fatalf("after opening: %q, want ok", got)
	}
	fault(ft)
	ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("encrypt during the fault: %v, want ErrUnavailable", err)
	}
	if got := c.LoginState(); got != want {
		t.Fatalf("during the fault: %q, want %q", got, want)
	}
	clear(ft)
	time.Sleep(cfg.LoginBackoff) // bubble time: the backoff ends
	if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
		t.Fatalf("encrypt after the fault: %v", err)
	}
	if got := c.LoginState(); got != hsm.LoginOK {
		t.Fatalf("after the fault: %q, want ok", got)
	}
}
