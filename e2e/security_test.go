package e2e

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

func TestPolicyLimitsATokenToOnePath(t *testing.T) {
	v := startDevVault(t, softHSM())
	v.configure("kms")
	v.cli("write", "kms/keys/app1", "type=aes256-gcm96")
	v.cli("write", "kms/keys/app2", "type=aes256-gcm96")
	policy := filepath.Join(t.TempDir(), "app1.hcl")
	writeFile(t, policy, `path "kms/encrypt/app1" { capabilities = ["update"] }`)
	v.cli("policy", "write", "app1-encrypt", policy)
	appToken := strings.TrimSpace(v.cli("token", "create", "-policy=app1-encrypt", "-field=token"))

	status, resp := v.raw("POST", "kms/encrypt/app1", appToken, map[string]interface{}{"plaintext": b64("ok")})
	if status != 200 {
		t.Fatalf("allowed encrypt: %d %v", status, resp)
	}
	ct := resp["data"].(map[string]interface{})["ciphertext"]
	for _, tc := range []struct {
		method, path string
		body         map[string]interface{}
	}{
		{"POST", "kms/decrypt/app1", map[string]interface{}{"ciphertext": ct}},
		{"POST", "kms/encrypt/app2", map[string]interface{}{"plaintext": b64("no")}},
		{"GET", "kms/config", nil},
		{"POST", "kms/config", map[string]interface{}{"pool_size": 2}},
		{"POST", "kms/keys/app3", nil},
	} {
		if status, resp := v.raw(tc.method, tc.path, appToken, tc.body); status != http.StatusForbidden {
			t.Errorf("%s %s with the app1 token: %d %v, want 403", tc.method, tc.path, status, resp)
		}
	}
}

func TestConfigRefusesLibrariesOutsideTheAllowList(t *testing.T) {
	v := startDevVault(t, softHSM())
	dir := t.TempDir()
	evil := filepath.Join(dir, "evil.so")
	writeFile(t, evil, "not a module")
	link := filepath.Join(dir, "softhsm-looking.so")
	if err := os.Symlink(evil, link); err != nil {
		t.Fatal(err)
	}
	for _, lib := range []string{"/tmp/evil.so", evil, "libsofthsm2.so", "../softhsm/libsofthsm2.so", link} {
		status, resp := v.raw("POST", "kms/config", v.token, map[string]interface{}{
			"library": lib, "token_label": softHSM().Label, "pin": softHSM().PIN,
		})
		if status != http.StatusBadRequest {
			t.Errorf("library %q: %d %v, want 400", lib, status, resp)
		}
	}
	if secret, err := v.client.Logical().Read("kms/config"); err != nil || secret != nil {
		t.Fatalf("a refused library left a config: %v %v", secret, err)
	}
}

// Opens the token from this process, as an auditor would, and checks the
// secret and private key objects the plugin made through Vault.
func TestKeyObjectsOnTheTokenAreSensitive(t *testing.T) {
	eachToken(t, testKeyObjectsOnTheTokenAreSensitive)
}

func testKeyObjectsOnTheTokenAreSensitive(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	type object struct {
		id         []byte
		class      uint
		secretAttr uint // the attribute that holds the key's secret
	}
	var objects []object
	for _, typ := range []string{"aes128-gcm96", "aes192-gcm96", "aes256-gcm96", "rsa-2048", "ecdsa-p256"} {
		name := "material-" + typ
		v.cli("write", "kms/keys/"+name, "type="+typ)
		secret, err := v.client.Logical().Read("kms/keys/" + name)
		if err != nil {
			t.Fatal(err)
		}
		hsmObjects := secret.Data["hsm_objects"].(map[string]interface{})
		id, err := hex.DecodeString(hsmObjects["1"].(map[string]interface{})["id"].(string))
		if err != nil || len(id) == 0 {
			t.Fatalf("object id of %s: %v", name, hsmObjects)
		}
		o := object{id: id, class: pkcs11.CKO_SECRET_KEY, secretAttr: pkcs11.CKA_VALUE}
		switch {
		case strings.HasPrefix(typ, "rsa"):
			o.class, o.secretAttr = pkcs11.CKO_PRIVATE_KEY, pkcs11.CKA_PRIVATE_EXPONENT
		case strings.HasPrefix(typ, "ecdsa"):
			o.class = pkcs11.CKO_PRIVATE_KEY
		}
		objects = append(objects, o)
	}

	p11, sh := openTokenSession(t, tok)
	for _, o := range objects {
		h := findObject(t, p11, sh, o.id, o.class)
		attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		})
		if err != nil {
			t.Fatal(err)
		}
		if attrs[0].Value[0] != 1 || attrs[1].Value[0] != 0 || attrs[2].Value[0] != 1 {
			t.Errorf("object %x: sensitive=%v extractable=%v token=%v", o.id, attrs[0].Value, attrs[1].Value, attrs[2].Value)
		}
		_, err = p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(o.secretAttr, nil)})
		if code, ok := err.(pkcs11.Error); !ok || code != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("object %x: reading its secret gave %v, want CKR_ATTRIBUTE_SENSITIVE", o.id, err)
		}
		if err == nil {
			t.Errorf("object %x: its secret value was readable", o.id)
		}
	}
}

func findSlot(t *testing.T, p11 *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := p11.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		info, err := p11.GetTokenInfo(s)
		if err == nil && strings.TrimRight(info.Label, " \x00") == label {
			return s
		}
	}
	t.Fatalf("no token %q", label)
	return 0
}

// Every caller mistake is a 4xx with a message, never a 5xx.
func TestBadInputGets4xxThroughVault(t *testing.T) {
	v := startDevVault(t, softHSM())
	v.configure("kms", "max_plaintext_bytes=4096")
	v.cli("write", "kms/keys/k", "type=aes256-gcm96")
	v.cli("write", "kms/keys/other", "type=aes256-gcm96")
	ct := strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms/encrypt/k", "plaintext="+b64("x")))
	otherCT := strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms/encrypt/other", "plaintext="+b64("x")))
	cases := []struct {
		name, path string
		body       map[string]interface{}
	}{
		{"invalid base64", "kms/encrypt/k", map[string]interface{}{"plaintext": "%%%"}},
		{"missing plaintext", "kms/encrypt/k", map[string]interface{}{"key_version": 1}},
		{"oversized plaintext", "kms/encrypt/k", map[string]interface{}{"plaintext": b64(strings.Repeat("z", 4097))}},
		{"unknown key", "kms/decrypt/missing", map[string]interface{}{"ciphertext": ct}},
		{"upsert of a type that cannot encrypt", "kms/encrypt/missing", map[string]interface{}{"plaintext": b64("x"), "type": "ecdsa-p256"}},
		{"name with ..", "kms/encrypt/..%2Fx", map[string]interface{}{"plaintext": b64("x")}},
		{"dot-dot path", "kms/encrypt/../x", map[string]interface{}{"plaintext": b64("x")}},
		{"empty name", "kms/encrypt/", map[string]interface{}{"plaintext": b64("x")}},
		{"1 KB name", "kms/encrypt/" + strings.Repeat("n", 1024), map[string]interface{}{"plaintext": b64("x")}},
		{"1 KB key create", "kms/keys/" + strings.Repeat("n", 1024), nil},
		{"vault:v0:", "kms/decrypt/k", map[string]interface{}{"ciphertext": "vault:v0:" + b64("x")}},
		{"vault:vX:", "kms/decrypt/k", map[string]interface{}{"ciphertext": "vault:vX:" + b64("x")}},
		{"truncated", "kms/decrypt/k", map[string]interface{}{"ciphertext": ct[:len(ct)-10]}},
		{"too short", "kms/decrypt/k", map[string]interface{}{"ciphertext": "vault:v1:" + b64("short")}},
		{"other key's", "kms/decrypt/k", map[string]interface{}{"ciphertext": otherCT}},
		{"not a ciphertext", "kms/decrypt/k", map[string]interface{}{"ciphertext": "hello"}},
		{"unknown type", "kms/keys/t", map[string]interface{}{"type": "aes512"}},
		{"batch not a list", "kms/encrypt/k", map[string]interface{}{"batch_input": "x"}},
	}
	for _, tc := range cases {
		status, resp := v.raw("POST", tc.path, v.token, tc.body)
		msg := fmt.Sprint(resp["errors"])
		t.Logf("%s: %d %s", tc.name, status, msg)
		if status < 400 || status >= 500 || len(msg) < 5 {
			t.Errorf("%s: status %d, body %v; want a 4xx with a message", tc.name, status, resp)
		}
	}
}
