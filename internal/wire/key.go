package wire

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
)

// Kind is a key's JWK key type (kty).
type Kind string

const (
	KindOct Kind = "oct"
	KindRSA Kind = "RSA"
	KindEC  Kind = "EC"
	KindOKP Kind = "OKP" // Ed25519 only
)

// KeyRules are the keys a caller takes. The parsers check them at the
// point where a message about them belongs, before the key's consistency,
// so that a key of a refused size is refused for its size.
type KeyRules struct {
	Kinds   []Kind // the kty taken, in the order messages name them
	RSABits []int  // the RSA modulus sizes taken, in the order messages name them
}

func (r KeyRules) takes(k Kind) bool { return slices.Contains(r.Kinds, k) }

// Key is a JWK or a PEM public key, parsed and checked: its parts belong
// together. Which key type it becomes is the caller's to decide.
type Key struct {
	Field   string // where it came from: "jwk" or "public_key"
	Kind    Kind
	Alg     string           // the JWK's alg as given; "" for PEM
	Bits    int              // oct: len(Secret)*8; RSA: the modulus size
	Curve   string           // EC: P-256, P-384 or P-521; OKP: Ed25519
	Secret  []byte           // oct: the key, a copy
	Private []byte           // RSA, EC, OKP: the private key as PKCS#8 DER; nil for a public key
	Public  crypto.PublicKey // RSA, EC, OKP
}

// PublicOnly reports an asymmetric key given without its private part.
func (k Key) PublicOnly() bool { return k.Kind != KindOct && k.Private == nil }

// ecCurves are the curves of JWK (RFC 7518) that Go's ECDSA has.
var ecCurves = []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()}

const ecCurveList = "P-256, P-384 or P-521"

func ecCurveName(c elliptic.Curve) (string, bool) {
	for _, known := range ecCurves {
		if c == known {
			return known.Params().Name, true
		}
	}
	return "", false
}

func rsaSize(field string, bits int, rules KeyRules) error {
	if !slices.Contains(rules.RSABits, bits) {
		sizes := make([]string, len(rules.RSABits))
		for i, b := range rules.RSABits {
			sizes[i] = strconv.Itoa(b)
		}
		return partError(field, fmt.Sprintf("an RSA key of %d bits; %s supported", bits, orList(sizes)))
	}
	return nil
}

func rsaPrivateKey(field string, key *rsa.PrivateKey, rules KeyRules) (Key, error) {
	bits := key.N.BitLen()
	if err := rsaSize(field, bits, rules); err != nil {
		return Key{}, err
	}
	if len(key.Primes) != 2 {
		return Key{}, partError(field, "an RSA key needs exactly the two primes p and q (multi-prime keys are not supported)")
	}
	if key.E < 3 || key.E%2 == 0 {
		return Key{}, partError(field, "e must be an odd exponent of at least 3")
	}
	p, q := key.Primes[0], key.Primes[1]
	one := big.NewInt(1)
	if p.Cmp(one) <= 0 || q.Cmp(one) <= 0 || new(big.Int).Mul(p, q).Cmp(key.N) != 0 {
		return Key{}, partError(field, "p and q are not the factors of n")
	}
	// The CRT values a JWK carries are used by whoever holds the key: a
	// wrong one would make a key whose signatures do not verify.
	crt := []struct {
		name, of    string
		given, want *big.Int
	}{
		{"dp", "d and p", key.Precomputed.Dp, new(big.Int).Mod(key.D, new(big.Int).Sub(p, one))},
		{"dq", "d and q", key.Precomputed.Dq, new(big.Int).Mod(key.D, new(big.Int).Sub(q, one))},
		{"qi", "p and q", key.Precomputed.Qinv, new(big.Int).ModInverse(q, p)},
	}
	for _, c := range crt {
		if c.given != nil && (c.want == nil || c.given.Cmp(c.want) != 0) {
			return Key{}, partError(field, c.name+" does not match "+c.of)
		}
	}
	if err := key.Validate(); err != nil {
		return Key{}, partError(field, "the RSA private key is inconsistent: n, e, d, p and q do not belong together")
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Key{}, partError(field, "the RSA private key cannot be encoded")
	}
	return Key{Field: field, Kind: KindRSA, Bits: bits, Private: der, Public: &key.PublicKey}, nil
}

func rsaPublicKey(field string, key *rsa.PublicKey, rules KeyRules) (Key, error) {
	bits := key.N.BitLen()
	if err := rsaSize(field, bits, rules); err != nil {
		return Key{}, err
	}
	if key.E < 3 || key.E%2 == 0 {
		return Key{}, partError(field, "e must be an odd exponent of at least 3")
	}
	return Key{Field: field, Kind: KindRSA, Bits: bits, Public: key}, nil
}

func ecPrivateKey(field string, key *ecdsa.PrivateKey) (Key, error) {
	curve, ok := ecCurveName(key.Curve)
	if !ok {
		return Key{}, partError(field, "the curve is not supported; use "+ecCurveList)
	}
	pub, err := key.PublicKey.ECDH()
	if err != nil {
		return Key{}, partError(field, "x, y is not a point on "+curve)
	}
	priv, err := key.ECDH()
	if err != nil {
		return Key{}, partError(field, "d is not a valid private key on "+curve)
	}
	if !priv.PublicKey().Equal(pub) {
		return Key{}, partError(field, "x, y is not the public point of d")
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Key{}, partError(field, "the EC private key cannot be encoded")
	}
	return Key{Field: field, Kind: KindEC, Curve: curve, Private: der, Public: &key.PublicKey}, nil
}

func ecPublicKey(field string, key *ecdsa.PublicKey) (Key, error) {
	curve, ok := ecCurveName(key.Curve)
	if !ok {
		return Key{}, partError(field, "the curve is not supported; use "+ecCurveList)
	}
	if _, err := key.ECDH(); err != nil {
		return Key{}, partError(field, "x, y is not a point on "+curve)
	}
	return Key{Field: field, Kind: KindEC, Curve: curve, Public: key}, nil
}

const curveEd25519 = "Ed25519"

func ed25519PublicKey(field string, key ed25519.PublicKey) Key {
	return Key{Field: field, Kind: KindOKP, Curve: curveEd25519, Public: key}
}

// ed25519PrivateKey takes a key whose seed and public half are each 32
// bytes (go-jose pads or cuts them without a word: the JWK parser checks).
func ed25519PrivateKey(field string, key ed25519.PrivateKey) (Key, error) {
	derived := ed25519.NewKeyFromSeed(key.Seed())
	if !derived.Public().(ed25519.PublicKey).Equal(key.Public()) {
		return Key{}, partError(field, "x is not the public key of d")
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Key{}, partError(field, "the Ed25519 private key cannot be encoded")
	}
	return Key{Field: field, Kind: KindOKP, Curve: curveEd25519, Private: der, Public: key.Public()}, nil
}

// orList joins names as messages list them: "a, b or c".
func orList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// andList joins names as messages list them: "a, b and c".
func andList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

func kindList(kinds []Kind) string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	return orList(names)
}
