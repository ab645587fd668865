package hsm

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/asn1"
	"fmt"

	"github.com/miekg/pkcs11"
)

// PKCS#11 3.0's Edwards-curve identifiers (miekg/pkcs11 predates them).
const (
	ckkECEdwards           = 0x40
	ckmECEdwardsKeyPairGen = 0x1055
	ckmEdDSA               = 0x1057
)

// ed25519Params is CKA_EC_PARAMS for Ed25519: the curve's OID (RFC 8410).
var ed25519Params = func() []byte {
	der, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 3, 101, 112})
	return der
}()

// ErrNoEd25519: the token has no Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN,
// CKM_EDDSA); NSS softokn among them.
var ErrNoEd25519 = inputErrorf("the token has no Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA)")

// GenerateEd25519KeyPair creates an Ed25519 key pair and returns its
// public key.
func (c *Client) GenerateEd25519KeyPair(ctx context.Context, id []byte, label string, use Usage) (ed25519.PublicKey, error) {
	pubTmpl, privTmpl := keyPairTemplates(ckkECEdwards, id, label, use,
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ed25519Params)}, nil)
	// An Edwards key encrypts nothing: its public half only verifies.
	pubTmpl = withoutAttribute(pubTmpl, pkcs11.CKA_ENCRYPT)
	privTmpl = withoutAttribute(privTmpl, pkcs11.CKA_DECRYPT)
	pub, err := c.generateKeyPair(ctx, ckmECEdwardsKeyPairGen, pubTmpl, privTmpl, readEd25519Public)
	if code, ok := pkcs11Code(err); ok && (code == pkcs11.CKR_MECHANISM_INVALID || code == pkcs11.CKR_DOMAIN_PARAMS_INVALID ||
		code == pkcs11.CKR_ATTRIBUTE_VALUE_INVALID || code == pkcs11.CKR_TEMPLATE_INCONSISTENT || code == pkcs11.CKR_CURVE_NOT_SUPPORTED) {
		return nil, ErrNoEd25519
	}
	if err != nil {
		return nil, err
	}
	return pub.(ed25519.PublicKey), nil
}

func readEd25519Public(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (crypto.PublicKey, error) {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, call("C_GetAttributeValue (CKA_EC_POINT)", err)
	}
	// CKA_EC_POINT is a DER OCTET STRING of the 32-byte key; some tokens
	// give the bare key.
	point := attrs[0].Value
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 && len(inner) == ed25519.PublicKeySize {
		point = inner
	}
	if len(point) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("CKA_EC_POINT of an Ed25519 key is %d bytes", len(point))
	}
	return ed25519.PublicKey(append([]byte(nil), point...)), nil
}

// SignEd25519 signs message (not a digest: Ed25519 hashes it itself) with
// CKM_EDDSA and checks the signature with pub before returning it.
func (c *Client) SignEd25519(ctx context.Context, id []byte, pub ed25519.PublicKey, message []byte) ([]byte, error) {
	sig, err := c.signRaw(ctx, id, pkcs11.NewMechanism(ckmEdDSA, nil), message, ed25519.SignatureSize)
	if err != nil {
		return nil, err
	}
	if !ed25519.Verify(pub, message, sig) {
		return nil, fmt.Errorf("the HSM's Ed25519 signature does not verify; not returned")
	}
	return sig, nil
}
