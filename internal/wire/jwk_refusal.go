package wire

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
)

// jwkKeyMembers are the members go-jose decodes as base64url, whatever the
// kty.
var jwkKeyMembers = []string{"k", "x", "y", "n", "e", "d", "p", "q", "dp", "dq", "qi"}

// jwkTextMembers are the other members go-jose reads, each a string.
var jwkTextMembers = []string{"use", "kid", "x5u", "x5t", "x5t#S256"}

// jwkRefusal says, in our words, what is wrong with a JWK go-jose refused
// after ParseJWK took its kty and crv. go-jose's errors are plain text,
// not values to test, and some quote what they were given (a URL, a
// character of the JSON), so they are never shown. It checks the members
// go-jose reads, then hands a key whose members decode to the checks
// ParseJWK runs on every parsed key, which name the member at fault. nil:
// no member is found at fault.
func jwkRefusal(data []byte, kind Kind, crv string, rules KeyRules) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil {
		return fieldError(fieldJWK, "is not valid JSON")
	}
	if name, ok := duplicateMember(data); ok {
		return partError(fieldJWK, name+" is given twice")
	}
	if _, ok := members["kty"]; !ok {
		// ParseJWK's first reading ignores case, as encoding/json does;
		// member names are case-sensitive (RFC 7517, section 4).
		return fieldError(fieldJWK, "has no kty (member names are case-sensitive); use "+kindList(rules.Kinds))
	}
	if _, ok := members["crv"]; !ok && (kind == KindEC || kind == KindOKP) {
		return partError(fieldJWK, "crv is missing (member names are case-sensitive)")
	}
	given := func(name string) (json.RawMessage, bool) {
		raw, ok := members[name]
		return raw, ok && string(raw) != "null"
	}
	for _, name := range jwkTextMembers {
		if raw, ok := given(name); ok {
			if err := json.Unmarshal(raw, new(string)); err != nil {
				return partError(fieldJWK, name+" must be a string")
			}
		}
	}
	if raw, ok := given("x5c"); ok {
		if err := json.Unmarshal(raw, new([]string)); err != nil {
			return partError(fieldJWK, "x5c must be a list of base64 certificates")
		}
	}
	decoded := map[string][]byte{}
	for _, name := range jwkKeyMembers {
		raw, ok := given(name)
		if !ok {
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return partError(fieldJWK, name+" must be a base64url string")
		}
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			return partError(fieldJWK, name+" is not base64url (RFC 7515, without padding)")
		}
		decoded[name] = b
	}
	if err := missingMembers(kind, decoded); err != nil {
		return err
	}
	var err error
	switch _, private := decoded["d"]; {
	case kind == KindEC:
		err = ecRefusal(crv, decoded)
	case kind == KindRSA && private:
		err = rsaRefusal(decoded, rules)
	}
	if err != nil {
		return err
	}
	for _, name := range []string{"x5c", "x5u", "x5t", "x5t#S256"} {
		if _, ok := given(name); ok {
			return partError(fieldJWK, "x5c, x5u, x5t or x5t#S256 is not valid (RFC 7517, section 4); leave them out: the key does not need them")
		}
	}
	return nil
}

// duplicateMember finds a member the JWK gives twice, which go-jose
// refuses and encoding/json reads as the last one given. A name the JWK
// does not define is not repeated back: it may be anything.
func duplicateMember(data []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", false
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return "", false
		}
		name, _ := t.(string)
		if seen[name] {
			if slices.Contains(jwkKeyMembers, name) || slices.Contains(jwkTextMembers, name) || slices.Contains([]string{"kty", "crv", "alg", "x5c"}, name) {
				return name, true
			}
			return "a member", true
		}
		seen[name] = true
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return "", false
		}
	}
	return "", false
}

// missingMembers names the members a key of kind lacks.
func missingMembers(kind Kind, decoded map[string][]byte) error {
	_, private := decoded["d"]
	var need []string
	var what string
	switch kind {
	case KindOct:
		need, what = []string{"k"}, "an oct key"
	case KindRSA:
		need, what = []string{"n", "e"}, "an RSA public key"
		if private {
			need, what = []string{"n", "e", "d", "p", "q"}, "an RSA private key"
		}
	case KindEC:
		need, what = []string{"x", "y"}, "an EC public key"
		if private {
			need, what = []string{"x", "y", "d"}, "an EC private key"
		}
	case KindOKP:
		need, what = []string{"x"}, "an Ed25519 public key"
		if private {
			need, what = []string{"x", "d"}, "an Ed25519 private key"
		}
	}
	var missing []string
	for _, name := range need {
		if _, ok := decoded[name]; !ok {
			missing = append(missing, name)
		}
	}
	switch {
	case len(missing) == 0:
		return nil
	case len(missing) == len(need):
		return partError(fieldJWK, fmt.Sprintf("%s needs %s", what, andList(need)))
	case len(missing) == 1:
		return partError(fieldJWK, fmt.Sprintf("%s needs %s; %s is missing", what, andList(need), missing[0]))
	}
	return partError(fieldJWK, fmt.Sprintf("%s needs %s; %s are missing", what, andList(need), andList(missing)))
}

// ecRefusal checks an EC key's member sizes (RFC 7518, section 6.2), then
// its point and private scalar.
func ecRefusal(crv string, decoded map[string][]byte) error {
	var curve elliptic.Curve
	for _, c := range ecCurves {
		if c.Params().Name == crv {
			curve = c
		}
	}
	if curve == nil {
		return partError(fieldJWK, fmt.Sprintf("crv %q is not supported; use %s", crv, ecCurveList))
	}
	size := (curve.Params().BitSize + 7) / 8
	for _, name := range []string{"x", "y", "d"} {
		if b, ok := decoded[name]; ok && len(b) != size {
			return partError(fieldJWK, fmt.Sprintf("%s is %d bytes; on %s it is %d", name, len(b), crv, size))
		}
	}
	pub := ecdsa.PublicKey{Curve: curve, X: new(big.Int).SetBytes(decoded["x"]), Y: new(big.Int).SetBytes(decoded["y"])}
	if d, ok := decoded["d"]; ok {
		_, err := ecPrivateKey(fieldJWK, &ecdsa.PrivateKey{PublicKey: pub, D: new(big.Int).SetBytes(d)})
		return err
	}
	_, err := ecPublicKey(fieldJWK, &pub)
	return err
}

// rsaRefusal checks an RSA private key as every parsed one is checked,
// which names the CRT value or says the parts do not belong together.
func rsaRefusal(decoded map[string][]byte, rules KeyRules) error {
	num := func(name string) *big.Int {
		if b, ok := decoded[name]; ok {
			return new(big.Int).SetBytes(b)
		}
		return nil
	}
	e := num("e")
	if e.BitLen() > 31 {
		return partError(fieldJWK, "e is larger than 31 bits; use 65537")
	}
	key := &rsa.PrivateKey{
		PublicKey:   rsa.PublicKey{N: num("n"), E: int(e.Int64())},
		D:           num("d"),
		Primes:      []*big.Int{num("p"), num("q")},
		Precomputed: rsa.PrecomputedValues{Dp: num("dp"), Dq: num("dq"), Qinv: num("qi")},
	}
	_, err := rsaPrivateKey(fieldJWK, key, rules)
	return err
}
