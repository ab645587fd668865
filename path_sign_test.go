package hsmkms

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

var jwaKeyTypes = map[string]string{
	"RS256": "rsa-2048", "RS384": "rsa-2048", "RS512": "rsa-2048",
	"PS256": "rsa-2048", "PS384": "rsa-2048", "PS512": "rsa-2048",
	"ES256": "ecdsa-p256", "ES384": "ecdsa-p384", "ES512": "ecdsa-p521",
}

func TestSignAndVerifyEveryJWAAlgorithm(t *testing.T) {
	m := configuredMount(t, nil)
	for _, typ := range []string{"rsa-2048", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"} {
		m.mustOK(logical.UpdateOperation, "keys/"+typ, map[string]interface{}{"type": typ})
	}
	m.mustOK(logical.UpdateOperation, "keys/other-rsa", map[string]interface{}{"type": "rsa-2048"})
	for alg, key := range jwaKeyTypes {
		for _, marshaling := range []string{"asn1", "jws"} {
			resp := m.mustOK(logical.UpdateOperation, "sign/"+key, map[string]interface{}{
				"input": b64("payload"), "alg": alg, "marshaling_algorithm": marshaling,
			})
			sig := resp.Data["signature"].(string)
			if !strings.HasPrefix(sig, "vault:v1:") || resp.Data["key_version"] != 1 {
				t.Fatalf("%s: %v", alg, resp.Data)
			}
			verify := func(input, key string) bool {
				t.Helper()
				resp := m.mustOK(logical.UpdateOperation, "verify/"+key, map[string]interface{}{
					"input": input, "signature": sig, "alg": alg, "marshaling_algorithm": marshaling,
				})
				return resp.Data["valid"].(bool)
			}
			if !verify(b64("payload"), key) {
				t.Fatalf("%s/%s: own signature does not verify", alg, marshaling)
			}
			if verify(b64("other payload"), key) {
				t.Fatalf("%s/%s: verifies over other input", alg, marshaling)
			}
			if strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS") {
				if verify(b64("payload"), "other-rsa") {
					t.Fatalf("%s: verifies with another key", alg)
				}
			}
		}
	}
}

func TestPrehashedAndURLHash(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "EC", "curve": "P-256"})
	digest := sha256.Sum256([]byte("the message"))
	resp := m.mustOK(logical.UpdateOperation, "sign/ec", map[string]interface{}{
		"input": base64.StdEncoding.EncodeToString(digest[:]), "isdigest": true,
	})
	// A signature over the digest verifies over the original message.
	resp = m.mustOK(logical.UpdateOperation, "verify/ec/sha2-256", map[string]interface{}{
		"input": b64("the message"), "signature": resp.Data["signature"],
	})
	if resp.Data["valid"] != true {
		t.Fatal("prehashed signature does not verify over the message")
	}
	resp = m.mustOK(logical.UpdateOperation, "sign/ec/sha2-384", map[string]interface{}{"input": b64("x")})
	resp = m.mustOK(logical.UpdateOperation, "verify/ec", map[string]interface{}{
		"input": b64("x"), "signature": resp.Data["signature"], "hash_algorithm": "sha2-384",
	})
	if resp.Data["valid"] != true {
		t.Fatal("URL hash algorithm was not used")
	}
}

// A prehashed digest of the wrong length is named in the request's own
// spelling of its hash, whichever hash it is: the name once came from a
// table of three SHA-2 hashes, so sha3-256 read "SHA3-256".
func TestPrehashedLengthNamesTheHashAsGiven(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p256"})
	for _, tc := range []struct{ op, hash, want string }{
		{"sign", "sha2-256", "prehashed input is 5 bytes; a sha2-256 digest is 32 bytes"},
		{"sign", "sha2-224", "prehashed input is 5 bytes; a sha2-224 digest is 28 bytes"},
		{"sign", "sha3-256", "prehashed input is 5 bytes; a sha3-256 digest is 32 bytes"},
		{"sign", "SHA3-512", "prehashed input is 5 bytes; a sha3-512 digest is 64 bytes"},
		{"verify", "sha1", "prehashed input is 5 bytes; a sha1 digest is 20 bytes"},
	} {
		data := map[string]interface{}{"input": b64("short"), "prehashed": true, "hash_algorithm": tc.hash}
		if tc.op == "verify" {
			data["signature"] = "vault:v1:" + b64("sig")
		}
		resp, err := m.do(logical.UpdateOperation, tc.op+"/ec", data)
		if !errors.Is(err, logical.ErrInvalidRequest) || respError(resp) != tc.want {
			t.Errorf("%s with %s: %v %q, want %q", tc.op, tc.hash, err, respError(resp), tc.want)
		}
	}
}

func TestSignBadInput(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/rsa", map[string]interface{}{"type": "RSA", "size": 2048})
	m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p384"})
	m.mustOK(logical.UpdateOperation, "keys/aes", nil)
	sig := m.mustOK(logical.UpdateOperation, "sign/ec", map[string]interface{}{"input": b64("x")}).Data["signature"].(string)
	for _, tc := range []struct {
		path string
		data map[string]interface{}
		want string
	}{
		{"sign/ec", map[string]interface{}{"input": b64("short"), "prehashed": true}, "prehashed input is 5 bytes; a sha2-256 digest is 32 bytes"},
		{"sign/rsa", map[string]interface{}{"input": b64("x"), "alg": "HS256"}, "is not one of"},
		{"sign/rsa", map[string]interface{}{"input": b64("x"), "alg": "ES256"}, "does not fit key type rsa-2048"},
		{"sign/ec", map[string]interface{}{"input": b64("x"), "alg": "ES256"}, "does not fit key type ecdsa-p384; it takes ES384"},
		{"sign/rsa", map[string]interface{}{"input": b64("x"), "alg": "RS256", "hash_algorithm": "sha2-512"}, "implies hash_algorithm sha2-256"},
		{"sign/rsa", map[string]interface{}{"input": b64("x"), "hash_algorithm": "md5"}, "sha2-256, sha2-384, sha2-512"},
		{"sign/rsa", map[string]interface{}{"input": b64("x"), "signature_algorithm": "rsa"}, "pss, pkcs1v15"},
		{"sign/rsa", map[string]interface{}{"input": b64("x"), "salt_length": "lots"}, "salt_length"},
		{"sign/rsa", map[string]interface{}{"input": b64("x"), "marshaling_algorithm": "der"}, "asn1, jws"},
		{"sign/rsa", map[string]interface{}{"input": "***"}, "not valid base64"},
		{"sign/aes", map[string]interface{}{"input": b64("x")}, "does not allow the sign operation"},
		{"verify/ec", map[string]interface{}{"input": b64("x"), "signature": "vault:v1"}, "vault:v<version>:<base64>"},
		{"verify/ec", map[string]interface{}{"input": b64("x"), "signature": "vault:vX:abc"}, "v1 or higher"},
		{"verify/ec", map[string]interface{}{"input": b64("x"), "signature": "vault:v1:***"}, "not valid base64"},
		{"verify/ec", map[string]interface{}{"input": b64("x"), "signature": "vault:v9:" + b64("x")}, "latest version"},
		{"verify/ec", map[string]interface{}{"input": b64("x")}, "signature is missing"},
		{"verify/ec", map[string]interface{}{"input": b64("x"), "signature": "vault:v1:ab+/cd==", "marshaling_algorithm": "jws"}, "url-safe base64"},
		{"verify/ec", map[string]interface{}{"input": b64("x"), "signature": sig, "alg": "ES256"}, "does not fit"},
		{"export/private-key/rsa", nil, "only public-key"},
		{"export/public-key/aes", nil, "has no public key"},
		{"export/public-key/rsa/7", nil, "latest version"},
		{"export/public-key/rsa/x1", nil, "not a positive number"},
	} {
		var op logical.Operation = logical.UpdateOperation
		if strings.HasPrefix(tc.path, "export/") {
			op = logical.ReadOperation
		}
		m.mustFail(op, tc.path, tc.data, tc.want)
	}
}

func TestBatchSignOfHundredWithOneBadItem(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p256"})
	items := make([]interface{}, 100)
	for i := range items {
		items[i] = map[string]interface{}{"input": b64(fmt.Sprint(i)), "reference": fmt.Sprint(i)}
	}
	items[42] = map[string]interface{}{"input": "not base64!", "reference": "42"}
	resp := m.mustOK(logical.UpdateOperation, "sign/ec", map[string]interface{}{"batch_input": items})
	results := batchResultsOf(t, resp)
	var verifyItems []interface{}
	for i, r := range results {
		if r.Reference != fmt.Sprint(i) {
			t.Fatalf("order: %d has %q", i, r.Reference)
		}
		if (i == 42) != (r.Error != "") {
			t.Fatalf("item %d: %+v", i, r)
		}
		if i != 42 {
			verifyItems = append(verifyItems, map[string]interface{}{"input": b64(fmt.Sprint(i)), "signature": r.Signature, "reference": r.Reference})
		}
	}
	// One signature checked against the wrong input is false, alone.
	verifyItems[0].(map[string]interface{})["input"] = b64("tampered")
	resp = m.mustOK(logical.UpdateOperation, "verify/ec", map[string]interface{}{"batch_input": verifyItems})
	for i, r := range batchResultsOf(t, resp) {
		if r.Valid == nil || *r.Valid != (i != 0) {
			t.Fatalf("verify item %d: %+v", i, r)
		}
	}
}

func TestRSAEncryptionRoundTripAndLimits(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/rsa", map[string]interface{}{"type": "rsa-2048", "operations": "encrypt,decrypt,sign,verify"})
	m.mustOK(logical.UpdateOperation, "keys/signer", map[string]interface{}{"type": "RSA", "size": 2048})
	for _, padding := range []string{"", "oaep", "pkcs1v15"} {
		ct := encrypt(t, m, "rsa", "wrapped secret", map[string]interface{}{"padding_scheme": padding})
		if got := decrypt(t, m, "rsa", ct, map[string]interface{}{"padding_scheme": padding}); got != "wrapped secret" {
			t.Fatalf("%q: %q", padding, got)
		}
	}
	ct := encrypt(t, m, "rsa", "x", nil)
	m.mustFail(logical.UpdateOperation, "decrypt/rsa", map[string]interface{}{"ciphertext": ct, "padding_scheme": "pkcs1v15"}, "could not be decrypted")
	m.mustFail(logical.UpdateOperation, "encrypt/rsa", map[string]interface{}{"plaintext": b64(strings.Repeat("a", 191))}, "takes at most 190")
	m.mustFail(logical.UpdateOperation, "encrypt/rsa", map[string]interface{}{"plaintext": b64(strings.Repeat("a", 246)), "padding_scheme": "pkcs1v15"}, "takes at most 245")
	m.mustFail(logical.UpdateOperation, "encrypt/rsa", map[string]interface{}{"plaintext": b64("x"), "padding_scheme": "raw"}, "oaep, pkcs1v15")
	m.mustFail(logical.UpdateOperation, "encrypt/rsa", map[string]interface{}{"plaintext": b64("x"), "context": b64("c")}, "binds no context")
	m.mustFail(logical.UpdateOperation, "encrypt/signer", map[string]interface{}{"plaintext": b64("x")}, "does not allow the encrypt operation")

	m.mustOK(logical.UpdateOperation, "keys/rsa/deactivate", nil)
	m.mustFail(logical.UpdateOperation, "decrypt/rsa", map[string]interface{}{"ciphertext": ct}, "deactivated")
	m.mustFail(logical.UpdateOperation, "sign/rsa", map[string]interface{}{"input": b64("x")}, "deactivated")
	m.mustFail(logical.UpdateOperation, "verify/rsa", map[string]interface{}{"input": b64("x"), "signature": "vault:v1:" + b64("x")}, "deactivated")
}

func TestAsymmetricKeyReadAndExport(t *testing.T) {
	m := configuredMount(t, nil)
	resp := m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p384"})
	v1 := resp.Data["keys"].(map[string]interface{})["1"].(map[string]interface{})
	if v1["name"] != "P-384" || !strings.Contains(v1["public_key"].(string), "BEGIN PUBLIC KEY") {
		t.Fatalf("version 1: %v", v1)
	}
	for field, value := range v1 {
		if _, isString := value.(string); !isString {
			t.Fatalf("keys.1.%s is a %T; Transit's clients want strings", field, value)
		}
	}
	jwk := resp.Data["public_jwks"].(map[string]interface{})["1"].(map[string]interface{})
	if jwk["kty"] != "EC" || jwk["crv"] != "P-384" || jwk["d"] != nil {
		t.Fatalf("jwk: %v", jwk)
	}
	if resp.Data["supports_signing"] != true || resp.Data["supports_encryption"] != false {
		t.Fatalf("supports: %v", resp.Data)
	}
	for _, path := range []string{"export/public-key/ec", "export/public-key/ec/1", "export/public-key/ec/latest", "export/public-key/ec/v1"} {
		exp := m.mustOK(logical.ReadOperation, path, nil)
		if exp.Data["keys"].(map[string]string)["1"] != v1["public_key"] || exp.Data["type"] != "ecdsa-p384" {
			t.Fatalf("%s: %v", path, exp.Data)
		}
	}
}
