package wire

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

// MaxJWKBytes bounds a JWK before it is parsed: an RSA-4096 private JWK is
// about 3.5 KiB.
const MaxJWKBytes = 64 << 10

const fieldJWK = "jwk"

// JWKBytes takes a request's JWK, given as a JSON string or as an object,
// as the JSON to parse.
func JWKBytes(raw interface{}) ([]byte, error) {
	switch v := raw.(type) {
	case string:
		if len(v) > MaxJWKBytes {
			return nil, fieldError(fieldJWK, fmt.Sprintf("is %d bytes; at most %d accepted", len(v), MaxJWKBytes))
		}
		return []byte(v), nil
	case map[string]interface{}:
		b, err := json.Marshal(v)
		if err != nil || len(b) > MaxJWKBytes {
			return nil, fieldError(fieldJWK, "must be a JSON Web Key of at most 64 KiB")
		}
		return b, nil
	}
	return nil, fieldError(fieldJWK, "must be a JSON Web Key, as a JSON object or a string holding one")
}

// ParseJWK checks a JWK in full, with go-jose, before anyone uses it: kty
// and crv first (so that an unsupported key is refused for what it is),
// then the key's consistency. Messages name the member at fault and never
// echo key material.
func ParseJWK(data []byte, rules KeyRules) (Key, error) {
	var head struct {
		Kty string `json:"kty"`
		Alg string `json:"alg"`
		Crv string `json:"crv"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return Key{}, fieldError(fieldJWK, "is not valid JSON")
	}
	kind := Kind(head.Kty)
	switch {
	case kind == "":
		return Key{}, fieldError(fieldJWK, "has no kty; use "+kindList(rules.Kinds))
	case !rules.takes(kind):
		return Key{}, partError(fieldJWK, fmt.Sprintf("kty %q is not supported; use %s", head.Kty, kindList(rules.Kinds)))
	case kind == KindEC:
		switch head.Crv {
		case "P-256", "P-384", "P-521":
		default:
			return Key{}, partError(fieldJWK, fmt.Sprintf("crv %q is not supported; use %s", head.Crv, ecCurveList))
		}
	case kind == KindOKP && head.Crv != curveEd25519:
		return Key{}, partError(fieldJWK, fmt.Sprintf("crv %q is not supported; use %s", head.Crv, curveEd25519))
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err != nil {
		if refusal := jwkRefusal(data, kind, head.Crv, rules); refusal != nil {
			return Key{}, refusal
		}
		// Kept for the logs only: go-jose's text may quote the input.
		return Key{}, &InputError{Field: fieldJWK, Reason: "is not a valid JSON Web Key (RFC 7517)", err: err}
	}
	var k Key
	var err error
	switch key := jwk.Key.(type) {
	case []byte:
		k = Key{Field: fieldJWK, Kind: KindOct, Bits: len(key) * 8, Secret: append([]byte(nil), key...)}
	case *rsa.PrivateKey:
		k, err = rsaPrivateKey(fieldJWK, key, rules)
	case *rsa.PublicKey:
		k, err = rsaPublicKey(fieldJWK, key, rules)
	case *ecdsa.PrivateKey:
		k, err = ecPrivateKey(fieldJWK, key)
	case *ecdsa.PublicKey:
		k, err = ecPublicKey(fieldJWK, key)
	case ed25519.PrivateKey:
		if err = okpSizes(data, true); err == nil {
			k, err = ed25519PrivateKey(fieldJWK, key)
		}
	case ed25519.PublicKey:
		if err = okpSizes(data, false); err == nil {
			k = ed25519PublicKey(fieldJWK, key)
		}
	default:
		return Key{}, partError(fieldJWK, fmt.Sprintf("a %T key is not supported", key))
	}
	if err != nil {
		return Key{}, err
	}
	k.Alg = head.Alg
	return k, nil
}

// okpSizes checks the sizes of an Ed25519 JWK's x and d, which go-jose
// pads or cuts to 32 bytes without a word. go-jose has decoded them, so
// they are base64url strings.
func okpSizes(data []byte, private bool) error {
	var raw struct {
		X string `json:"x"`
		D string `json:"d"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return fieldError(fieldJWK, "is not valid JSON")
	}
	decodedLen := func(s string) int {
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
		if err != nil {
			return -1
		}
		return len(b)
	}
	if decodedLen(raw.X) != ed25519.PublicKeySize {
		return partError(fieldJWK, "x is not a 32-byte Ed25519 public key")
	}
	if private && decodedLen(raw.D) != ed25519.SeedSize {
		return partError(fieldJWK, "d is not a 32-byte Ed25519 private key")
	}
	return nil
}
