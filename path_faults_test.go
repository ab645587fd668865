package hsmkms

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// faultyMount is a mount configured on testToken through a fault token.
func faultyMount(t *testing.T) (*testMount, *faulttoken.Token) {
	t.Helper()
	m := newMount(t)
	ft := faulttoken.New(nil)
	m.b.intercept = ft.Intercept
	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN,
	})
	return m, ft
}

// mustStatus asserts the HTTP status a request would be answered with.
func (m *testMount) mustStatus(op logical.Operation, path string, data map[string]interface{}, want int) {
	m.t.Helper()
	resp, err := m.do(op, path, data)
	got := http.StatusOK
	var coded logical.HTTPCodedError
	switch {
	case errors.As(err, &coded):
		got = coded.Code()
	case errors.Is(err, logical.ErrInvalidRequest):
		got = http.StatusBadRequest
	case err != nil:
		got = http.StatusInternalServerError
	case resp != nil && resp.Data[logical.HTTPStatusCode] != nil:
		got = resp.Data[logical.HTTPStatusCode].(int)
	case resp != nil && resp.IsError():
		got = http.StatusBadRequest
	}
	if got != want {
		m.t.Fatalf("%s %s: status %d (err %v, resp %v), want %d", op, path, got, err, respError(resp), want)
	}
}

// While the token fails, every operation answers 503 (never 500, never a
// 400 that calls good data bad), and the mount heals by itself after. In a
// testing/synctest bubble: each request of the outage waits for the
// module's next recovery attempt, which takes bubble time, not real time.
func TestDeviceFailureIs503Everywhere(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, ft := faultyMount(t)
		m.mustOK(logical.UpdateOperation, "keys/dev-aes", nil)
		m.mustOK(logical.UpdateOperation, "keys/dev-ec", map[string]interface{}{"type": "ecdsa-p256"})
		m.mustOK(logical.UpdateOperation, "keys/dev-mac", map[string]interface{}{"type": "hmac"})
		ct := m.mustOK(logical.UpdateOperation, "encrypt/dev-aes", map[string]interface{}{"plaintext": "aGVsbG8="}).Data["ciphertext"]
		item := map[string]interface{}{"plaintext": "aGVsbG8="}

		ft.SetAbsent(true)
		for _, r := range []struct {
			path string
			data map[string]interface{}
		}{
			{"encrypt/dev-aes", map[string]interface{}{"plaintext": "aGVsbG8="}},
			{"encrypt/dev-aes", map[string]interface{}{"batch_input": []interface{}{item, item}}},
			{"decrypt/dev-aes", map[string]interface{}{"ciphertext": ct}},
			{"decrypt/dev-aes", map[string]interface{}{"batch_input": []interface{}{map[string]interface{}{"ciphertext": ct}}}},
			{"rewrap/dev-aes", map[string]interface{}{"ciphertext": ct}},
			{"sign/dev-ec", map[string]interface{}{"input": "aGVsbG8="}},
			{"hmac/dev-mac", map[string]interface{}{"input": "aGVsbG8="}},
			{"datakey/wrapped/dev-aes", nil},
			{"random/16", nil},
			{"keys/dev-aes/rotate", nil},
			{"keys/dev-new", nil},
		} {
			m.mustStatus(logical.UpdateOperation, r.path, r.data, http.StatusServiceUnavailable)
		}
		ft.SetAbsent(false)
		back := time.Now()
		// Within the module's recovery backoff a request waits for the next
		// attempt rather than fail (hsm's backoff_test.go times it), so the
		// first request after the token's return is answered.
		resp, err := m.do(logical.UpdateOperation, "decrypt/dev-aes", map[string]interface{}{"ciphertext": ct})
		if err != nil || resp == nil || resp.IsError() {
			t.Fatalf("the first request after the token came back: %v %v", err, respError(resp))
		}
		if resp.Data["plaintext"] != "aGVsbG8=" {
			t.Fatalf("decrypt after the token came back: %v", resp.Data)
		}
		if healed := time.Since(back); healed > 500*time.Millisecond {
			t.Errorf("the mount healed %v after the token came back, want within the module's recovery backoff, 500ms", healed)
		}
	})
}

// The token's PIN is changed; the mount's operator writes the new PIN and
// the mount works on with it, without a plugin reload. Another mount
// sharing the login with the old PIN is refused, named.
func TestNewPINAfterTheTokensPINChanged(t *testing.T) {
	tok, err := tokentest.NewSoftHSM(testToken.Dir, "pin-change", "1111")
	if err != nil {
		t.Fatal(err)
	}
	m := newMount(t)
	conf := map[string]interface{}{"library": tok.Library, "token_label": tok.Label, "pin": "1111"}
	m.mustOK(logical.UpdateOperation, "config", conf)
	m.mustOK(logical.UpdateOperation, "encrypt/default", map[string]interface{}{"plaintext": "aGVsbG8="})

	cmd := exec.Command("pkcs11-tool", "--module", tok.Library, "--token-label", tok.Label,
		"--login", "--pin", "1111", "--change-pin", "--new-pin", "2222")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("changing the token's PIN: %v: %s", err, out)
	}

	conf["pin"] = "2222"
	m.mustOK(logical.UpdateOperation, "config", conf)
	m.mustOK(logical.UpdateOperation, "encrypt/default", map[string]interface{}{"plaintext": "aGVsbG8="})

	other := newMount(t)
	other.b.mountPoint.Store("other/")
	m.b.mountPoint.Store("kms/")
	conf["pin"] = "1111"
	resp, err := other.do(logical.UpdateOperation, "config", conf)
	if !errors.Is(err, logical.ErrInvalidRequest) || !strings.Contains(respError(resp), "PIN") {
		t.Fatalf("a second mount with the old PIN: %v %v", err, respError(resp))
	}
}

// While a stored PIN is refused, requests are 503s that name the cause,
// and the token sees one login attempt, not one per request.
func TestRefusedPINAnswers503WithOneLogin(t *testing.T) {
	m, ft := faultyMount(t)
	m.mustOK(logical.UpdateOperation, "keys/pin-aes", nil)
	logins := ft.Calls("C_Login")
	ft.SetFailing("C_Login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
	ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	for i := 0; i < 20; i++ {
		_, err := m.do(logical.UpdateOperation, "encrypt/pin-aes", map[string]interface{}{"plaintext": "aGVsbG8="})
		var coded logical.HTTPCodedError
		if !errors.As(err, &coded) || coded.Code() != http.StatusServiceUnavailable || !strings.Contains(err.Error(), "PIN") {
			t.Fatalf("request %d: %v, want a 503 naming the PIN", i, err)
		}
	}
	if n := ft.Calls("C_Login") - logins; n != 1 {
		t.Fatalf("20 requests made %d C_Login calls, want 1", n)
	}
}

// raceRounds config changes race the readers in make test (each is a
// module login and GCM self-test); HSMKMS_RACE_ROUNDS=1000 for the long run.
func raceRounds() int {
	if n, err := strconv.Atoi(os.Getenv("HSMKMS_RACE_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 200
}

// GET config and GET status race DELETE config and config writes: no
// call may reach a module that a Close finalised (that was a SIGSEGV,
// taking every mount of the process down). Each change sets the readers
// off on a few reads that run while it does; readers that spun without a
// bound took two cores for as long as the changes lasted, and the changes
// lasted longer the busier the machine was.
func TestConfigAndStatusReadsRacingConfigChanges(t *testing.T) {
	const readsPerChange = 8
	m := configuredMount(t, nil)
	conf := map[string]interface{}{"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN}
	var started atomic.Pointer[chan struct{}]
	first := make(chan struct{})
	started.Store(&first)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := []string{"config", "status"}[r%2]
			for {
				change := started.Load()
				select {
				case <-stop:
					return
				case <-*change:
				}
				for range readsPerChange {
					_, _ = m.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.ReadOperation, Path: path, Storage: m.storage, MountPoint: "kms/"})
				}
			}
		}()
	}
	for i := 0; i < raceRounds(); i++ {
		next := make(chan struct{})
		close(*started.Swap(&next))
		if i%2 == 0 {
			m.mustOK(logical.DeleteOperation, "config", nil)
		} else {
			m.mustOK(logical.UpdateOperation, "config", conf)
		}
	}
	close(stop)
	wg.Wait()
	m.mustOK(logical.UpdateOperation, "config", conf)
	if decrypt(t, m, "default", encrypt(t, m, "default", "alive", nil), nil) != "alive" {
		t.Fatal("the mount does not work after the race")
	}
}

// Re-initialisations, device errors and PIN refusals reach the log as
// key/value pairs, and the PIN never does.
func TestRecoveryAndPINFailuresAreLoggedWithoutThePIN(t *testing.T) {
	var logged bytes.Buffer
	var logMu sync.Mutex
	allowed, err := libraryAllowList()
	if err != nil {
		t.Fatal(err)
	}
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: lockedWriter{&logMu, &logged}, Level: hclog.Info})
	b := newBackend(allowed)
	ft := faulttoken.New(nil)
	b.intercept = ft.Intercept
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.clean(context.Background()) })
	m := &testMount{t: t, b: b, storage: conf.StorageView}
	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN})
	m.mustOK(logical.UpdateOperation, "keys/logged", nil)

	ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	m.mustOK(logical.UpdateOperation, "encrypt/logged", map[string]interface{}{"plaintext": "aGVsbG8="})
	ft.SetFailing("C_Login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
	ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	_, _ = m.do(logical.UpdateOperation, "encrypt/logged", map[string]interface{}{"plaintext": "aGVsbG8="})

	logMu.Lock()
	out := logged.String()
	logMu.Unlock()
	for _, want := range []string{"HSM device-level error", "re-initialised the PKCS#11 module", "refused the PIN"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, testToken.PIN) {
		t.Fatalf("the log shows the PIN:\n%s", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A request racing an outage can find the key's object gone before the
// module is re-initialised: that is the HSM's state, a 503, never a 500.
func TestKeyObjectNotFoundIs503(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/vanishing", nil)
	ct := m.mustOK(logical.UpdateOperation, "encrypt/vanishing", map[string]interface{}{"plaintext": "aGVsbG8="}).Data["ciphertext"]
	client, _, err := m.b.hsmClient(context.Background(), m.storage)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.DestroyObjects(context.Background(), m.objectID("vanishing", 1), anyLabel); err != nil {
		t.Fatal(err)
	}
	m.mustStatus(logical.UpdateOperation, "decrypt/vanishing", map[string]interface{}{"ciphertext": ct}, http.StatusServiceUnavailable)
	m.mustStatus(logical.UpdateOperation, "encrypt/vanishing", map[string]interface{}{"batch_input": []interface{}{map[string]interface{}{"plaintext": "aGVsbG8="}}}, http.StatusServiceUnavailable)
}
