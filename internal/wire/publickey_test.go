package wire

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"testing"
)

func TestPublicKeyEncodings(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, err := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	edDER, err := x509.MarshalPKIXPublicKey(edPub)
	if err != nil {
		t.Fatal(err)
	}

	block, rest := pem.Decode([]byte(PublicKeyPEM(ecDER)))
	if block == nil || block.Type != "PUBLIC KEY" || string(block.Bytes) != string(ecDER) || len(rest) != 0 {
		t.Fatalf("PEM of an EC key: %v", block)
	}
	if PublicKeyPEM(nil) != "" {
		t.Fatal("PEM of no key is not empty")
	}

	if got := Ed25519PublicKey(edDER); got != base64.StdEncoding.EncodeToString(edPub) {
		t.Fatalf("raw Ed25519: %q", got)
	}
	if Ed25519PublicKey(ecDER) != "" || Ed25519PublicKey([]byte("junk")) != "" {
		t.Fatal("raw Ed25519 of a non-Ed25519 key is not empty")
	}

	jwk, err := PublicJWK(ecDER, "k:v1")
	if err != nil {
		t.Fatal(err)
	}
	if jwk["kty"] != "EC" || jwk["crv"] != "P-256" || jwk["kid"] != "k:v1" || jwk["use"] != "sig" || jwk["d"] != nil {
		t.Fatalf("JWK of an EC key: %v", jwk)
	}
	jwk, err = PublicJWK(edDER, "e:v2")
	if err != nil || jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" || jwk["x"] != base64.RawURLEncoding.EncodeToString(edPub) {
		t.Fatalf("JWK of an Ed25519 key: %v %v", jwk, err)
	}
	if _, err := PublicJWK([]byte("junk"), "x"); err == nil {
		t.Fatal("JWK of junk")
	}
}
