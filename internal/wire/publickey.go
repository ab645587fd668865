package wire

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// PublicKeyPEM is Transit's form of a public key: the PKIX DER in a PEM
// block; "" when there is none.
func PublicKeyPEM(der []byte) string {
	if len(der) == 0 {
		return ""
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// Ed25519PublicKey is Transit's form of an Ed25519 public key: the base64
// of its 32 raw bytes; "" when der is not a PKIX Ed25519 key.
func Ed25519PublicKey(der []byte) string {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return ""
	}
	raw, ok := pub.(ed25519.PublicKey)
	if !ok {
		return ""
	}
	return base64.StdEncoding.EncodeToString(raw)
}

// PublicJWK is the RFC 7517/7518 public JWK of a PKIX public key, for
// signatures, as a JSON object.
func PublicJWK(der []byte, kid string) (map[string]interface{}, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	raw, err := jose.JSONWebKey{Key: pub, KeyID: kid, Use: "sig"}.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("public JWK: %w", err)
	}
	var out map[string]interface{}
	return out, json.Unmarshal(raw, &out)
}
