package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
)

// curveOIDs are the named-curve identifiers CKA_EC_PARAMS carries.
var curveOIDs = map[string]asn1.ObjectIdentifier{
	"P-256": {1, 2, 840, 10045, 3, 1, 7},
	"P-384": {1, 3, 132, 0, 34},
	"P-521": {1, 3, 132, 0, 35},
}

func curveByName(name string) (elliptic.Curve, bool) {
	switch name {
	case "P-256":
		return elliptic.P256(), true
	case "P-384":
		return elliptic.P384(), true
	case "P-521":
		return elliptic.P521(), true
	}
	return nil, false
}

// ecSize is the size of a coordinate, and of each half of a raw ECDSA
// signature, on curve.
func ecSize(curve elliptic.Curve) int { return (curve.Params().BitSize + 7) / 8 }

// GenerateECKeyPair creates an EC key pair on curve (P-256, P-384 or P-521)
// and returns the public key.
func (c *Client) GenerateECKeyPair(ctx context.Context, id []byte, label, curve string, use Usage) (*ecdsa.PublicKey, error) {
	oid, ok := curveOIDs[curve]
	if !ok {
		return nil, inputErrorf("curve %q; P-256, P-384 or P-521 allowed", curve)
	}
	params, err := asn1.Marshal(oid)
	if err != nil {
		return nil, err
	}
	pubTmpl, privTmpl := keyPairTemplates(pkcs11.CKK_EC, id, label, use,
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params)}, nil)
	pub, err := c.generateKeyPair(ctx, pkcs11.CKM_EC_KEY_PAIR_GEN, pubTmpl, privTmpl, readECPublic)
	if err != nil {
		return nil, err
	}
	return pub.(*ecdsa.PublicKey), nil
}

func readECPublic(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (crypto.PublicKey, error) {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
	})
	if err != nil {
		return nil, call("C_GetAttributeValue", err)
	}
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(attrs[0].Value, &oid); err != nil {
		return nil, fmt.Errorf("CKA_EC_PARAMS is not a named curve: %w", err)
	}
	var curve elliptic.Curve
	for name, o := range curveOIDs {
		if o.Equal(oid) {
			curve, _ = curveByName(name)
		}
	}
	if curve == nil {
		return nil, fmt.Errorf("unsupported curve %v", oid)
	}
	// CKA_EC_POINT is a DER OCTET STRING holding the uncompressed point;
	// some tokens return the bare point.
	point := attrs[1].Value
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
		point = inner
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT is not an uncompressed point on %s: %w", curve.Params().Name, err)
	}
	return pub, nil
}

// SignECDSA signs digest with CKM_ECDSA in the HSM and returns the raw
// r||s signature, each half the curve's size, after verifying it with pub.
func (c *Client) SignECDSA(ctx context.Context, id []byte, pub *ecdsa.PublicKey, digest []byte) ([]byte, error) {
	if len(digest) == 0 || len(digest) > 64 {
		return nil, inputErrorf("digest of %d bytes", len(digest))
	}
	size := ecSize(pub.Curve)
	sig, err := c.signRaw(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil), digest, 2*size)
	if err != nil {
		return nil, err
	}
	if len(sig) != 2*size {
		return nil, fmt.Errorf("CKM_ECDSA returned %d bytes; expected %d", len(sig), 2*size)
	}
	r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
	if !ecdsa.Verify(pub, digest, r, s) {
		return nil, fmt.Errorf("the HSM's ECDSA signature does not verify; not returned")
	}
	return sig, nil
}

// VerifyECDSAInHSM checks a raw r||s signature inside the HSM.
func (c *Client) VerifyECDSAInHSM(ctx context.Context, id, digest, sig []byte) (bool, error) {
	return c.verifyRaw(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil), digest, sig)
}
