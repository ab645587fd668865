package hsmkms

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func encrypt(t *testing.T, m *testMount, key, plaintext string, extra map[string]interface{}) string {
	t.Helper()
	data := map[string]interface{}{"plaintext": b64(plaintext)}
	for k, v := range extra {
		data[k] = v
	}
	resp := m.mustOK(logical.UpdateOperation, "encrypt/"+key, data)
	ct, _ := resp.Data["ciphertext"].(string)
	if strings.Count(ct, ":") != 2 || !strings.HasPrefix(ct, "vault:v") {
		t.Fatalf("ciphertext %q is not vault:vN:...", ct)
	}
	if _, ok := resp.Data["key_version"].(int); !ok {
		t.Fatalf("key_version %T is not a number", resp.Data["key_version"])
	}
	return ct
}

func decrypt(t *testing.T, m *testMount, key, ciphertext string, extra map[string]interface{}) string {
	t.Helper()
	data := map[string]interface{}{"ciphertext": ciphertext}
	for k, v := range extra {
		data[k] = v
	}
	resp := m.mustOK(logical.UpdateOperation, "decrypt/"+key, data)
	pt, err := base64.StdEncoding.DecodeString(resp.Data["plaintext"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return string(pt)
}

func TestContextsBindTheCiphertext(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	bind := map[string]interface{}{
		"context":            b64("tenant-1"),
		"associated_data":    b64("row 42"),
		"encryption_context": map[string]string{"app": "billing", "env": "prod"},
	}
	ct := encrypt(t, m, "k", "bound", bind)
	if got := decrypt(t, m, "k", ct, map[string]interface{}{
		"context": b64("tenant-1"), "associated_data": b64("row 42"),
		"encryption_context": map[string]string{"env": "prod", "app": "billing"},
	}); got != "bound" {
		t.Fatalf("decrypt with the same bindings: %q", got)
	}
	for name, wrong := range map[string]map[string]interface{}{
		"no bindings":        {},
		"other context":      {"context": b64("tenant-2"), "associated_data": b64("row 42"), "encryption_context": map[string]string{"app": "billing", "env": "prod"}},
		"other ad":           {"context": b64("tenant-1"), "associated_data": b64("row 43"), "encryption_context": map[string]string{"app": "billing", "env": "prod"}},
		"other ec value":     {"context": b64("tenant-1"), "associated_data": b64("row 42"), "encryption_context": map[string]string{"app": "billing", "env": "dev"}},
		"missing ec pair":    {"context": b64("tenant-1"), "associated_data": b64("row 42"), "encryption_context": map[string]string{"app": "billing"}},
		"context swapped in": {"context": b64("row 42"), "associated_data": b64("tenant-1"), "encryption_context": map[string]string{"app": "billing", "env": "prod"}},
	} {
		data := map[string]interface{}{"ciphertext": ct}
		for k, v := range wrong {
			data[k] = v
		}
		t.Run(name, func(t *testing.T) {
			m.t = t
			m.mustFail(logical.UpdateOperation, "decrypt/k", data, "could not be decrypted")
		})
	}
}

func TestTamperedAndForeignCiphertextsFail(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	m.mustOK(logical.UpdateOperation, "keys/other", nil)
	ct := encrypt(t, m, "k", "original", nil)
	raw, _ := base64.StdEncoding.DecodeString(strings.SplitN(ct, ":", 3)[2])
	for i := range []int{0, 12, len(raw) - 1} {
		pos := []int{0, 12, len(raw) - 1}[i]
		tampered := append([]byte(nil), raw...)
		tampered[pos] ^= 0x80
		m.mustFail(logical.UpdateOperation, "decrypt/k", map[string]interface{}{
			"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(tampered)}, "could not be decrypted")
	}
	m.mustFail(logical.UpdateOperation, "decrypt/other", map[string]interface{}{"ciphertext": ct}, "could not be decrypted")
}

// Every caller mistake is a 400 with a message that says what to fix.
func TestBadInputTable(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_plaintext_bytes": 64})
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	m.mustOK(logical.UpdateOperation, "keys/other", nil)
	otherCT := encrypt(t, m, "other", "x", nil)
	valid := encrypt(t, m, "k", "x", nil)
	truncated := valid[:len(valid)-12]
	short := "vault:v1:" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	cases := []struct {
		name, path string
		data       map[string]interface{}
		want       string
	}{
		{"invalid base64", "encrypt/k", map[string]interface{}{"plaintext": "not base64!"}, "not valid base64"},
		{"missing plaintext", "encrypt/k", map[string]interface{}{}, "missing plaintext to encrypt"},
		{"oversized plaintext", "encrypt/k", map[string]interface{}{"plaintext": b64(strings.Repeat("a", 65))}, "max_plaintext_bytes (64)"},
		{"much oversized plaintext", "encrypt/k", map[string]interface{}{"plaintext": b64(strings.Repeat("a", 100000))}, "max_plaintext_bytes"},
		{"bad context base64", "encrypt/k", map[string]interface{}{"plaintext": b64("x"), "context": "%%"}, "context is not valid base64"},
		{"bad ad base64", "encrypt/k", map[string]interface{}{"plaintext": b64("x"), "associated_data": "%%"}, "associated_data is not valid base64"},
		{"future key_version", "encrypt/k", map[string]interface{}{"plaintext": b64("x"), "key_version": 9}, "key_version 9 does not exist"},
		{"negative key_version", "encrypt/k", map[string]interface{}{"plaintext": b64("x"), "key_version": -1}, "must not be negative"},
		{"unknown key encrypt", "encrypt/nope", map[string]interface{}{"plaintext": b64("x")}, `no key named "nope"`},
		{"unknown key decrypt", "decrypt/nope", map[string]interface{}{"ciphertext": valid}, `no key named "nope"`},
		{"empty ciphertext", "decrypt/k", map[string]interface{}{"ciphertext": ""}, "ciphertext is empty"},
		{"v0", "decrypt/k", map[string]interface{}{"ciphertext": "vault:v0:" + b64("x")}, "v1 or higher"},
		{"vX", "decrypt/k", map[string]interface{}{"ciphertext": "vault:vX:" + b64("x")}, "v1 or higher"},
		{"no v", "decrypt/k", map[string]interface{}{"ciphertext": "vault:1:" + b64("x")}, "v<number>"},
		{"leading zero", "decrypt/k", map[string]interface{}{"ciphertext": "vault:v01:" + b64("x")}, "v1 or higher"},
		{"three colons", "decrypt/k", map[string]interface{}{"ciphertext": "vault:v1:abc:def"}, "vault:v<version>:<base64>"},
		{"other prefix", "decrypt/k", map[string]interface{}{"ciphertext": "kms:v1:" + b64("x")}, "vault:v<version>:<base64>"},
		{"future version", "decrypt/k", map[string]interface{}{"ciphertext": "vault:v7:" + b64("x")}, "latest version"},
		{"bad payload base64", "decrypt/k", map[string]interface{}{"ciphertext": "vault:v1:%%%"}, "not valid base64"},
		{"empty payload", "decrypt/k", map[string]interface{}{"ciphertext": "vault:v1:"}, "payload is empty"},
		{"truncated", "decrypt/k", map[string]interface{}{"ciphertext": truncated}, "could not be decrypted"},
		{"shorter than iv and tag", "decrypt/k", map[string]interface{}{"ciphertext": short}, "could not be decrypted"},
		{"other key's", "decrypt/k", map[string]interface{}{"ciphertext": otherCT}, "could not be decrypted"},
		{"empty batch", "encrypt/k", map[string]interface{}{"batch_input": []interface{}{}}, "batch_input is empty"},
		{"batch of strings", "encrypt/k", map[string]interface{}{"batch_input": []interface{}{"x"}}, "batch_input[0] is not an object"},
		{"batch bad field type", "encrypt/k", map[string]interface{}{"batch_input": []interface{}{map[string]interface{}{"plaintext": 5}}}, "plaintext must be a string"},
		{"batch bad ec", "encrypt/k", map[string]interface{}{"batch_input": []interface{}{map[string]interface{}{"plaintext": b64("x"), "encryption_context": map[string]interface{}{"a": 1}}}}, "must be a string"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m.t = t
			m.mustFail(logical.UpdateOperation, tc.path, tc.data, tc.want)
		})
	}
}

func TestBatchOfHundredWithOneBadItem(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	const n, bad = 100, 37
	input := make([]interface{}, n)
	for i := range input {
		item := map[string]interface{}{"plaintext": b64(fmt.Sprintf("item %d", i)), "reference": fmt.Sprintf("ref-%d", i)}
		if i == bad {
			item["plaintext"] = "***"
		}
		input[i] = item
	}
	resp, err := m.do(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"batch_input": input})
	if err != nil {
		t.Fatal(err)
	}
	if status := resp.Data[logical.HTTPStatusCode]; status != http.StatusBadRequest {
		t.Fatalf("status %v, want 400 as Transit", status)
	}
	results := batchResultsOf(t, resp)
	if len(results) != n {
		t.Fatalf("%d results", len(results))
	}
	var decryptInput []interface{}
	for i, r := range results {
		if r.Reference != fmt.Sprintf("ref-%d", i) {
			t.Fatalf("result %d has reference %q", i, r.Reference)
		}
		if i == bad {
			if r.Error == "" || r.Ciphertext != "" {
				t.Fatalf("bad item: %+v", r)
			}
			continue
		}
		if r.Error != "" || r.KeyVersion != 1 {
			t.Fatalf("item %d: %+v", i, r)
		}
		decryptInput = append(decryptInput, map[string]interface{}{"ciphertext": r.Ciphertext, "reference": r.Reference})
	}
	// partial_failure_response_code overrides the status when some succeeded.
	resp, err = m.do(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"batch_input": input, "partial_failure_response_code": 207})
	if err != nil || resp.Data[logical.HTTPStatusCode] != 207 {
		t.Fatalf("override: %v %v", err, resp.Data[logical.HTTPStatusCode])
	}

	resp = m.mustOK(logical.UpdateOperation, "decrypt/k", map[string]interface{}{"batch_input": decryptInput})
	for _, r := range batchResultsOf(t, resp) {
		i := 0
		fmt.Sscanf(r.Reference, "ref-%d", &i)
		pt, _ := base64.StdEncoding.DecodeString(r.Plaintext)
		if r.Error != "" || string(pt) != fmt.Sprintf("item %d", i) {
			t.Fatalf("decrypt %s: %+v", r.Reference, r)
		}
	}
}

func TestBatchItemsWithEncryptionContexts(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	resp := m.mustOK(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"batch_input": []interface{}{
		map[string]interface{}{"plaintext": b64("a"), "encryption_context": map[string]interface{}{"user": "alice"}},
		map[string]interface{}{"plaintext": b64("b"), "context": b64("c2")},
	}})
	r := batchResultsOf(t, resp)
	resp, _ = m.do(logical.UpdateOperation, "decrypt/k", map[string]interface{}{"batch_input": []interface{}{
		map[string]interface{}{"ciphertext": r[0].Ciphertext, "encryption_context": map[string]interface{}{"user": "alice"}},
		map[string]interface{}{"ciphertext": r[1].Ciphertext, "context": b64("wrong")},
	}})
	d := batchResultsOf(t, resp)
	if d[0].Error != "" || d[0].Plaintext != b64("a") {
		t.Fatalf("item 0: %+v", d[0])
	}
	if !strings.Contains(d[1].Error, "could not be decrypted") {
		t.Fatalf("item 1 with wrong context: %+v", d[1])
	}
}

func batchResultsOf(t *testing.T, resp *logical.Response) []batchResult {
	t.Helper()
	if raw, ok := resp.Data[logical.HTTPRawBody]; ok {
		// A response with a status code carries its body raw.
		var body struct {
			Data struct {
				BatchResults []batchResult `json:"batch_results"`
			} `json:"data"`
		}
		if err := jsonUnmarshal([]byte(raw.(string)), &body); err != nil {
			t.Fatal(err)
		}
		return body.Data.BatchResults
	}
	items, ok := resp.Data["batch_results"].([]map[string]interface{})
	if !ok {
		t.Fatalf("batch_results: %T", resp.Data["batch_results"])
	}
	raw, err := json.Marshal(items)
	if err != nil {
		t.Fatal(err)
	}
	var results []batchResult
	if err := jsonUnmarshal(raw, &results); err != nil {
		t.Fatal(err)
	}
	return results
}

// A secret sent with the wrong JSON type is refused without being quoted:
// the SDK's own conversion errors repeat the value.
func TestWrongTypesNeverEchoTheValue(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	const secret = "TOP-SECRET-VALUE"
	for _, tc := range []struct{ path, field string }{
		{"encrypt/k", "plaintext"},
		{"encrypt/k", "context"},
		{"sign/k", "input"},
		{"config", "pin"},
	} {
		for _, value := range []interface{}{[]interface{}{secret}, map[string]interface{}{"x": secret}} {
			resp, err := m.do(logical.UpdateOperation, tc.path, map[string]interface{}{tc.field: value})
			msg := respError(resp)
			if !errors.Is(err, logical.ErrInvalidRequest) || strings.Contains(msg, secret) || !strings.Contains(msg, tc.field) {
				t.Fatalf("%s %s as %T: %v %q", tc.path, tc.field, value, err, msg)
			}
		}
	}
	m.mustFail(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"plaintext": b64("x"), "key_version": json.Number("99999999999999999999")}, "key_version must be a whole number")
	m.mustFail(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"plaintext": b64("x"), "key_version": json.Number("4294967297")}, "key_version is out of range")
}
