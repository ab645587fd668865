package hsm

import (
	"context"
	"crypto"
	"fmt"

	"github.com/miekg/pkcs11"
)

// generateKeyPair runs C_GenerateKeyPair under the token's creation lock and
// returns the public key read back from the new public object.
func (c *Client) generateKeyPair(ctx context.Context, mech uint, pubTmpl, privTmpl []*pkcs11.Attribute, readPublic func(PKCS11, pkcs11.SessionHandle, pkcs11.ObjectHandle) (crypto.PublicKey, error)) (crypto.PublicKey, error) {
	var pub crypto.PublicKey
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		c.token.createMu.Lock()
		defer c.token.createMu.Unlock()
		pubHandle, _, err := p11.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pubTmpl, privTmpl)
		if code, ok := pkcs11Code(err); ok && code == pkcs11.CKR_TEMPLATE_INCONSISTENT && mech != ckmECEdwardsKeyPairGen {
			// RSA and EC templates are the plugin's own, which the token
			// accepts on every other call: SoftHSM2 has answered this once
			// under load (an e2e rotation), so it is the token's failure,
			// retried once on a fresh session and then unavailable, never
			// the caller's. Ed25519's answer means the token lacks it.
			return sessionLost{call("C_GenerateKeyPair", err)}
		}
		if err != nil {
			return call("C_GenerateKeyPair", err)
		}
		pub, err = readPublic(p11, sh, pubHandle)
		return err
	})
	return pub, err
}

// PublicKey reads the public key of the key pair with CKA_ID id.
func (c *Client) PublicKey(ctx context.Context, id []byte) (crypto.PublicKey, error) {
	var pub crypto.PublicKey
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		h, err := c.findObject(p11, sh, id, pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			return err
		}
		attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
		if err != nil {
			return call("C_GetAttributeValue", err)
		}
		switch keyType := bytesToUint(attrs[0].Value); keyType {
		case pkcs11.CKK_RSA:
			pub, err = readRSAPublic(p11, sh, h)
		case pkcs11.CKK_EC:
			pub, err = readECPublic(p11, sh, h)
		case ckkECEdwards:
			pub, err = readEd25519Public(p11, sh, h)
		default:
			err = fmt.Errorf("object %x has key type %#x, not RSA, EC or Ed25519", id, keyType)
		}
		return err
	})
	return pub, err
}

// signRaw signs data (a digest or DigestInfo) with the private key id,
// whose signatures are at most sigSize bytes.
func (c *Client) signRaw(ctx context.Context, id []byte, mech *pkcs11.Mechanism, data []byte, sigSize int) ([]byte, error) {
	var sig []byte
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		key, err := c.findObject(p11, sh, id, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		if err := p11.SignInit(sh, []*pkcs11.Mechanism{mech}, key); err != nil {
			return call("C_SignInit", err)
		}
		out, err := oneCall(func(n int) ([]byte, error) { return p11.SignOnce(sh, data, n) }, sigSize)
		if err != nil {
			return call("C_Sign", err)
		}
		sig = out
		return nil
	})
	return sig, err
}

// verifyRaw checks a signature with the public key object id inside the HSM.
// The plugin verifies in Go; this exists so tests can show the two agree.
func (c *Client) verifyRaw(ctx context.Context, id []byte, mech *pkcs11.Mechanism, data, sig []byte) (bool, error) {
	var valid bool
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		key, err := c.findObject(p11, sh, id, pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			return err
		}
		if err := p11.VerifyInit(sh, []*pkcs11.Mechanism{mech}, key); err != nil {
			return call("C_VerifyInit", err)
		}
		err = p11.Verify(sh, data, sig)
		if code, ok := pkcs11Code(err); ok && (code == pkcs11.CKR_SIGNATURE_INVALID || code == pkcs11.CKR_SIGNATURE_LEN_RANGE) {
			return nil
		}
		if err != nil {
			return call("C_Verify", err)
		}
		valid = true
		return nil
	})
	return valid, err
}

// bytesToUint reads a CK_ULONG attribute in the machine's byte order.
func bytesToUint(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}
