package hsm

import (
	"context"
	"crypto"
	"fmt"

	"github.com/miekg/pkcs11"
)

var hmacMechanisms = map[crypto.Hash]uint{
	crypto.SHA256: pkcs11.CKM_SHA256_HMAC,
	crypto.SHA384: pkcs11.CKM_SHA384_HMAC,
	crypto.SHA512: pkcs11.CKM_SHA512_HMAC,
}

// GenerateHMACKey creates a generic secret of bits (128 to 4096, a multiple
// of 8) for HMAC on the token.
func (c *Client) GenerateHMACKey(ctx context.Context, id []byte, label string, bits int, use Usage) error {
	if bits < 128 || bits > 4096 || bits%8 != 0 {
		return inputErrorf("HMAC key size %d bits; 128 to 4096, a multiple of 8", bits)
	}
	if len(id) == 0 {
		return inputErrorf("empty object id")
	}
	template := secretKeyTemplate(pkcs11.CKK_GENERIC_SECRET, bits/8, id, label, use)
	return c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		c.token.createMu.Lock()
		defer c.token.createMu.Unlock()
		_, err := p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, template)
		return call("C_GenerateKey", err)
	})
}

// HMAC computes the HMAC of data with the secret id and hash, in the token.
func (c *Client) HMAC(ctx context.Context, id []byte, hash crypto.Hash, data []byte) ([]byte, error) {
	mech, ok := hmacMechanisms[hash]
	if !ok {
		return nil, inputErrorf("no HMAC mechanism for %v", hash)
	}
	var mac []byte
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		key, err := c.findObject(p11, sh, id, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		if err := p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, key); err != nil {
			if code, ok := pkcs11Code(err); ok && code == pkcs11.CKR_KEY_SIZE_RANGE {
				return inputErrorf("the token refuses HMAC with %v for a key this short; import the key as a JWK, which is padded to 64 bytes (the same HMAC)", hash)
			}
			return call("C_SignInit", err)
		}
		out, err := oneCall(func(n int) ([]byte, error) { return p11.SignOnce(sh, data, n) }, hash.Size())
		if err != nil {
			return call("C_Sign", err)
		}
		mac = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(mac) != hash.Size() {
		return nil, fmt.Errorf("C_Sign returned a %d-byte HMAC for %v", len(mac), hash)
	}
	return mac, nil
}
