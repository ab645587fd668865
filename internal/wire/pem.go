package wire

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

const fieldPublicKey = "public_key"

// ParsePublicKeyPEM reads Transit's public_key field: a PKIX (or PKCS#1
// RSA) public key in PEM, checked as ParseJWK checks a public JWK.
func ParsePublicKeyPEM(s string, rules KeyRules) (Key, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		return Key{}, fieldError(fieldPublicKey, "must be a PEM public key")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		rsaPub, rerr := x509.ParsePKCS1PublicKey(block.Bytes)
		if rerr != nil {
			return Key{}, fieldError(fieldPublicKey, "is not a PKIX or PKCS#1 public key")
		}
		pub = rsaPub
	}
	switch key := pub.(type) {
	case *rsa.PublicKey:
		if rules.takes(KindRSA) {
			return rsaPublicKey(fieldPublicKey, key, rules)
		}
	case *ecdsa.PublicKey:
		if rules.takes(KindEC) {
			return ecPublicKey(fieldPublicKey, key)
		}
	case ed25519.PublicKey:
		if rules.takes(KindOKP) {
			return ed25519PublicKey(fieldPublicKey, key), nil
		}
	}
	var public []Kind
	for _, k := range rules.Kinds {
		if k != KindOct {
			public = append(public, k)
		}
	}
	return Key{}, partError(fieldPublicKey, fmt.Sprintf("a %T key is not supported; %s", pub, kindList(public)))
}
