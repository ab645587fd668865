package hsmkms

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// On a network HSM a request's latency is its number of PKCS#11 calls
// times the round trip. Through the handlers, on a warm key (its object
// handle cached, its public key checked, a session idle), each request
// makes only the calls of its operation: no lookup, no attribute read, no
// session probe, and none at all to verify a signature. Counts, not times.
func TestCallsPerRequestOnAWarmKey(t *testing.T) {
	for _, tok := range []string{"softhsm2", "nss"} {
		t.Run(tok, func(t *testing.T) { callsPerRequest(t, tok) })
	}
}

func callsPerRequest(t *testing.T, tok string) {
	m, ft := faultyMount(t)
	if tok == "nss" {
		m, ft = faultyNSSMount(t)
	}
	types := map[string]string{"aes": "aes256-gcm96", "rsa": "rsa-2048", "ec": "ecdsa-p256", "mac": "hmac", "ed": "ed25519"}
	if tok == "nss" {
		delete(types, "ed") // NSS softokn has no EdDSA
	}
	for name, typ := range types {
		m.mustOK(logical.UpdateOperation, "keys/"+name, map[string]interface{}{"type": typ})
	}
	ct := encrypt(t, m, "aes", "counted", nil)
	rsaCT := m.mustOK(logical.UpdateOperation, "encrypt/rsa", map[string]interface{}{"plaintext": b64("counted")}).Data["ciphertext"]
	sig := func(key string) interface{} {
		return m.mustOK(logical.UpdateOperation, "sign/"+key, map[string]interface{}{"input": b64("counted")}).Data["signature"]
	}
	rsaSig, ecSig := sig("rsa"), sig("ec")
	var edSig interface{}
	if _, ok := types["ed"]; ok {
		edSig = sig("ed")
	}
	mac := m.mustOK(logical.UpdateOperation, "hmac/mac", map[string]interface{}{"input": b64("counted")}).Data["hmac"]
	dk := m.mustOK(logical.UpdateOperation, "datakey/wrapped/aes", nil).Data["ciphertext"]

	one := func(op string) map[string]int { return map[string]int{"C_" + op + "Init": 1, "C_" + op: 1} }
	cases := []struct {
		name string
		path string
		data map[string]interface{}
		want map[string]int
	}{
		{"encrypt", "encrypt/aes", map[string]interface{}{"plaintext": b64("x")}, one("Encrypt")},
		{"decrypt", "decrypt/aes", map[string]interface{}{"ciphertext": ct}, one("Decrypt")},
		{"RSA encrypt", "encrypt/rsa", map[string]interface{}{"plaintext": b64("x")}, map[string]int{}},
		{"RSA decrypt", "decrypt/rsa", map[string]interface{}{"ciphertext": rsaCT}, one("Decrypt")},
		{"RSA sign", "sign/rsa", map[string]interface{}{"input": b64("x")}, one("Sign")},
		{"ECDSA sign", "sign/ec", map[string]interface{}{"input": b64("x")}, one("Sign")},
		{"Ed25519 sign", "sign/ed", map[string]interface{}{"input": b64("x")}, one("Sign")},
		{"RSA verify", "verify/rsa", map[string]interface{}{"input": b64("counted"), "signature": rsaSig}, map[string]int{}},
		{"ECDSA verify", "verify/ec", map[string]interface{}{"input": b64("counted"), "signature": ecSig}, map[string]int{}},
		{"Ed25519 verify", "verify/ed", map[string]interface{}{"input": b64("counted"), "signature": edSig}, map[string]int{}},
		{"HMAC", "hmac/mac", map[string]interface{}{"input": b64("x")}, one("Sign")},
		{"HMAC verify", "verify/mac", map[string]interface{}{"input": b64("counted"), "hmac": mac}, one("Sign")},
		{"HMAC with an AES key", "hmac/aes", map[string]interface{}{"input": b64("x")}, one("Sign")},
		{"data key", "datakey/plaintext/aes", nil, map[string]int{"C_GenerateRandom": 1, "C_EncryptInit": 1, "C_Encrypt": 1}},
		{"data key decrypt", "datakey/decrypt/aes", map[string]interface{}{"ciphertext": dk}, one("Decrypt")},
		{"random 32 bytes", "random/32", nil, map[string]int{"C_GenerateRandom": 1}},
		{"random 1 MiB", "random/1048576", nil, map[string]int{"C_GenerateRandom": 16}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasSuffix(tc.path, "/ed") && edSig == nil {
				t.Skipf("%s has no Ed25519 (CKM_EDDSA)", tok)
			}
			m.t = t
			m.mustOK(logical.UpdateOperation, tc.path, tc.data) // warm: handles cached, public key checked
			before := ft.Counts()
			m.mustOK(logical.UpdateOperation, tc.path, tc.data)
			got := faulttoken.Delta(before, ft.Counts())
			if !maps.Equal(got, tc.want) {
				t.Errorf("PKCS#11 calls %v, want %v", got, tc.want)
			}
			for name := range got {
				if strings.HasPrefix(name, "C_FindObjects") || name == "C_GetAttributeValue" || name == "C_GetSessionInfo" {
					t.Errorf("%s on the request path of a warm key", name)
				}
			}
		})
	}
}

// faultyNSSMount is a mount configured on the NSS softokn token through a
// fault token.
func faultyNSSMount(t *testing.T) (*testMount, *faulttoken.Token) {
	t.Helper()
	real, err := filepath.EvalSymlinks(nssToken.Library)
	if err != nil {
		t.Fatal(err)
	}
	m := newMountWithAllowList(t, []string{filepath.Dir(real), filepath.Dir(nssToken.Library)})
	ft := faulttoken.New(nil)
	m.b.intercept = ft.Intercept
	m.mustOK(logical.UpdateOperation, "config", nssConfig(nssToken.InitArgs))
	return m, ft
}

// A stored public key that is not the one of its object on the token is
// never used to call a signature valid.
func TestVerifyRefusesAStoredPublicKeyThatIsNotTheTokens(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	m.mustOK(logical.UpdateOperation, "keys/signer", map[string]interface{}{"type": "ecdsa-p256"})
	m.mustOK(logical.UpdateOperation, "keys/other", map[string]interface{}{"type": "ecdsa-p256"})
	ctx := context.Background()
	other, err := keyring.Load(ctx, m.storage, "other")
	if err != nil {
		t.Fatal(err)
	}
	sig := m.mustOK(logical.UpdateOperation, "sign/other", map[string]interface{}{"input": b64("forged")}).Data["signature"]
	// Storage says signer's public key is other's (a tampered or damaged
	// entry), so other's signatures would verify as signer's.
	m.b.ring.Lock()
	k, err := keyring.Load(ctx, m.storage, "signer")
	if err == nil {
		k.Versions[1].PublicKey = other.Versions[1].PublicKey
		err = m.b.ring.Save(ctx, m.storage, k)
	}
	m.b.ring.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := m.do(logical.UpdateOperation, "verify/signer", map[string]interface{}{"input": b64("forged"), "signature": sig})
	if err == nil && resp != nil && resp.Data["valid"] == true {
		t.Fatal("a signature by another key verified against signer's tampered public key")
	}
	if err == nil || !strings.Contains(err.Error(), "not the one of its object on the token") {
		t.Fatalf("verify with a tampered public key: err %v, resp %v", err, resp)
	}
}

// A network HSM closes idle sessions and drops connections: after every
// pooled session was closed behind the plugin's back, while 32 clients run
// through a 2 ms round trip, every request still succeeds (the session
// that answers SESSION_HANDLE_INVALID is replaced and the call retried
// once) and none is answered 5xx.
func TestSessionsClosedBehindThePluginsBackUnderLoad(t *testing.T) {
	m, ft := faultyMount(t)
	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{"pool_size": 16})
	ft.SetLatency(2 * time.Millisecond)
	const clients, rounds = 32, 12
	var wg sync.WaitGroup
	errs := make(chan error, clients*rounds)
	dropped := make(chan struct{})
	for c := range clients {
		wg.Go(func() {
			for r := range rounds {
				if r == rounds/2 && c == 0 {
					close(dropped)
				}
				if r == rounds/2 {
					<-dropped
				}
				pt := b64(fmt.Sprintf("client %d round %d", c, r))
				resp, err := m.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation,
					Path: "encrypt/default", Data: map[string]interface{}{"plaintext": pt}, Storage: m.storage})
				if status := httpStatus(resp, err); status != 200 {
					errs <- fmt.Errorf("client %d round %d: encrypt answered %d (%v, %v)", c, r, status, err, respError(resp))
					continue
				}
				ct := resp.Data["ciphertext"]
				resp, err = m.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation,
					Path: "decrypt/default", Data: map[string]interface{}{"ciphertext": ct}, Storage: m.storage})
				if status := httpStatus(resp, err); status != 200 || resp.Data["plaintext"] != pt {
					errs <- fmt.Errorf("client %d round %d: decrypt answered %d (%v, %v)", c, r, status, err, respError(resp))
				}
			}
		})
	}
	<-dropped
	n := ft.DropSessions()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n == 0 {
		t.Fatal("no session was dropped: the test does not test what it says")
	}
	t.Logf("%d sessions closed under %d clients", n, clients)
}
