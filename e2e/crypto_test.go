package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestKeysAndCryptoThroughVault(t *testing.T) {
	eachCryptoToken(t, testKeysAndCryptoThroughVault)
}

func testKeysAndCryptoThroughVault(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")

	// Keys of every AES size, made with the vault CLI in both type forms.
	v.cli("write", "kms/keys/k128", "type=aes128-gcm96")
	v.cli("write", "kms/keys/k192", "type=oct", "size=192")
	v.cli("write", "kms/keys/k256", "type=aes256-gcm96")
	list, err := v.client.Logical().List("kms/keys")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(list.Data["keys"]); got != "[default k128 k192 k256]" {
		t.Fatalf("keys: %s", got)
	}

	for _, key := range []string{"k128", "k192", "k256", "default"} {
		// Round trip with the Go api client.
		secret, err := v.client.Logical().Write("kms/encrypt/"+key, map[string]interface{}{"plaintext": b64("hello " + key)})
		if err != nil {
			t.Fatalf("encrypt %s: %v", key, err)
		}
		ct := secret.Data["ciphertext"].(string)
		if strings.Count(ct, ":") != 2 || !strings.HasPrefix(ct, "vault:v1:") {
			t.Fatalf("ciphertext %q", ct)
		}
		if n, ok := secret.Data["key_version"].(json.Number); !ok || n.String() != "1" {
			t.Fatalf("key_version is %T %v, want the JSON number 1", secret.Data["key_version"], secret.Data["key_version"])
		}
		secret, err = v.client.Logical().Write("kms/decrypt/"+key, map[string]interface{}{"ciphertext": ct})
		if err != nil {
			t.Fatalf("decrypt %s: %v", key, err)
		}
		if secret.Data["plaintext"] != b64("hello "+key) {
			t.Fatalf("decrypt %s: %v", key, secret.Data["plaintext"])
		}
		// And with the vault CLI, as a Transit user would.
		out := v.cli("write", "-field=plaintext", "kms/decrypt/"+key, "ciphertext="+ct)
		if strings.TrimSpace(out) != b64("hello "+key) {
			t.Fatalf("CLI decrypt %s: %q", key, out)
		}
	}

	// Every version field of a key read is a JSON number, as Transit's
	// clients expect.
	secret, err := v.client.Logical().Read("kms/keys/k256")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"latest_version", "min_available_version", "min_decryption_version", "min_encryption_version"} {
		if _, ok := secret.Data[f].(json.Number); !ok {
			t.Errorf("%s is %T, want a JSON number", f, secret.Data[f])
		}
	}
	if secret.Data["state"] != "active" || secret.Data["type"] != "aes256-gcm96" {
		t.Errorf("read: %v", secret.Data)
	}

	// path-help answers for the plugin's paths.
	if out := v.cli("path-help", "kms/encrypt/k256"); !strings.Contains(out, "associated_data") {
		t.Errorf("path-help encrypt lacks its fields: %s", out)
	}
}

func TestContextsAndTamperingThroughVault(t *testing.T) {
	eachCryptoToken(t, testContextsAndTamperingThroughVault)
}

func testContextsAndTamperingThroughVault(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/k", "type=aes256-gcm96")
	bound := map[string]interface{}{
		"plaintext":          b64("bound secret"),
		"context":            b64("tenant-7"),
		"associated_data":    b64("invoice 12"),
		"encryption_context": map[string]string{"app": "billing", "region": "eu"},
	}
	secret, err := v.client.Logical().Write("kms/encrypt/k", bound)
	if err != nil {
		t.Fatal(err)
	}
	ct := secret.Data["ciphertext"].(string)
	good := map[string]interface{}{
		"ciphertext":         ct,
		"context":            b64("tenant-7"),
		"associated_data":    b64("invoice 12"),
		"encryption_context": map[string]string{"region": "eu", "app": "billing"},
	}
	if secret, err := v.client.Logical().Write("kms/decrypt/k", good); err != nil || secret.Data["plaintext"] != b64("bound secret") {
		t.Fatalf("decrypt with the same bindings: %v %v", err, secret)
	}
	for name, change := range map[string]map[string]interface{}{
		"wrong context":            {"context": b64("tenant-8")},
		"wrong associated_data":    {"associated_data": b64("invoice 13")},
		"wrong encryption_context": {"encryption_context": map[string]string{"app": "billing", "region": "us"}},
	} {
		body := map[string]interface{}{}
		for k, val := range good {
			body[k] = val
		}
		for k, val := range change {
			body[k] = val
		}
		status, resp := v.raw("POST", "kms/decrypt/k", v.token, body)
		if status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp["errors"]), "could not be decrypted") {
			t.Errorf("%s: %d %v", name, status, resp)
		}
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(ct, "vault:v1:"))
	raw[len(raw)/2] ^= 1
	good["ciphertext"] = "vault:v1:" + base64.StdEncoding.EncodeToString(raw)
	if status, resp := v.raw("POST", "kms/decrypt/k", v.token, good); status != http.StatusBadRequest {
		t.Errorf("tampered ciphertext: %d %v", status, resp)
	}
}

func TestBatchOfHundredThroughVault(t *testing.T) {
	eachCryptoToken(t, testBatchOfHundredThroughVault)
}

func testBatchOfHundredThroughVault(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/k", "type=aes128-gcm96")
	const bad = 58
	items := make([]map[string]interface{}, 100)
	for i := range items {
		items[i] = map[string]interface{}{"plaintext": b64(fmt.Sprintf("row %d", i)), "reference": fmt.Sprintf("r%d", i)}
	}
	items[bad]["plaintext"] = "!!not base64!!"
	status, resp := v.raw("POST", "kms/encrypt/k", v.token, map[string]interface{}{"batch_input": items})
	if status != http.StatusBadRequest {
		t.Fatalf("batch with a bad item: status %d, want 400 as Transit", status)
	}
	results := resp["data"].(map[string]interface{})["batch_results"].([]interface{})
	if len(results) != 100 {
		t.Fatalf("%d results", len(results))
	}
	var decryptItems []map[string]interface{}
	for i, r := range results {
		item := r.(map[string]interface{})
		if item["reference"] != fmt.Sprintf("r%d", i) {
			t.Fatalf("result %d out of order: %v", i, item)
		}
		if i == bad {
			if item["error"] == nil || item["ciphertext"] != nil {
				t.Fatalf("bad item: %v", item)
			}
			continue
		}
		if item["error"] != nil || item["key_version"].(json.Number).String() != "1" {
			t.Fatalf("item %d: %v", i, item)
		}
		decryptItems = append(decryptItems, map[string]interface{}{"ciphertext": item["ciphertext"], "reference": item["reference"]})
	}
	// With partial_failure_response_code the same batch answers that code.
	status, _ = v.raw("POST", "kms/encrypt/k", v.token, map[string]interface{}{"batch_input": items, "partial_failure_response_code": 207})
	if status != 207 {
		t.Fatalf("partial_failure_response_code: %d", status)
	}
	// The 99 good ciphertexts decrypt in one batch, through the api client.
	secret, err := v.client.Logical().Write("kms/decrypt/k", map[string]interface{}{"batch_input": decryptItems})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range secret.Data["batch_results"].([]interface{}) {
		item := r.(map[string]interface{})
		var i int
		fmt.Sscanf(item["reference"].(string), "r%d", &i)
		if item["plaintext"] != b64(fmt.Sprintf("row %d", i)) {
			t.Fatalf("decrypt %v", item)
		}
	}
}

func TestKeyLifecycleRulesThroughVault(t *testing.T) {
	eachCryptoToken(t, testKeyLifecycleRulesThroughVault)
}

func testKeyLifecycleRulesThroughVault(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms", "max_keys=3")
	v.cli("write", "kms/keys/a", "type=aes256-gcm96")
	ct := strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms/encrypt/a", "plaintext="+b64("x")))

	// Quota: default + a + b fill max_keys=3.
	v.cli("write", "kms/keys/b", "type=aes256-gcm96")
	status, resp := v.raw("POST", "kms/keys/c", v.token, map[string]interface{}{"type": "aes256-gcm96"})
	if status != 400 || !strings.Contains(fmt.Sprint(resp["errors"]), "quota of 3 keys") {
		t.Fatalf("quota: %d %v", status, resp)
	}

	// Delete is refused while active and always for the default key.
	status, resp = v.raw("DELETE", "kms/keys/a", v.token, nil)
	if status != 400 || !strings.Contains(fmt.Sprint(resp["errors"]), "deactivate it") {
		t.Fatalf("delete active: %d %v", status, resp)
	}
	v.cli("write", "-f", "kms/keys/default/deactivate")
	status, resp = v.raw("DELETE", "kms/keys/default", v.token, nil)
	if status != 400 || !strings.Contains(fmt.Sprint(resp["errors"]), "default key") {
		t.Fatalf("delete default: %d %v", status, resp)
	}
	v.cli("write", "-f", "kms/keys/default/activate")

	// A deactivated key refuses encrypt and decrypt.
	v.cli("write", "-f", "kms/keys/a/deactivate")
	for path, body := range map[string]map[string]interface{}{
		"kms/encrypt/a": {"plaintext": b64("y")},
		"kms/decrypt/a": {"ciphertext": ct},
	} {
		status, resp := v.raw("POST", path, v.token, body)
		if status != 400 || !strings.Contains(fmt.Sprint(resp["errors"]), "deactivated") {
			t.Errorf("%s on a deactivated key: %d %v", path, status, resp)
		}
	}
	// A delete schedules the deletion (the default window, 168h): the key
	// stays, pending, and still holds its place in the quota until it is
	// destroyed; purge destroys it now and frees the place.
	before := time.Now().UTC().Truncate(time.Second)
	v.cli("delete", "kms/keys/a")
	after := time.Now().UTC()
	secret, err := v.client.Logical().Read("kms/keys/a")
	if err != nil || secret == nil {
		t.Fatalf("read of a key pending deletion: %v %v", secret, err)
	}
	date, perr := time.Parse(time.RFC3339, fmt.Sprint(secret.Data["deletion_date"]))
	if secret.Data["state"] != "pending_deletion" || perr != nil ||
		date.Before(before.Add(168*time.Hour)) || date.After(after.Add(168*time.Hour)) {
		t.Fatalf("deleted key: state %v deletion_date %v (%v); want pending_deletion, 168h after the delete (%s to %s)",
			secret.Data["state"], secret.Data["deletion_date"], perr, before, after)
	}
	status, resp = v.raw("POST", "kms/keys/c", v.token, map[string]interface{}{"type": "aes256-gcm96"})
	if status != 400 || !strings.Contains(fmt.Sprint(resp["errors"]), "quota of 3 keys") {
		t.Fatalf("quota with a key pending deletion: %d %v, want the quota's 400", status, resp)
	}
	v.cli("write", "-f", "kms/purge/a")
	if secret, err := v.client.Logical().Read("kms/keys/a"); err != nil || secret != nil {
		t.Fatalf("purged key still readable: %v %v", secret, err)
	}
	v.cli("write", "kms/keys/c", "type=aes256-gcm96") // room again
}

func TestConfigThroughVault(t *testing.T) {
	eachCryptoToken(t, testConfigThroughVault)
}

func testConfigThroughVault(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/k", "type=aes256-gcm96")
	ct := strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms/encrypt/k", "plaintext="+b64("kept")))

	secret, err := v.client.Logical().Read("kms/config")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := secret.Data["pin"]; ok {
		t.Fatal("config read returned a pin field")
	}
	whole, _ := json.Marshal(secret)
	if strings.Contains(string(whole), tok.PIN) {
		t.Fatal("config read contains the PIN")
	}
	if info, _ := secret.Data["token"].(map[string]interface{}); info["label"] != tok.Label || info["manufacturer"] == "" {
		t.Fatalf("token info: %v", secret.Data["token"])
	}
	if secret.Data["init_args"] != tok.InitArgs {
		t.Errorf("init_args read back as %q, want %q", secret.Data["init_args"], tok.InitArgs)
	}
	checkQuirksAndOAEP(t, tok.Implementation(), secret.Data)

	status, resp := v.raw("POST", "kms/config", v.token, map[string]interface{}{
		"library": tok.Library, "init_args": tok.InitArgs, "token_label": tok.Label, "pin": "not-the-pin",
	})
	if status != 400 || !strings.Contains(fmt.Sprint(resp["errors"]), "refused the PIN") {
		t.Fatalf("wrong PIN: %d %v", status, resp)
	}
	if strings.Contains(fmt.Sprint(resp), "not-the-pin") {
		t.Fatal("the error repeats the PIN")
	}
	// The previous config still works.
	if out := strings.TrimSpace(v.cli("write", "-field=plaintext", "kms/decrypt/k", "ciphertext="+ct)); out != b64("kept") {
		t.Fatalf("after a refused config: %q", out)
	}

	// A second mount in the same plugin process, on the other token of the
	// same module: with other init_args it is refused (the module is
	// initialised once per process), with the same ones it works.
	other := tokens[tok.Kind][1]
	v.cli("secrets", "enable", "-path=kms-b", "hsmkms")
	conflicting := tokentest.NSSInitArgs([]string{t.TempDir()}, []string{other.Label})
	args := v.configArgs("kms-b", &tokentest.Token{Library: other.Library, Label: other.Label, PIN: other.PIN, InitArgs: conflicting})
	out, err := v.cliErr(args...)
	if err == nil || !strings.Contains(out, "Code: 400") || !strings.Contains(out, "other init_args") {
		t.Fatalf("kms-b with other init_args than kms: %v\n%s", err, out)
	}
	if secret, err := v.client.Logical().Read("kms-b/config"); err != nil || secret != nil {
		t.Fatalf("a refused init_args left a config: %v %v", secret, err)
	}
	v.cli(v.configArgs("kms-b", other)...)
	ctB := strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms-b/encrypt/default", "plaintext="+b64("on token b")))
	if out := strings.TrimSpace(v.cli("write", "-field=plaintext", "kms-b/decrypt/default", "ciphertext="+ctB)); out != b64("on token b") {
		t.Fatalf("kms-b round trip: %q", out)
	}
	secret, err = v.client.Logical().Read("kms-b/config")
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := secret.Data["token"].(map[string]interface{}); info["label"] != other.Label {
		t.Fatalf("kms-b token info: %v", secret.Data["token"])
	}
	// kms is untouched by kms-b.
	if out := strings.TrimSpace(v.cli("write", "-field=plaintext", "kms/decrypt/k", "ciphertext="+ct)); out != b64("kept") {
		t.Fatalf("kms after kms-b was configured: %q", out)
	}

	log, _ := readFile(v.logPath)
	if strings.Contains(log, tok.PIN) || strings.Contains(log, other.PIN) {
		t.Fatal("Vault's log contains a PIN")
	}
}

// checkQuirksAndOAEP checks that GET config lists the quirks in force on a
// token of implementation kind (each with how it is handled) and says how
// RSA-OAEP-SHA-256 is decrypted there.
func checkQuirksAndOAEP(t *testing.T, kind tokentest.Kind, data map[string]interface{}) {
	t.Helper()
	var want, notWanted []string
	var oaepPrefix string
	switch kind {
	case tokentest.SoftHSM2:
		want = []string{"gcm_tag_mismatch_general_error", "lenient_gcm_parameters", "concurrent_key_creation", "oaep_sha256_unavailable"}
		notWanted = []string{"gcm_encrypt_size_query", "random_64k_per_call", "pairwise_consistency", "finalize_error_order"}
		oaepPrefix = "CKM_RSA_X_509 in the token, "
	case tokentest.NSS:
		want = []string{"gcm_encrypt_size_query", "random_64k_per_call", "pairwise_consistency", "finalize_error_order"}
		notWanted = []string{"gcm_tag_mismatch_general_error", "lenient_gcm_parameters", "concurrent_key_creation", "oaep_sha256_unavailable"}
		oaepPrefix = "CKM_RSA_PKCS_OAEP with SHA-256 in the token"
	default:
		t.Fatalf("no expectations for token kind %q", kind)
	}
	list, ok := data["quirks"].([]interface{})
	if !ok {
		t.Fatalf("quirks is %T %v, want a list", data["quirks"], data["quirks"])
	}
	var names []string
	for _, q := range list {
		m, _ := q.(map[string]interface{})
		name, _ := m["name"].(string)
		handling, _ := m["handling"].(string)
		if name == "" || len(handling) < 10 {
			t.Errorf("quirk without a name or a handling: %v", q)
		}
		names = append(names, name)
	}
	for _, n := range want {
		if !slices.Contains(names, n) {
			t.Errorf("quirks %v lack %s", names, n)
		}
	}
	for _, n := range notWanted {
		if slices.Contains(names, n) {
			t.Errorf("quirks %v list %s, which is not this token's", names, n)
		}
	}
	mechanisms, _ := data["mechanisms"].(map[string]interface{})
	if oaep, _ := mechanisms["rsa_decrypt_oaep"].(string); !strings.HasPrefix(oaep, oaepPrefix) {
		t.Errorf("mechanisms.rsa_decrypt_oaep is %q, want %q...", oaep, oaepPrefix)
	}
}
