package hsmkms

import (
	"crypto"
	"fmt"
	"strings"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

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

// importKeyRules are the JWKs and PEM public keys import takes: the RSA
// sizes of the key types, and no kty OKP (Ed25519 keys are generated in
// the HSM).
var importKeyRules = wire.KeyRules{
	Kinds:   []wire.Kind{wire.KindOct, wire.KindRSA, wire.KindEC},
	RSABits: []int{2048, 3072, 4096},
}

// parseJWK checks a JWK in full before the HSM sees it (wire.ParseJWK)
// and maps it to a key type. typ is the type the caller asked for ("" to
// take the JWK's); it decides between AES and HMAC for kty=oct. Its errors
// are the caller's: they name the field and never echo key material.
func parseJWK(raw interface{}, typ string) (keyMaterial, error) {
	data, err := wire.JWKBytes(raw)
	if err != nil {
		return keyMaterial{}, err
	}
	key, err := wire.ParseJWK(data, importKeyRules)
	if err != nil {
		return keyMaterial{}, err
	}
	typ = strings.ToLower(typ)
	m, err := importedMaterial(key, typ)
	if err != nil {
		return keyMaterial{}, err
	}
	if typ != "" && typ != m.keyType.Name && !(key.Kind == wire.KindOct && typ == "hmac") {
		return keyMaterial{}, keyring.Userf("type %s does not match the jwk, which is a %s key", typ, m.keyType.Name)
	}
	return m, nil
}

// importedMaterial is the key type a checked key becomes. For kty=oct, typ
// (lower case) and the JWK's alg decide between AES and HMAC.
func importedMaterial(key wire.Key, typ string) (keyMaterial, error) {
	var m keyMaterial
	switch key.Kind {
	case wire.KindOct:
		var err error
		if m, err = octMaterial(key.Secret, typ, key.Alg); err != nil {
			return keyMaterial{}, err
		}
	case wire.KindRSA:
		m = keyMaterial{keyType: keyTypeNamed(fmt.Sprintf("rsa-%d", key.Bits)), material: key.Private, public: key.Public}
	case wire.KindEC:
		m = keyMaterial{keyType: keyTypeNamed("ecdsa-p" + strings.TrimPrefix(key.Curve, "P-")), material: key.Private, public: key.Public}
	}
	if m.keyType.Name == "" {
		// importKeyRules and the key types disagree: a bug, said plainly.
		return keyMaterial{}, keyring.FieldErrorf(key.Field, "a %s key is not supported", key.Kind)
	}
	m.field = key.Field
	return m, nil
}

func octMaterial(key []byte, typ, alg string) (keyMaterial, error) {
	if typ == "hmac" || strings.HasPrefix(strings.ToUpper(alg), "HS") {
		if len(key) < hsm.MinHMACImportBytes || len(key) > hsm.MaxHMACImportBytes {
			return keyMaterial{}, keyring.FieldErrorf("jwk", "k is %d bytes; an HMAC key is %d to %d bytes", len(key), hsm.MinHMACImportBytes, hsm.MaxHMACImportBytes)
		}
		kt := keyTypeNamed("hmac")
		kt.Bits = len(key) * 8
		material := append([]byte(nil), key...)
		if len(material) < hmacPadBytes {
			material = append(material, make([]byte, hmacPadBytes-len(material))...)
		}
		return keyMaterial{keyType: kt, material: material}, nil
	}
	switch len(key) {
	case 16, 24, 32:
	default:
		return keyMaterial{}, keyring.FieldErrorf("jwk", "k is %d bytes; an AES key is 16, 24 or 32 bytes (give type=hmac for an HMAC key)", len(key))
	}
	return keyMaterial{keyType: keyTypeNamed(fmt.Sprintf("aes%d-gcm96", len(key)*8)), material: append([]byte(nil), key...)}, nil
}

// parsePublicKeyPEM reads Transit's public_key field: a PEM public key.
func parsePublicKeyPEM(s, typ string) (keyMaterial, error) {
	key, err := wire.ParsePublicKeyPEM(s, importKeyRules)
	if err != nil {
		return keyMaterial{}, err
	}
	m, err := importedMaterial(key, "")
	if err != nil {
		return keyMaterial{}, err
	}
	if typ != "" && !strings.EqualFold(typ, m.keyType.Name) {
		return keyMaterial{}, keyring.Userf("type %s does not match public_key, which is a %s key", typ, m.keyType.Name)
	}
	return m, nil
}
