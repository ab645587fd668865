package hsmkms

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
)

// Native fuzz target for the batch reader of the root package; the wire
// formats' own are in internal/wire, the key name's in internal/keyring.
// Its seeds run in every `go test`; fuzz it with:
// go test -run '^$' -fuzz FuzzBatchInput -fuzztime 5m .

// FuzzBatchInput feeds arbitrary JSON as a request body to the batch
// reader: it must never panic, and what it accepts is within bounds.
func FuzzBatchInput(f *testing.F) {
	for _, s := range []string{
		`{"batch_input":[{"plaintext":"aGk="}]}`,
		`{"batch_input":[{"plaintext":["x"]}]}`,
		`{"batch_input":"nope"}`,
		`{"batch_input":[[{"plaintext":"aGk="}]]}`,
		`{"batch_input":[{"key_version":1e300,"encryption_context":{"a":1}}]}`,
		`{"batch_input":[]}`,
		`{"plaintext":"aGk=","key_version":-1,"encryption_context":{"k":"v"}}`,
		`{"batch_input":[{"reference":{"x":1},"ciphertext":"vault:v1:AA=="}]}`,
	} {
		f.Add([]byte(s))
	}
	schema := (&backend{}).pathEncrypt().Fields
	f.Fuzz(func(t *testing.T, body []byte) {
		var raw map[string]interface{}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&raw); err != nil || raw == nil {
			return
		}
		if checkFieldTypes(schema, raw) != "" {
			return // refused before the reader, as HandleRequest does
		}
		items, _, err := readItems(&framework.FieldData{Raw: raw, Schema: schema}, encryptFields)
		if err != nil {
			return
		}
		if len(items) == 0 || len(items) > maxBatchItems {
			t.Fatalf("accepted %d items", len(items))
		}
	})
}
