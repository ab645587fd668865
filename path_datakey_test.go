package hsmkms

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestDatakeyPlaintextAndWrapped(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	bind := map[string]interface{}{"encryption_context": map[string]string{"bucket": "b1"}}
	for _, bits := range []int{64, 256, 4096} {
		data := map[string]interface{}{"bits": bits, "encryption_context": map[string]string{"bucket": "b1"}}
		resp := m.mustOK(logical.UpdateOperation, "datakey/plaintext/k", data)
		plain, _ := base64.StdEncoding.DecodeString(resp.Data["plaintext"].(string))
		if len(plain) != bits/8 || resp.Data["key_version"] != 1 {
			t.Fatalf("bits=%d: %d bytes, %v", bits, len(plain), resp.Data)
		}
		ct := resp.Data["ciphertext"].(string)
		// datakey/decrypt and decrypt both unwrap it.
		got := m.mustOK(logical.UpdateOperation, "datakey/decrypt/k", map[string]interface{}{"ciphertext": ct, "encryption_context": map[string]string{"bucket": "b1"}})
		if got.Data["plaintext"] != resp.Data["plaintext"] {
			t.Fatalf("bits=%d: datakey/decrypt gave another key", bits)
		}
		if decrypt(t, m, "k", ct, bind) != string(plain) {
			t.Fatalf("bits=%d: decrypt gave another key", bits)
		}
		m.mustFail(logical.UpdateOperation, "datakey/decrypt/k", map[string]interface{}{"ciphertext": ct}, "could not be decrypted")
	}
	resp := m.mustOK(logical.UpdateOperation, "datakey/wrapped/k", nil)
	if _, ok := resp.Data["plaintext"]; ok {
		t.Fatal("wrapped data key returned its plaintext")
	}
	a := m.mustOK(logical.UpdateOperation, "datakey/plaintext/k", nil).Data["plaintext"]
	b := m.mustOK(logical.UpdateOperation, "datakey/plaintext/k", nil).Data["plaintext"]
	if a == b {
		t.Fatal("two data keys are equal")
	}
	for _, bits := range []int{63, 4104, 0, 56, 100} {
		m.mustFail(logical.UpdateOperation, "datakey/plaintext/k", map[string]interface{}{"bits": bits}, "bits must be between 64 and 4096 and a multiple of 8")
	}
}

func TestDatakeyNeedsWrapOperations(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/no-wrap", map[string]interface{}{"operations": "encrypt,decrypt"})
	m.mustOK(logical.UpdateOperation, "keys/wrap-only", map[string]interface{}{"operations": "wrapKey"})
	m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p256"})
	m.mustFail(logical.UpdateOperation, "datakey/wrapped/no-wrap", nil, "does not allow the wrapKey operation")
	ct := m.mustOK(logical.UpdateOperation, "datakey/wrapped/wrap-only", nil).Data["ciphertext"].(string)
	m.mustFail(logical.UpdateOperation, "datakey/decrypt/wrap-only", map[string]interface{}{"ciphertext": ct}, "does not allow the unwrapKey operation")
	m.mustFail(logical.UpdateOperation, "decrypt/wrap-only", map[string]interface{}{"ciphertext": ct}, "does not allow the decrypt operation")
	m.mustFail(logical.UpdateOperation, "encrypt/wrap-only", map[string]interface{}{"plaintext": b64("x")}, "does not allow the encrypt operation")
	m.mustFail(logical.UpdateOperation, "datakey/wrapped/ec", nil, "does not allow the wrapKey operation")
}

func TestHMACStablePerVersionAndVerifies(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/mac", map[string]interface{}{"type": "hmac"})
	m.mustOK(logical.UpdateOperation, "keys/short", map[string]interface{}{"type": "hmac", "size": 256})
	m.mustOK(logical.UpdateOperation, "keys/aes", nil)
	mac := func(path string, data map[string]interface{}) string {
		return m.mustOK(logical.UpdateOperation, path, data).Data["hmac"].(string)
	}
	in := map[string]interface{}{"input": b64("message")}
	h1 := mac("hmac/mac", in)
	if h1 != mac("hmac/mac", in) || !strings.HasPrefix(h1, "vault:v1:") {
		t.Fatalf("HMAC not stable: %s", h1)
	}
	if h1 == mac("hmac/mac", map[string]interface{}{"input": b64("other")}) {
		t.Fatal("HMAC of other input is equal")
	}
	for _, alg := range []string{"sha2-256", "sha2-384", "sha2-512"} {
		h := mac("hmac/mac/"+alg, in)
		raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(h, "vault:v1:"))
		if want := map[string]int{"sha2-256": 32, "sha2-384": 48, "sha2-512": 64}[alg]; len(raw) != want {
			t.Fatalf("%s: %d bytes", alg, len(raw))
		}
		ok := m.mustOK(logical.UpdateOperation, "verify/mac", map[string]interface{}{"input": b64("message"), "hmac": h, "algorithm": alg})
		if ok.Data["valid"] != true {
			t.Fatalf("%s does not verify", alg)
		}
	}
	m.mustOK(logical.UpdateOperation, "keys/mac/rotate", nil)
	h2 := mac("hmac/mac", in)
	if !strings.HasPrefix(h2, "vault:v2:") || h2[9:] == h1[9:] {
		t.Fatalf("after rotation: %s vs %s", h2, h1)
	}
	for _, h := range []string{h1, h2} {
		if m.mustOK(logical.UpdateOperation, "verify/mac", map[string]interface{}{"input": b64("message"), "hmac": h}).Data["valid"] != true {
			t.Fatalf("%s does not verify after rotation", h)
		}
		if m.mustOK(logical.UpdateOperation, "verify/mac", map[string]interface{}{"input": b64("messagE"), "hmac": h}).Data["valid"] != false {
			t.Fatal("verifies over other input")
		}
	}
	m.mustFail(logical.UpdateOperation, "hmac/short/sha2-512", in, "shorter than the output of sha2-512")
	m.mustOK(logical.UpdateOperation, "hmac/aes", in) // as Transit: AES keys have an HMAC companion
	m.mustFail(logical.UpdateOperation, "hmac/mac/md5", in, "sha2-256, sha2-384, sha2-512")
	m.mustFail(logical.UpdateOperation, "verify/mac", map[string]interface{}{"input": b64("x"), "hmac": "vault:v1"}, "hmac must have the form")
	resp := m.mustOK(logical.UpdateOperation, "hmac/mac", map[string]interface{}{"batch_input": []interface{}{
		map[string]interface{}{"input": b64("a"), "reference": "a"}, map[string]interface{}{"input": "!", "reference": "bad"},
	}})
	results := batchResultsOf(t, resp)
	if results[0].HMAC == "" || results[1].Error == "" || results[1].Reference != "bad" {
		t.Fatalf("batch: %+v", results)
	}
}

func TestRandomFromTheHSM(t *testing.T) {
	m := configuredMount(t, nil)
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		r := m.mustOK(logical.UpdateOperation, "random", nil).Data["random_bytes"].(string)
		raw, _ := base64.StdEncoding.DecodeString(r)
		if len(raw) != 32 || seen[r] {
			t.Fatalf("call %d: %d bytes, repeated=%v", i, len(raw), seen[r])
		}
		seen[r] = true
	}
	hexOut := m.mustOK(logical.UpdateOperation, "random/48", map[string]interface{}{"format": "hex"}).Data["random_bytes"].(string)
	if raw, err := hex.DecodeString(hexOut); err != nil || len(raw) != 48 {
		t.Fatalf("hex: %q %v", hexOut, err)
	}
	big := m.mustOK(logical.UpdateOperation, "random", map[string]interface{}{"bytes": 1 << 20}).Data["random_bytes"].(string)
	if raw, _ := base64.StdEncoding.DecodeString(big); len(raw) != 1<<20 {
		t.Fatalf("1 MiB: %d", len(raw))
	}
	m.mustFail(logical.UpdateOperation, "random", map[string]interface{}{"bytes": 1<<20 + 1}, "between 1 and 1048576")
	m.mustFail(logical.UpdateOperation, "random/0", nil, "between 1 and")
	m.mustFail(logical.UpdateOperation, "random/abc", nil, "whole number")
	m.mustFail(logical.UpdateOperation, "random", map[string]interface{}{"format": "base32"}, "base64, hex")
}

func TestStatusFiguresMoveAndHideSecrets(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	before := m.mustOK(logical.ReadOperation, "status", nil)
	ops := func(r *logical.Response) map[string]int64 { return r.Data["operations"].(map[string]int64) }
	pt := "status secret plaintext"
	ct := encrypt(t, m, "k", pt, nil)
	decrypt(t, m, "k", ct, nil)
	m.mustOK(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"batch_input": []interface{}{
		map[string]interface{}{"plaintext": b64("a")}, map[string]interface{}{"plaintext": b64("b")},
	}})
	after := m.mustOK(logical.ReadOperation, "status", nil)
	if ops(after)["encrypt"] != ops(before)["encrypt"]+3 || ops(after)["decrypt"] != ops(before)["decrypt"]+1 {
		t.Fatalf("counts: %v -> %v", ops(before), ops(after))
	}
	pool := after.Data["pool"].(map[string]interface{})
	if pool["size"] != 16 || pool["open"].(int) < 1 || after.Data["token"].(map[string]interface{})["label"] != testToken.Label {
		t.Fatalf("status: %v", after.Data)
	}
	whole := dump(after.Data)
	for _, secret := range []string{testToken.PIN, pt, b64(pt)} {
		if strings.Contains(whole, secret) {
			t.Fatalf("status shows %q", secret)
		}
	}
}

// A ciphertext is bound to its purpose: datakey/decrypt (the unwrapKey
// operation) refuses what encrypt made, even on a key whose decrypt
// operation is off, while decrypt still opens data keys and rewrap keeps a
// data key a data key.
func TestDatakeyDecryptRefusesOrdinaryCiphertexts(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/both", nil)
	m.mustOK(logical.UpdateOperation, "keys/enc-unwrap", map[string]interface{}{"operations": "encrypt,unwrapKey"})
	for _, name := range []string{"both", "enc-unwrap"} {
		ct := encrypt(t, m, name, "not a data key", nil)
		m.mustFail(logical.UpdateOperation, "datakey/decrypt/"+name, map[string]interface{}{"ciphertext": ct}, "could not be decrypted")
	}
	dk := m.mustOK(logical.UpdateOperation, "datakey/plaintext/both", nil).Data
	if decrypt(t, m, "both", dk["ciphertext"].(string), nil) != mustB64Decode(t, dk["plaintext"].(string)) {
		t.Fatal("decrypt does not open a data key")
	}
	m.mustOK(logical.UpdateOperation, "keys/both/rotate", nil)
	rewrapped := m.mustOK(logical.UpdateOperation, "rewrap/both", map[string]interface{}{"ciphertext": dk["ciphertext"]}).Data["ciphertext"].(string)
	got := m.mustOK(logical.UpdateOperation, "datakey/decrypt/both", map[string]interface{}{"ciphertext": rewrapped}).Data["plaintext"]
	if got != dk["plaintext"] {
		t.Fatal("a rewrapped data key no longer opens with datakey/decrypt")
	}
}

func mustB64Decode(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// While the HSM is unavailable, status says so in words any reader may
// see: no library path, no PKCS#11 detail.
func TestStatusWhileTheHSMIsAwayShowsNoPaths(t *testing.T) {
	m := newMount(t)
	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN,
	})
	// The stored config now names a token that is not there (as after the
	// HSM was re-initialised without it), and the client is reopened.
	conf, err := loadConfig(context.Background(), m.storage)
	if err != nil {
		t.Fatal(err)
	}
	conf.TokenLabel = "gone-token"
	if err := storeConfig(context.Background(), m.storage, conf); err != nil {
		t.Fatal(err)
	}
	m.b.resetClient()
	whole := dump(m.mustOK(logical.ReadOperation, "status", nil).Data)
	for _, leak := range []string{testToken.Library, "gone-token", "CKR_", "libsofthsm2"} {
		if strings.Contains(whole, leak) {
			t.Fatalf("status shows %q: %s", leak, whole)
		}
	}
	if !strings.Contains(whole, "unavailable") {
		t.Fatalf("status does not say the HSM is unavailable: %s", whole)
	}
}
