package wire

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// importRules are the plugin's today: Ed25519 keys are made in the HSM.
var importRules = KeyRules{Kinds: []Kind{KindOct, KindRSA, KindEC}, RSABits: []int{2048, 3072, 4096}}

var allKinds = KeyRules{Kinds: []Kind{KindOct, KindRSA, KindEC, KindOKP}, RSABits: []int{2048, 3072, 4096}}

func jwkMap(t *testing.T, key interface{}) map[string]interface{} {
	t.Helper()
	b, err := jose.JSONWebKey{Key: key}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]interface{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func with(m map[string]interface{}, k string, v interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for mk, mv := range m {
		out[mk] = mv
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

func mustJSON(t *testing.T, m map[string]interface{}) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func TestParseJWKKeys(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	secret := []byte("0123456789abcdef0123456789abcdef")
	for _, tc := range []struct {
		name  string
		key   map[string]interface{}
		rules KeyRules
		kind  Kind
		bits  int
		curve string
		priv  bool
	}{
		{"oct", with(jwkMap(t, secret), "alg", "HS256"), importRules, KindOct, 256, "", false},
		{"rsa private", jwkMap(t, rsaKey), importRules, KindRSA, 2048, "", true},
		{"rsa public", jwkMap(t, &rsaKey.PublicKey), importRules, KindRSA, 2048, "", false},
		{"ec private", jwkMap(t, ecKey), importRules, KindEC, 0, "P-384", true},
		{"ec public", jwkMap(t, &ecKey.PublicKey), importRules, KindEC, 0, "P-384", false},
		{"ed25519 private", jwkMap(t, edKey), allKinds, KindOKP, 0, "Ed25519", true},
		{"ed25519 public", jwkMap(t, edPub), allKinds, KindOKP, 0, "Ed25519", false},
	} {
		k, err := ParseJWK(mustJSON(t, tc.key), tc.rules)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if k.Kind != tc.kind || k.Bits != tc.bits || k.Curve != tc.curve || (k.Private != nil) != tc.priv || k.Field != "jwk" || k.PublicOnly() != (!tc.priv && tc.kind != KindOct) {
			t.Errorf("%s: kind %s, %d bits, curve %q, private %v", tc.name, k.Kind, k.Bits, k.Curve, k.Private != nil)
		}
		if tc.priv {
			priv, err := x509.ParsePKCS8PrivateKey(k.Private)
			if err != nil {
				t.Errorf("%s: PKCS#8: %v", tc.name, err)
			} else if !priv.(interface{ Public() crypto.PublicKey }).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public) {
				t.Errorf("%s: private and public parts differ", tc.name)
			}
		}
	}
	k, err := ParseJWK(mustJSON(t, with(jwkMap(t, secret), "alg", "HS256")), importRules)
	if err != nil || string(k.Secret) != string(secret) || k.Alg != "HS256" {
		t.Fatalf("oct: %q %q %v", k.Secret, k.Alg, err)
	}
}

// The messages the import paths have always given: they name the member
// at fault and never quote key material.
func TestParseJWKMessages(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsaJWK := jwkMap(t, rsaKey)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecJWK := jwkMap(t, ecKey)
	otherEC, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	y, _ := base64.RawURLEncoding.DecodeString(ecJWK["y"].(string))
	y[len(y)-1] ^= 1
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	otherEd, _, _ := ed25519.GenerateKey(rand.Reader)
	edJWK := jwkMap(t, edKey)
	bump := func(v *big.Int) string { return b64url(new(big.Int).Add(v, big.NewInt(2)).Bytes()) }
	for _, tc := range []struct {
		name  string
		data  string
		rules KeyRules
		want  string
	}{
		{"not JSON", `{`, importRules, "jwk is not valid JSON"},
		{"no kty", `{"k":"AAAA"}`, importRules, "jwk has no kty; use oct, RSA or EC"},
		{"OKP not taken", `{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`, importRules, `jwk: kty "OKP" is not supported; use oct, RSA or EC`},
		{"unknown kty", `{"kty":"oct2"}`, allKinds, `jwk: kty "oct2" is not supported; use oct, RSA, EC or OKP`},
		{"EC curve", `{"kty":"EC","crv":"P-192"}`, importRules, `jwk: crv "P-192" is not supported; use P-256, P-384 or P-521`},
		{"OKP curve", `{"kty":"OKP","crv":"X25519","x":"AA"}`, allKinds, `jwk: crv "X25519" is not supported; use Ed25519`},
		{"no k", `{"kty":"oct"}`, importRules, "jwk: an oct key needs k"},
		{"no p or q", string(mustJSON(t, with(with(rsaJWK, "p", nil), "q", nil))), importRules, "jwk: an RSA private key needs n, e, d, p and q; p and q are missing"},
		{"no y", string(mustJSON(t, with(ecJWK, "y", nil))), importRules, "jwk: an EC private key needs x, y and d; y is missing"},
		{"d not base64url", string(mustJSON(t, with(ecJWK, "d", "!!"))), importRules, "jwk: d is not base64url (RFC 7515, without padding)"},
		{"n not a string", string(mustJSON(t, with(rsaJWK, "n", 5))), importRules, "jwk: n must be a base64url string"},
		{"kid not a string", string(mustJSON(t, with(ecJWK, "kid", 5))), importRules, "jwk: kid must be a string"},
		{"x5c not a list", string(mustJSON(t, with(ecJWK, "x5c", "AAAA"))), importRules, "jwk: x5c must be a list of base64 certificates"},
		{"x5c not a certificate", string(mustJSON(t, with(ecJWK, "x5c", []string{"AAAA"}))), importRules, "jwk: x5c, x5u, x5t or x5t#S256 is not valid (RFC 7517, section 4); leave them out: the key does not need them"},
		{"kty in another case", `{"Kty":"oct","k":"AAAAAAAAAAAAAAAAAAAAAA"}`, importRules, "jwk has no kty (member names are case-sensitive); use oct, RSA or EC"},
		{"crv in another case", `{"kty":"OKP","Crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`, allKinds, "jwk: crv is missing (member names are case-sensitive)"},
		{"kty twice", `{"kty":"oct","k":"AAAAAAAAAAAAAAAAAAAAAA","kty":"oct"}`, importRules, "jwk: kty is given twice"},
		{"unknown member twice", `{"kty":"oct","k":"AAAAAAAAAAAAAAAAAAAAAA","s3cr3t":1,"s3cr3t":2}`, importRules, "jwk: a member is given twice"},
		{"EC short x", string(mustJSON(t, with(ecJWK, "x", b64url(make([]byte, 31))))), importRules, "jwk: x is 31 bytes; on P-256 it is 32"},
		{"p not a factor", string(mustJSON(t, with(rsaJWK, "p", bump(rsaKey.Primes[0])))), importRules, "jwk: p and q are not the factors of n"},
		{"wrong qi", string(mustJSON(t, with(rsaJWK, "qi", bump(rsaKey.Precomputed.Qinv)))), importRules, "jwk: qi does not match p and q"},
		{"wrong dp", string(mustJSON(t, with(rsaJWK, "dp", bump(rsaKey.Precomputed.Dp)))), importRules, "jwk: dp does not match d and p"},
		{"wrong dq", string(mustJSON(t, with(rsaJWK, "dq", bump(rsaKey.Precomputed.Dq)))), importRules, "jwk: dq does not match d and q"},
		{"RSA size", string(mustJSON(t, jwkMap(t, smallRSA))), importRules, "jwk: an RSA key of 1024 bits; 2048, 3072 or 4096 supported"},
		{"RSA public e", string(mustJSON(t, with(jwkMap(t, &rsaKey.PublicKey), "e", "AQAA"))), importRules, "jwk: e must be an odd exponent of at least 3"},
		{"RSA wrong d", string(mustJSON(t, with(with(with(with(rsaJWK, "d", bump(rsaKey.D)), "dp", nil), "dq", nil), "qi", nil))), importRules, "jwk: the RSA private key is inconsistent: n, e, d, p and q do not belong together"},
		{"EC off curve", string(mustJSON(t, with(ecJWK, "y", b64url(y)))), importRules, "jwk: x, y is not a point on P-256"},
		{"EC public off curve", string(mustJSON(t, with(with(ecJWK, "y", b64url(y)), "d", nil))), importRules, "jwk: x, y is not a point on P-256"},
		{"EC d of another key", string(mustJSON(t, with(ecJWK, "d", b64url(otherEC.D.FillBytes(make([]byte, 32)))))), importRules, "jwk: x, y is not the public point of d"},
		{"Ed25519 short x", `{"kty":"OKP","crv":"Ed25519","x":"AAAA"}`, allKinds, "jwk: x is not a 32-byte Ed25519 public key"},
		{"Ed25519 short d", string(mustJSON(t, with(edJWK, "d", "AAAA"))), allKinds, "jwk: d is not a 32-byte Ed25519 private key"},
		{"Ed25519 x of another key", string(mustJSON(t, with(edJWK, "x", b64url(otherEd)))), allKinds, "jwk: x is not the public key of d"},
	} {
		_, err := ParseJWK([]byte(tc.data), tc.rules)
		var ie *InputError
		if !errors.As(err, &ie) || ie.Field != "jwk" || err.Error() != tc.want {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		for _, secret := range []string{b64url(rsaKey.D.Bytes()), b64url(ecKey.D.Bytes()), b64url(edKey.Seed())} {
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("%s: the message quotes a private key", tc.name)
			}
		}
	}
}

func TestJWKBytes(t *testing.T) {
	if b, err := JWKBytes(`{"kty":"oct"}`); err != nil || string(b) != `{"kty":"oct"}` {
		t.Fatalf("string: %q %v", b, err)
	}
	if b, err := JWKBytes(map[string]interface{}{"kty": "oct"}); err != nil || string(b) != `{"kty":"oct"}` {
		t.Fatalf("object: %q %v", b, err)
	}
	for _, tc := range []struct {
		raw  interface{}
		want string
	}{
		{strings.Repeat(" ", MaxJWKBytes+1), "jwk is 65537 bytes; at most 65536 accepted"},
		{map[string]interface{}{"k": strings.Repeat("A", MaxJWKBytes)}, "jwk must be a JSON Web Key of at most 64 KiB"},
		{[]interface{}{"x"}, "jwk must be a JSON Web Key, as a JSON object or a string holding one"},
		{42, "jwk must be a JSON Web Key, as a JSON object or a string holding one"},
	} {
		if _, err := JWKBytes(tc.raw); err == nil || err.Error() != tc.want {
			t.Errorf("%T: %v, want %q", tc.raw, err, tc.want)
		}
	}
}

func pemOf(t *testing.T, pub interface{}) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func TestParsePublicKeyPEM(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)}))
	for _, tc := range []struct {
		pem   string
		rules KeyRules
		kind  Kind
		bits  int
		curve string
	}{
		{pemOf(t, &rsaKey.PublicKey), importRules, KindRSA, 2048, ""},
		{pkcs1, importRules, KindRSA, 2048, ""},
		{pemOf(t, &ecKey.PublicKey), importRules, KindEC, 0, "P-521"},
		{pemOf(t, edPub), allKinds, KindOKP, 0, "Ed25519"},
	} {
		k, err := ParsePublicKeyPEM(tc.pem, tc.rules)
		if err != nil || k.Kind != tc.kind || k.Bits != tc.bits || k.Curve != tc.curve || k.Field != "public_key" || !k.PublicOnly() {
			t.Errorf("%s: %+v %v", tc.kind, k, err)
		}
	}
	for _, tc := range []struct {
		pem  string
		want string
	}{
		{"not pem", "public_key must be a PEM public key"},
		{string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")})), "public_key is not a PKIX or PKCS#1 public key"},
		{pemOf(t, edPub), "public_key: a ed25519.PublicKey key is not supported; RSA or EC"},
		{pemOf(t, &p224.PublicKey), "public_key: the curve is not supported; use P-256, P-384 or P-521"},
	} {
		_, err := ParsePublicKeyPEM(tc.pem, importRules)
		var ie *InputError
		if !errors.As(err, &ie) || ie.Field != "public_key" || err.Error() != tc.want {
			t.Errorf("%v, want %q", err, tc.want)
		}
	}
}
