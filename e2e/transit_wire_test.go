package e2e

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// Issue 12's wire items, each as a Transit client sees it over HTTP. Every
// subtest names the behaviour of the code before commit 0189702 (or
// 63bca3c for upsert, update capability and refused flags) that it catches.
func TestTransitWire(t *testing.T) {
	eachToken(t, testTransitWire)
}

func testTransitWire(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	// Transit's wire, Transit's delete: a deleted key is gone at once
	// (deletion_window=0s), as a Transit client expects; the scheduled
	// deletion has its own tests (deletion_test.go).
	v.configure("kms", "deletion_window=0s")
	v.cli("write", "kms/keys/rsa", "type=rsa-2048")
	v.cli("write", "kms/keys/ec", "type=ecdsa-p256")
	v.cli("write", "kms/keys/aes", "type=aes256-gcm96")

	// Before: each asymmetric version carried a nested public_jwk map, and
	// the Terraform provider's decode into map[string]string failed with
	// "expected type 'string', got unconvertible type 'map'"; there was no
	// public_jwks.
	t.Run("keys map values are strings", func(t *testing.T) {
		v := v.forTest(t)
		for key, wantName := range map[string]string{"rsa": "rsa-2048", "ec": "P-256"} {
			body := v.rootBody("GET", "kms/keys/"+key, nil)
			var read struct {
				Data struct {
					Keys       map[string]map[string]string `json:"keys"`
					PublicJWKs map[string]json.RawMessage   `json:"public_jwks"`
				} `json:"data"`
			}
			if err := json.Unmarshal(body, &read); err != nil {
				t.Fatalf("%s: keys is not a map of string maps, as Transit clients decode it: %v\n%s", key, err, body)
			}
			ver := read.Data.Keys["1"]
			if len(read.Data.Keys) != 1 || ver == nil {
				t.Fatalf("%s: keys %v, want version 1 only", key, read.Data.Keys)
			}
			if ver["name"] != wantName {
				t.Errorf("%s: keys.1.name %q, want %q", key, ver["name"], wantName)
			}
			if _, err := time.Parse(time.RFC3339Nano, ver["creation_time"]); err != nil {
				t.Errorf("%s: keys.1.creation_time %q: %v", key, ver["creation_time"], err)
			}
			block, _ := pem.Decode([]byte(ver["public_key"]))
			if block == nil || block.Type != "PUBLIC KEY" {
				t.Fatalf("%s: keys.1.public_key is not a PEM public key: %q", key, ver["public_key"])
			}
			pub, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				t.Fatalf("%s: public_key: %v", key, err)
			}
			raw, ok := read.Data.PublicJWKs["1"]
			if !ok {
				t.Fatalf("%s: no public_jwks.1 in %s", key, body)
			}
			var jwk jose.JSONWebKey
			if err := jwk.UnmarshalJSON(raw); err != nil {
				t.Fatalf("%s: public_jwks.1: %v: %s", key, err, raw)
			}
			if !jwk.IsPublic() || jwk.KeyID != key+":v1" {
				t.Errorf("%s: public_jwks.1 kid %q public %v", key, jwk.KeyID, jwk.IsPublic())
			}
			switch p := pub.(type) {
			case *rsa.PublicKey:
				if !p.Equal(jwk.Key) {
					t.Errorf("%s: the JWK is not the PEM's key", key)
				}
			case *ecdsa.PublicKey:
				if !p.Equal(jwk.Key) {
					t.Errorf("%s: the JWK is not the PEM's key", key)
				}
			default:
				t.Errorf("%s: public key %T", key, pub)
			}
		}
		// A symmetric key's versions are numbers (creation time), as in
		// Transit.
		var sym struct {
			Data struct {
				Keys map[string]int64 `json:"keys"`
			} `json:"data"`
		}
		body := v.rootBody("GET", "kms/keys/aes", nil)
		if err := json.Unmarshal(body, &sym); err != nil || sym.Data.Keys["1"] < time.Now().Add(-time.Hour).Unix() {
			t.Fatalf("aes keys map: %v %v\n%s", err, sym.Data.Keys, body)
		}
	})

	// Before: rsa-2048 defaulted to sign,verify and encrypt was a 400.
	t.Run("rsa-2048 encrypts", func(t *testing.T) {
		v := v.forTest(t)
		data := v.rootOK("GET", "kms/keys/rsa", nil)
		if got := fmt.Sprint(data["operations"]); got != "[sign verify encrypt decrypt]" {
			t.Errorf("operations %s, want Transit's [sign verify encrypt decrypt]", got)
		}
		ct := v.rootOK("POST", "kms/encrypt/rsa", map[string]interface{}{"plaintext": b64("to rsa")})["ciphertext"].(string)
		if !strings.HasPrefix(ct, "vault:v1:") {
			t.Fatalf("ciphertext %q", ct)
		}
		if pt := v.rootOK("POST", "kms/decrypt/rsa", map[string]interface{}{"ciphertext": ct})["plaintext"]; pt != b64("to rsa") {
			t.Fatalf("decrypt: %v", pt)
		}
		// The seeds' JWK form keeps the seeds' defaults.
		v.cli("write", "kms/keys/seeds-rsa", "type=RSA", "size=2048")
		if got := fmt.Sprint(v.rootOK("GET", "kms/keys/seeds-rsa", nil)["operations"]); got != "[sign verify]" {
			t.Errorf("type=RSA operations %s, want [sign verify]", got)
		}
	})

	// Before: an active key was never deleted ("deactivate it first"),
	// which broke `terraform destroy`.
	t.Run("delete with deletion_allowed", func(t *testing.T) {
		v := v.forTest(t)
		v.cli("write", "kms/keys/del", "type=aes256-gcm96")
		if status, resp := v.raw("DELETE", "kms/keys/del", v.token, nil); status != http.StatusBadRequest {
			t.Fatalf("delete of an active key without deletion_allowed: %d %v, want 400", status, resp)
		}
		v.rootOK("POST", "kms/keys/del/config", map[string]interface{}{"deletion_allowed": true})
		if status, resp := v.raw("DELETE", "kms/keys/del", v.token, nil); status != http.StatusNoContent && status != http.StatusOK {
			t.Fatalf("delete with deletion_allowed=true: %d %v", status, resp)
		}
		if status, resp := v.raw("GET", "kms/keys/del", v.token, nil); status != http.StatusNotFound {
			t.Fatalf("read after delete: %d %v, want 404", status, resp)
		}
		// The default key never goes, whatever its flags.
		v.rootOK("POST", "kms/keys/default/config", map[string]interface{}{"deletion_allowed": true})
		if status, resp := v.raw("DELETE", "kms/keys/default", v.token, nil); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp), "default key") {
			t.Fatalf("delete of the default key: %d %v, want 400", status, resp)
		}
		v.rootOK("GET", "kms/keys/default", nil)
	})

	// Before: a rewrap batch with a failed item was a 400.
	t.Run("batch rewrap answers 200 with item errors", func(t *testing.T) {
		v := v.forTest(t)
		ct := v.rootOK("POST", "kms/encrypt/aes", map[string]interface{}{"plaintext": b64("rewrap me")})["ciphertext"]
		v.cli("write", "-f", "kms/keys/aes/rotate")
		status, resp := v.raw("POST", "kms/rewrap/aes", v.token, map[string]interface{}{"batch_input": []interface{}{
			map[string]interface{}{"ciphertext": ct, "reference": "good"},
			map[string]interface{}{"ciphertext": "vault:v1:AAAA", "reference": "bad"},
		}})
		if status != http.StatusOK {
			t.Fatalf("rewrap batch with one bad item: %d %v, want 200", status, resp)
		}
		items := wireBatchItems(t, resp)
		if len(items) != 2 {
			t.Fatalf("batch_results %v", items)
		}
		good, bad := items[0], items[1]
		if good["reference"] != "good" || good["error"] != nil || !strings.HasPrefix(fmt.Sprint(good["ciphertext"]), "vault:v2:") {
			t.Errorf("good item %v, want a vault:v2: ciphertext", good)
		}
		if bad["reference"] != "bad" || fmt.Sprint(bad["error"]) == "" || bad["error"] == nil || bad["ciphertext"] != nil {
			t.Errorf("bad item %v, want an error and no ciphertext", bad)
		}
	})

	// Before: empty plaintext was a 400 ("missing or empty"), and a batch
	// decrypt item dropped an empty plaintext (omitempty).
	t.Run("empty plaintext", func(t *testing.T) {
		v := v.forTest(t)
		for _, key := range []string{"aes", "rsa"} {
			ct := v.rootOK("POST", "kms/encrypt/"+key, map[string]interface{}{"plaintext": ""})["ciphertext"].(string)
			if pt, ok := v.rootOK("POST", "kms/decrypt/"+key, map[string]interface{}{"ciphertext": ct})["plaintext"]; !ok || pt != "" {
				t.Errorf("%s: decrypt of an empty plaintext: %v %v", key, pt, ok)
			}
			other := v.rootOK("POST", "kms/encrypt/"+key, map[string]interface{}{"plaintext": b64("x")})["ciphertext"]
			status, resp := v.raw("POST", "kms/decrypt/"+key, v.token, map[string]interface{}{"batch_input": []interface{}{
				map[string]interface{}{"ciphertext": ct, "reference": "empty"},
				map[string]interface{}{"ciphertext": other},
			}})
			if status != http.StatusOK {
				t.Fatalf("%s: batch decrypt: %d %v", key, status, resp)
			}
			items := wireBatchItems(t, resp)
			if pt, ok := items[0]["plaintext"]; !ok || pt != "" || items[0]["reference"] != "empty" {
				t.Errorf("%s: item %v, want plaintext \"\" and reference \"empty\"", key, items[0])
			}
			if ref, ok := items[1]["reference"]; !ok || ref != "" || items[1]["plaintext"] != b64("x") {
				t.Errorf("%s: item %v, want reference \"\" and the plaintext", key, items[1])
			}
			// A missing plaintext is still the caller's mistake.
			if status, resp := v.raw("POST", "kms/encrypt/"+key, v.token, map[string]interface{}{}); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp), "plaintext") {
				t.Errorf("%s: encrypt without plaintext: %d %v, want 400 naming plaintext", key, status, resp)
			}
		}
	})

	// Before: re-creating with other parameters was a 400.
	t.Run("re-create with other parameters", func(t *testing.T) {
		v := v.forTest(t)
		v.cli("write", "kms/keys/again", "type=aes256-gcm96")
		ct := v.rootOK("POST", "kms/encrypt/again", map[string]interface{}{"plaintext": b64("kept")})["ciphertext"]
		status, resp := v.raw("POST", "kms/keys/again", v.token, map[string]interface{}{"type": "aes128-gcm96"})
		if status != http.StatusOK {
			t.Fatalf("re-create as aes128-gcm96: %d %v, want 200", status, resp)
		}
		if w := fmt.Sprint(resp["warnings"]); !strings.Contains(w, "already exists") {
			t.Errorf("warnings %s, want one saying the key exists", w)
		}
		data := v.rootOK("GET", "kms/keys/again", nil)
		if data["type"] != "aes256-gcm96" || fmt.Sprint(data["latest_version"]) != "1" {
			t.Errorf("key changed: type %v latest_version %v", data["type"], data["latest_version"])
		}
		if pt := v.rootOK("POST", "kms/decrypt/again", map[string]interface{}{"ciphertext": ct})["plaintext"]; pt != b64("kept") {
			t.Errorf("decrypt after re-create: %v", pt)
		}
		// The same parameters: no warning.
		if _, resp := v.raw("POST", "kms/keys/again", v.token, map[string]interface{}{"type": "aes256-gcm96"}); resp["warnings"] != nil {
			t.Errorf("same parameters warned: %v", resp["warnings"])
		}
	})

	// Before: min_decryption_version=0 was a 400 (must be 1..latest).
	t.Run("min_decryption_version 0 is 1", func(t *testing.T) {
		v := v.forTest(t)
		v.cli("write", "kms/keys/mdv", "type=aes256-gcm96")
		v.cli("write", "-f", "kms/keys/mdv/rotate")
		v.rootOK("POST", "kms/keys/mdv/config", map[string]interface{}{"min_decryption_version": 2})
		status, resp := v.raw("POST", "kms/keys/mdv/config", v.token, map[string]interface{}{"min_decryption_version": 0})
		if status != http.StatusOK {
			t.Fatalf("min_decryption_version=0: %d %v, want 200", status, resp)
		}
		if w := fmt.Sprint(resp["warnings"]); !strings.Contains(w, "min_decryption_version") {
			t.Errorf("warnings %s, want one naming min_decryption_version", w)
		}
		if got := fmt.Sprint(v.rootOK("GET", "kms/keys/mdv", nil)["min_decryption_version"]); got != "1" {
			t.Errorf("min_decryption_version read back %s, want 1", got)
		}
	})

	// Before (63bca3c): these fields were not in the schema, so Vault
	// ignored them with a warning and answered 200 with a key that is not
	// what the caller asked for.
	t.Run("flags that cannot be honoured are refused", func(t *testing.T) {
		v := v.forTest(t)
		for flag, reason := range map[string]string{
			"exportable":             "never leave the HSM",
			"allow_plaintext_backup": "never leave the HSM",
			"derived":                "derivation",
			"convergent_encryption":  "derivation",
		} {
			name := "flag-" + strings.ReplaceAll(flag, "_", "-")
			status, resp := v.raw("POST", "kms/keys/"+name, v.token, map[string]interface{}{flag: true})
			if msg := fmt.Sprint(resp["errors"]); status != http.StatusBadRequest || !strings.Contains(msg, flag) || !strings.Contains(msg, reason) {
				t.Errorf("keys/%s %s=true: %d %v, want 400 naming %s and %q", name, flag, status, resp, flag, reason)
			}
			if status, _ := v.raw("GET", "kms/keys/"+name, v.token, nil); status != http.StatusNotFound {
				t.Errorf("a refused %s=true made key %s (%d)", flag, name, status)
			}
			if status, resp := v.raw("POST", "kms/keys/"+name, v.token, map[string]interface{}{flag: false}); status != http.StatusOK || resp["warnings"] != nil {
				t.Errorf("keys/%s %s=false: %d %v, want 200 without warnings", name, flag, status, resp)
			}
		}
		for _, flag := range []string{"exportable", "allow_plaintext_backup"} {
			status, resp := v.raw("POST", "kms/keys/aes/config", v.token, map[string]interface{}{flag: true})
			if status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp["errors"]), flag) {
				t.Errorf("keys/aes/config %s=true: %d %v, want 400 naming %s", flag, status, resp, flag)
			}
		}
	})

	// Before (63bca3c): encrypt had no existence check, so a missing key
	// was the plugin's 400 for every token, whatever its capabilities, and
	// there was no config/keys.
	t.Run("upsert with real tokens", func(t *testing.T) {
		v := v.forTest(t)
		createToken := v.tokenWithPolicy("encrypt-create", `path "kms/encrypt/*" { capabilities = ["create", "update"] }`)
		updateToken := v.tokenWithPolicy("encrypt-update", `path "kms/encrypt/*" { capabilities = ["update"] }`)

		// Each check goes on after a failure, so that a run shows every
		// way the capability rules differ from Transit's.
		status, resp := v.raw("POST", "kms/encrypt/upserted", createToken, map[string]interface{}{"plaintext": b64("first")})
		if status != http.StatusOK {
			t.Errorf("encrypt on a missing key with create capability: %d %v, want 200", status, resp)
			v.cli("write", "kms/keys/upserted", "type=aes256-gcm96")
		} else {
			ct := resp["data"].(map[string]interface{})["ciphertext"]
			data := v.rootOK("GET", "kms/keys/upserted", nil)
			if data["type"] != "aes256-gcm96" {
				t.Errorf("upserted key type %v, want aes256-gcm96", data["type"])
			}
			if pt := v.rootOK("POST", "kms/decrypt/upserted", map[string]interface{}{"ciphertext": ct})["plaintext"]; pt != b64("first") {
				t.Errorf("decrypt of the upsert's ciphertext: %v", pt)
			}
		}

		if status, resp := v.raw("POST", "kms/encrypt/not-made", updateToken, map[string]interface{}{"plaintext": b64("x")}); status != http.StatusForbidden {
			t.Errorf("encrypt on a missing key with update only: %d %v, want 403", status, resp)
		}
		if status, _ := v.raw("GET", "kms/keys/not-made", v.token, nil); status != http.StatusNotFound {
			t.Errorf("a 403 upsert made the key (%d)", status)
		}
		// The update-only token still encrypts with a key that exists.
		if status, resp := v.raw("POST", "kms/encrypt/upserted", updateToken, map[string]interface{}{"plaintext": b64("x")}); status != http.StatusOK {
			t.Errorf("encrypt on an existing key with update only: %d %v, want 200", status, resp)
		}

		if status, resp := v.raw("POST", "kms/config/keys", v.token, map[string]interface{}{"disable_upsert": true}); status != http.StatusOK && status != http.StatusNoContent {
			t.Fatalf("config/keys disable_upsert=true: %d %v", status, resp)
		}
		if got := v.rootOK("GET", "kms/config/keys", nil)["disable_upsert"]; got != true {
			t.Errorf("config/keys disable_upsert reads %v", got)
		}
		status, resp = v.raw("POST", "kms/encrypt/refused", createToken, map[string]interface{}{"plaintext": b64("x")})
		if status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp["errors"]), "upsert") {
			t.Errorf("encrypt on a missing key with upsert disabled: %d %v, want 400 naming upsert", status, resp)
		}
		if status, _ := v.raw("GET", "kms/keys/refused", v.token, nil); status != http.StatusNotFound {
			t.Errorf("a refused upsert made the key (%d)", status)
		}
		if status, resp := v.raw("POST", "kms/config/keys", v.token, map[string]interface{}{"disable_upsert": false}); status != http.StatusOK && status != http.StatusNoContent {
			t.Errorf("config/keys disable_upsert=false: %d %v", status, resp)
		}
	})

	// Before (63bca3c): keys/:name had an existence check, so creating a
	// key was a create operation and a Transit-style policy with update
	// only got a 403.
	t.Run("create a key with update capability", func(t *testing.T) {
		v := v.forTest(t)
		updateToken := v.tokenWithPolicy("keys-update", `path "kms/keys/*" { capabilities = ["update"] }`)
		status, resp := v.raw("POST", "kms/keys/new", updateToken, map[string]interface{}{"type": "aes256-gcm96"})
		if status != http.StatusOK {
			t.Fatalf("POST kms/keys/new with update only: %d %v, want 200", status, resp)
		}
		if data := v.rootOK("GET", "kms/keys/new", nil); data["type"] != "aes256-gcm96" {
			t.Errorf("created key: %v", data)
		}
		// Update is not read: the policy still confines the token.
		if status, _ := v.raw("GET", "kms/keys/new", updateToken, nil); status != http.StatusForbidden {
			t.Errorf("read with update only: %d, want 403", status)
		}
	})
}

// rootBody sends a request with the root token and returns the undecoded
// body of a 200, for decoding as a particular client does.
func (v *vaultServer) rootBody(method, path string, body io.Reader) []byte {
	v.t.Helper()
	req, err := http.NewRequest(method, v.addr+"/v1/"+path, body)
	if err != nil {
		v.t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", v.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		v.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return b
}

// rootOK sends a request with the root token, fails the test unless it is a
// 200, and returns its data.
func (v *vaultServer) rootOK(method, path string, body map[string]interface{}) map[string]interface{} {
	v.t.Helper()
	var b interface{}
	if body != nil {
		b = body
	}
	status, resp := v.raw(method, path, v.token, b)
	if status != http.StatusOK {
		v.t.Fatalf("%s %s %v: %d %v", method, path, body, status, resp)
	}
	data, _ := resp["data"].(map[string]interface{})
	return data
}

// tokenWithPolicy writes a policy and returns a token that has only it.
func (v *vaultServer) tokenWithPolicy(name, policy string) string {
	v.t.Helper()
	file := filepath.Join(v.t.TempDir(), name+".hcl")
	writeFile(v.t, file, policy)
	v.cli("policy", "write", name, file)
	return strings.TrimSpace(v.cli("token", "create", "-policy="+name, "-field=token"))
}

func wireBatchItems(t *testing.T, resp map[string]interface{}) []map[string]interface{} {
	t.Helper()
	data, _ := resp["data"].(map[string]interface{})
	list, ok := data["batch_results"].([]interface{})
	if !ok {
		t.Fatalf("no batch_results in %v", resp)
	}
	items := make([]map[string]interface{}, len(list))
	for i, it := range list {
		items[i], _ = it.(map[string]interface{})
	}
	return items
}
