package hsmkms

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// maxJWKBytes bounds a JWK before it is parsed: an RSA-4096 private JWK is
// about 3.5 KiB.
const maxJWKBytes = 64 << 10

// hmacPadBytes: an HMAC key shorter than a SHA-2 block (64 bytes for
// SHA-256, 128 for SHA-384/512) is zero-padded to the block by HMAC
// itself, so padding it to 64 bytes gives the same MACs with every SHA-2,
// and satisfies tokens (SoftHSM) that refuse HMAC keys shorter than the
// hash.
const hmacPadBytes = 64

// keyMaterial is a key the caller sent in the clear (a JWK or a public
// key), checked and ready for the token.
type keyMaterial struct {
	keyType keyring.KeyType
	// material is what the token unwraps: raw bytes for AES and HMAC,
	// PKCS#8 DER for RSA and EC; nil for a public key alone.
	material []byte
	public   crypto.PublicKey
	field    string // the request field it came from, for messages
}

func (m keyMaterial) publicOnly() bool { return m.material == nil }

// jwkJSON accepts a JWK as a JSON string or as an object.
func jwkJSON(raw interface{}) ([]byte, string) {
	switch v := raw.(type) {
	case string:
		if len(v) > maxJWKBytes {
			return nil, fmt.Sprintf("jwk is %d bytes; at most %d accepted", len(v), maxJWKBytes)
		}
		return []byte(v), ""
	case map[string]interface{}:
		b, err := json.Marshal(v)
		if err != nil || len(b) > maxJWKBytes {
			return nil, "jwk must be a JSON Web Key of at most 64 KiB"
		}
		return b, ""
	}
	return nil, "jwk must be a JSON Web Key, as a JSON object or a string holding one"
}

// parseJWK checks a JWK in full before the HSM sees it. typ is the type
// the caller asked for ("" to take the JWK's); it decides between AES and
// HMAC for kty=oct. Messages name the field and never echo key material.
func parseJWK(raw interface{}, typ string) (keyMaterial, string) {
	data, msg := jwkJSON(raw)
	if msg != "" {
		return keyMaterial{}, msg
	}
	var head struct {
		Kty string `json:"kty"`
		Alg string `json:"alg"`
		Crv string `json:"crv"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return keyMaterial{}, "jwk is not valid JSON"
	}
	switch head.Kty {
	case "oct", "RSA", "EC":
	case "":
		return keyMaterial{}, "jwk has no kty; use oct, RSA or EC"
	default:
		return keyMaterial{}, fmt.Sprintf("jwk: kty %q is not supported; use oct, RSA or EC", head.Kty)
	}
	if head.Kty == "EC" {
		switch head.Crv {
		case "P-256", "P-384", "P-521":
		default:
			return keyMaterial{}, fmt.Sprintf("jwk: crv %q is not supported; use P-256, P-384 or P-521", head.Crv)
		}
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err != nil {
		reason := strings.TrimPrefix(err.Error(), "go-jose/go-jose: ")
		switch {
		case strings.Contains(reason, "CRT coefficient"):
			return keyMaterial{}, "jwk: qi does not match p and q"
		case strings.Contains(reason, "CRT exponent"):
			return keyMaterial{}, "jwk: dp or dq does not match d, p and q"
		}
		return keyMaterial{}, "jwk is not a valid JSON Web Key: " + reason
	}
	typ = strings.ToLower(typ)
	var m keyMaterial
	switch key := jwk.Key.(type) {
	case []byte:
		m, msg = octMaterial(key, typ, head.Alg)
	case *rsa.PrivateKey:
		m, msg = rsaPrivateMaterial(key)
	case *rsa.PublicKey:
		m, msg = rsaPublicMaterial(key, "jwk")
	case *ecdsa.PrivateKey:
		m, msg = ecPrivateMaterial(key)
	case *ecdsa.PublicKey:
		m, msg = ecPublicMaterial(key, "jwk")
	default:
		return keyMaterial{}, fmt.Sprintf("jwk: a %T key is not supported", key)
	}
	if msg != "" {
		return keyMaterial{}, msg
	}
	m.field = "jwk"
	if typ != "" && typ != m.keyType.Name && !(head.Kty == "oct" && typ == "hmac") {
		return keyMaterial{}, fmt.Sprintf("type %s does not match the jwk, which is a %s key", typ, m.keyType.Name)
	}
	return m, ""
}

func octMaterial(key []byte, typ, alg string) (keyMaterial, string) {
	if typ == "hmac" || strings.HasPrefix(strings.ToUpper(alg), "HS") {
		if len(key) < hsm.MinHMACImportBytes || len(key) > hsm.MaxHMACImportBytes {
			return keyMaterial{}, fmt.Sprintf("jwk: k is %d bytes; an HMAC key is %d to %d bytes", len(key), hsm.MinHMACImportBytes, hsm.MaxHMACImportBytes)
		}
		kt := keyTypeNamed("hmac")
		kt.Bits = len(key) * 8
		material := append([]byte(nil), key...)
		if len(material) < hmacPadBytes {
			material = append(material, make([]byte, hmacPadBytes-len(material))...)
		}
		return keyMaterial{keyType: kt, material: material}, ""
	}
	switch len(key) {
	case 16, 24, 32:
	default:
		return keyMaterial{}, fmt.Sprintf("jwk: k is %d bytes; an AES key is 16, 24 or 32 bytes (give type=hmac for an HMAC key)", len(key))
	}
	return keyMaterial{keyType: keyTypeNamed(fmt.Sprintf("aes%d-gcm96", len(key)*8)), material: append([]byte(nil), key...)}, ""
}

func rsaKeyType(bits int, field string) (keyring.KeyType, string) {
	kt, err := keyring.RSAType(bits, field)
	if err != nil {
		return keyring.KeyType{}, err.Error()
	}
	return kt, ""
}

func rsaPrivateMaterial(key *rsa.PrivateKey) (keyMaterial, string) {
	kt, msg := rsaKeyType(key.N.BitLen(), "jwk")
	if msg != "" {
		return keyMaterial{}, msg
	}
	if len(key.Primes) != 2 {
		return keyMaterial{}, "jwk: an RSA key needs exactly the two primes p and q (multi-prime keys are not supported)"
	}
	if key.E < 3 || key.E%2 == 0 {
		return keyMaterial{}, "jwk: e must be an odd exponent of at least 3"
	}
	p, q := key.Primes[0], key.Primes[1]
	one := big.NewInt(1)
	crt := map[string][2]*big.Int{
		"dp": {key.Precomputed.Dp, new(big.Int).Mod(key.D, new(big.Int).Sub(p, one))},
		"dq": {key.Precomputed.Dq, new(big.Int).Mod(key.D, new(big.Int).Sub(q, one))},
		"qi": {key.Precomputed.Qinv, new(big.Int).ModInverse(q, p)},
	}
	for _, name := range []string{"dp", "dq", "qi"} {
		given, want := crt[name][0], crt[name][1]
		if given != nil && (want == nil || given.Cmp(want) != 0) {
			return keyMaterial{}, fmt.Sprintf("jwk: %s does not match d, p and q", name)
		}
	}
	if err := key.Validate(); err != nil {
		return keyMaterial{}, "jwk: the RSA private key is inconsistent: n, e, d, p and q do not belong together"
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return keyMaterial{}, "jwk: the RSA private key cannot be encoded"
	}
	return keyMaterial{keyType: kt, material: der, public: &key.PublicKey}, ""
}

func rsaPublicMaterial(key *rsa.PublicKey, field string) (keyMaterial, string) {
	kt, msg := rsaKeyType(key.N.BitLen(), field)
	if msg != "" {
		return keyMaterial{}, msg
	}
	if key.E < 3 || key.E%2 == 0 {
		return keyMaterial{}, field + ": e must be an odd exponent of at least 3"
	}
	return keyMaterial{keyType: kt, public: key}, ""
}

func ecKeyType(curve elliptic.Curve, field string) (keyring.KeyType, string) {
	switch curve {
	case elliptic.P256():
		return keyTypeNamed("ecdsa-p256"), ""
	case elliptic.P384():
		return keyTypeNamed("ecdsa-p384"), ""
	case elliptic.P521():
		return keyTypeNamed("ecdsa-p521"), ""
	}
	return keyring.KeyType{}, field + ": the curve is not supported; use P-256, P-384 or P-521"
}

func ecPrivateMaterial(key *ecdsa.PrivateKey) (keyMaterial, string) {
	kt, msg := ecKeyType(key.Curve, "jwk")
	if msg != "" {
		return keyMaterial{}, msg
	}
	pub, err := key.PublicKey.ECDH()
	if err != nil {
		return keyMaterial{}, "jwk: x, y is not a point on " + kt.Curve
	}
	priv, err := key.ECDH()
	if err != nil {
		return keyMaterial{}, "jwk: d is not a valid private key on " + kt.Curve
	}
	if !priv.PublicKey().Equal(pub) {
		return keyMaterial{}, "jwk: x, y is not the public point of d"
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return keyMaterial{}, "jwk: the EC private key cannot be encoded"
	}
	return keyMaterial{keyType: kt, material: der, public: &key.PublicKey}, ""
}

func ecPublicMaterial(key *ecdsa.PublicKey, field string) (keyMaterial, string) {
	kt, msg := ecKeyType(key.Curve, field)
	if msg != "" {
		return keyMaterial{}, msg
	}
	if _, err := key.ECDH(); err != nil {
		return keyMaterial{}, field + ": x, y is not a point on " + kt.Curve
	}
	return keyMaterial{keyType: kt, public: key}, ""
}

// parsePublicKeyPEM reads Transit's public_key field: a PEM public key.
func parsePublicKeyPEM(s, typ string) (keyMaterial, string) {
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		return keyMaterial{}, "public_key must be a PEM public key"
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		if rsaPub, rerr := x509.ParsePKCS1PublicKey(block.Bytes); rerr == nil {
			pub = rsaPub
		} else {
			return keyMaterial{}, "public_key is not a PKIX or PKCS#1 public key"
		}
	}
	var m keyMaterial
	var msg string
	switch key := pub.(type) {
	case *rsa.PublicKey:
		m, msg = rsaPublicMaterial(key, "public_key")
	case *ecdsa.PublicKey:
		m, msg = ecPublicMaterial(key, "public_key")
	default:
		return keyMaterial{}, fmt.Sprintf("public_key: a %T key is not supported; RSA or EC", key)
	}
	if msg != "" {
		return keyMaterial{}, msg
	}
	m.field = "public_key"
	if typ != "" && !strings.EqualFold(typ, m.keyType.Name) {
		return keyMaterial{}, fmt.Sprintf("type %s does not match public_key, which is a %s key", typ, m.keyType.Name)
	}
	return m, ""
}
