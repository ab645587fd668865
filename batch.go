package hsmkms

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// maxBatchItems bounds one batch request.
const maxBatchItems = 10000

// cryptoItem is one encrypt or decrypt input, from the top-level fields or
// one element of batch_input.
type cryptoItem struct {
	Plaintext         string
	plaintextGiven    bool // an empty plaintext is allowed (Transit); a missing one is not
	Ciphertext        string
	Input             string
	Signature         string
	HMAC              string
	PaddingScheme     string
	Context           string
	AssociatedData    string
	EncryptionContext map[string]string
	KeyVersion        int
	Reference         string

	// domain is what the AES-GCM ciphertext is for (wire.DomainAEAD or
	// wire.DomainDataKey); set by the plugin, never by the request.
	domain string
}

// batchResult is one element of batch_results. Transit's clients read these
// exact names.
type batchResult struct {
	Ciphertext string `json:"ciphertext,omitempty"`
	Plaintext  string `json:"plaintext,omitempty"`
	Signature  string `json:"signature,omitempty"`
	HMAC       string `json:"hmac,omitempty"`
	Valid      *bool  `json:"valid,omitempty"`
	KeyVersion int    `json:"key_version,omitempty"`
	Error      string `json:"error,omitempty"`
	Reference  string `json:"reference"`

	internal    bool // the error was ours, not the caller's
	unavailable bool // the HSM failed (retried once); answered 503
	version     int  // the key version the item used, for the key's usage
}

// readItems returns the request's items: batch_input when given, else one
// item from the top-level fields. An error is the caller's mistake.
func readItems(d *framework.FieldData, fields []string) ([]cryptoItem, bool, error) {
	if raw, ok := d.GetOk("batch_input"); ok {
		list, ok := raw.([]interface{})
		if !ok {
			return nil, true, keyring.Userf("batch_input must be a list of objects")
		}
		if len(list) == 0 {
			return nil, true, keyring.Userf("batch_input is empty")
		}
		if len(list) > maxBatchItems {
			return nil, true, keyring.Userf("batch_input has %d items; at most %d allowed", len(list), maxBatchItems)
		}
		items := make([]cryptoItem, len(list))
		for i, e := range list {
			m, ok := e.(map[string]interface{})
			if !ok {
				return nil, true, keyring.Userf("batch_input[%d] is not an object", i)
			}
			item, err := itemFromMap(m, i)
			if err != nil {
				return nil, true, err
			}
			if item.PaddingScheme == "" {
				if p, ok := d.GetOk("padding_scheme"); ok {
					item.PaddingScheme = p.(string)
				}
			}
			items[i] = item
		}
		return items, true, nil
	}
	var item cryptoItem
	for _, f := range fields {
		v, ok := d.GetOk(f)
		if !ok {
			continue
		}
		switch f {
		case "plaintext":
			item.Plaintext, item.plaintextGiven = v.(string), true
		case "ciphertext":
			item.Ciphertext = v.(string)
		case "context":
			item.Context = v.(string)
		case "associated_data":
			item.AssociatedData = v.(string)
		case "encryption_context":
			item.EncryptionContext = v.(map[string]string)
		case "key_version":
			item.KeyVersion = v.(int)
		case "reference":
			item.Reference = v.(string)
		case "input":
			item.Input = v.(string)
		case "signature":
			item.Signature = v.(string)
		case "hmac":
			item.HMAC = v.(string)
		case "padding_scheme":
			item.PaddingScheme = v.(string)
		}
	}
	return []cryptoItem{item}, false, nil
}

// itemFromMap decodes element i of batch_input; the caller's errors name
// it ("batch_input[3]: ...").
func itemFromMap(m map[string]interface{}, i int) (cryptoItem, error) {
	where := func() string { return fmt.Sprintf("batch_input[%d]", i) }
	var item cryptoItem
	_, item.plaintextGiven = m["plaintext"]
	for name, dst := range map[string]*string{
		"plaintext": &item.Plaintext, "ciphertext": &item.Ciphertext, "context": &item.Context,
		"associated_data": &item.AssociatedData, "reference": &item.Reference,
		"input": &item.Input, "signature": &item.Signature, "hmac": &item.HMAC, "padding_scheme": &item.PaddingScheme,
	} {
		v, ok := m[name]
		if !ok || v == nil {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return item, keyring.FieldErrorf(where(), "%s must be a string", name)
		}
		*dst = s
	}
	if v, ok := m["key_version"]; ok && v != nil {
		n, ok := toInt(v)
		if !ok {
			return item, keyring.FieldErrorf(where(), "key_version must be a whole number")
		}
		item.KeyVersion = n
	}
	if v, ok := m["encryption_context"]; ok && v != nil {
		ec, ok := v.(map[string]interface{})
		if !ok {
			return item, keyring.FieldErrorf(where(), "encryption_context must be an object of strings")
		}
		item.EncryptionContext = make(map[string]string, len(ec))
		for k, val := range ec {
			s, ok := val.(string)
			if !ok {
				return item, keyring.FieldErrorf(where(), "encryption_context[%q] must be a string", k)
			}
			item.EncryptionContext[k] = s
		}
	}
	return item, nil
}

// toInt reads a whole number that fits 32 bits from JSON (a number, or a
// string of digits).
func toInt(v interface{}) (int, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		if err != nil || i > math.MaxInt32 || i < math.MinInt32 {
			return 0, false
		}
		return int(i), true
	case float64:
		if n != math.Trunc(n) || n > math.MaxInt32 || n < math.MinInt32 {
			return 0, false
		}
		return int(n), true
	case int:
		return n, true
	case string:
		i, err := strconv.Atoi(n)
		if err != nil {
			return 0, false
		}
		return i, true
	}
	return 0, false
}

// batchResponse follows Transit's encrypt and decrypt: results in input
// order with references echoed; any failed item makes the status 400 (or
// 503 when the HSM failed, 500 for other internal errors), which partial_failure_response_code
// may override when some items succeeded.
func batchResponse(req *logical.Request, d *framework.FieldData, kind batchKind, results []batchResult, items []cryptoItem) (*logical.Response, error) {
	var userErr, internalErr, unavailable, success bool
	for i := range results {
		results[i].Reference = items[i].Reference
		switch {
		case results[i].Error == "":
			success = true
		case results[i].internal:
			internalErr = true
			unavailable = unavailable || results[i].unavailable
		default:
			userErr = true
		}
	}
	resp := &logical.Response{Data: map[string]interface{}{"batch_results": transitItems(kind, results)}}
	if !userErr && !internalErr {
		return resp, nil
	}
	code := http.StatusBadRequest
	switch {
	case userErr:
	case unavailable:
		code = http.StatusServiceUnavailable
	default:
		code = http.StatusInternalServerError
	}
	if raw, ok := d.GetOk("partial_failure_response_code"); ok && success {
		if c := raw.(int); c >= 100 && c <= 599 {
			code = c
		} else {
			resp.AddWarning(fmt.Sprintf("partial_failure_response_code %d is not an HTTP status; answered %d", c, code))
		}
	}
	return logical.RespondWithStatusCode(resp, req, code)
}

// okBatchResponse follows Transit's sign and verify: results in input order
// with references echoed, status 200 whatever failed, each failure in its
// item's error.
func okBatchResponse(kind batchKind, results []batchResult, items []cryptoItem) *logical.Response {
	for i := range results {
		results[i].Reference = items[i].Reference
	}
	return &logical.Response{Data: map[string]interface{}{"batch_results": transitItems(kind, results)}}
}

// batchKind names the shape of a batch item in Transit's answers.
type batchKind int

const (
	batchEncrypt batchKind = iota // encrypt, rewrap
	batchDecrypt
	batchSign
	batchVerify
	batchHMAC
)

// transitItems gives each batch result exactly the fields Transit's item of
// that kind has: some always present even when empty (a decrypt's
// plaintext, a signature's key_version, a verification's valid), others
// only when set, and reference and error as Transit gives them.
func transitItems(kind batchKind, results []batchResult) []map[string]interface{} {
	out := make([]map[string]interface{}, len(results))
	for i, r := range results {
		item := map[string]interface{}{"reference": r.Reference}
		if r.Error != "" {
			item["error"] = r.Error
		}
		switch kind {
		case batchEncrypt:
			if r.Ciphertext != "" {
				item["ciphertext"] = r.Ciphertext
			}
			if r.KeyVersion != 0 {
				item["key_version"] = r.KeyVersion
			}
		case batchDecrypt:
			item["plaintext"] = r.Plaintext
		case batchSign:
			if r.Signature != "" {
				item["signature"] = r.Signature
			}
			item["key_version"] = r.KeyVersion
		case batchVerify:
			item["valid"] = r.Valid != nil && *r.Valid
		case batchHMAC:
			if r.HMAC != "" {
				item["hmac"] = r.HMAC
			}
			if r.Valid != nil {
				item["valid"] = *r.Valid
			}
			if r.KeyVersion != 0 {
				item["key_version"] = r.KeyVersion
			}
		}
		out[i] = item
	}
	return out
}
