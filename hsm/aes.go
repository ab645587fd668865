package hsm

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/miekg/pkcs11"
)

// AES-GCM parameters the plugin fixes for every call. Some tokens (SoftHSM
// 2.6.1 among them) accept an empty IV, short tags and other IV sizes, so
// these are checked here and never left to the HSM.
const (
	GCMIVLen  = 12
	GCMTagLen = 16
)

// GenerateAESKey creates an AES key of bits (128, 192 or 256) on the token
// with CKA_ID id.
func (c *Client) GenerateAESKey(ctx context.Context, id []byte, label string, bits int, use Usage) error {
	if bits != 128 && bits != 192 && bits != 256 {
		return fmt.Errorf("%w: AES key size %d; 128, 192 or 256 allowed", ErrInvalidInput, bits)
	}
	if len(id) == 0 {
		return fmt.Errorf("%w: empty object id", ErrInvalidInput)
	}
	template := secretKeyTemplate(pkcs11.CKK_AES, bits/8, id, label, use)
	return c.do(ctx, func(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		c.token.createMu.Lock()
		defer c.token.createMu.Unlock()
		_, err := p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, template)
		return call("C_GenerateKey", err)
	})
}

// EncryptGCM encrypts plaintext with the AES key id under a fresh random
// 96-bit IV made here, binding aad, which must not be empty. It returns
// IV || ciphertext || 128-bit tag.
func (c *Client) EncryptGCM(ctx context.Context, id, plaintext, aad []byte) ([]byte, error) {
	if len(aad) == 0 {
		return nil, fmt.Errorf("%w: associated data must not be empty", ErrInvalidInput)
	}
	iv := make([]byte, GCMIVLen)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("drawing an IV: %w", err)
	}
	var sealed []byte
	err := c.do(ctx, func(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		params, err := c.initGCM(p11, sh, id, iv, aad, p11.EncryptInit, "C_EncryptInit")
		if err != nil {
			return err
		}
		defer params.Free()
		out, err := p11.Encrypt(sh, plaintext)
		if err != nil {
			return call("C_Encrypt", err)
		}
		sealed = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(sealed) != len(plaintext)+GCMTagLen {
		return nil, fmt.Errorf("C_Encrypt returned %d bytes for %d of plaintext; expected a %d-byte tag", len(sealed), len(plaintext), GCMTagLen)
	}
	out := make([]byte, 0, GCMIVLen+len(sealed))
	out = append(out, iv...)
	return append(out, sealed...), nil
}

// initGCM starts an AES-GCM operation (init is C_EncryptInit or
// C_DecryptInit) with the key id; the caller frees the parameters after the
// operation.
func (c *Client) initGCM(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, id, iv, aad []byte,
	init func(pkcs11.SessionHandle, []*pkcs11.Mechanism, pkcs11.ObjectHandle) error, name string) (*pkcs11.GCMParams, error) {
	key, err := c.findObject(p11, sh, id, pkcs11.CKO_SECRET_KEY)
	if err != nil {
		return nil, err
	}
	params := pkcs11.NewGCMParams(iv, aad, GCMTagLen*8)
	if err := init(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
		params.Free()
		return nil, call(name, err)
	}
	return params, nil
}

// DecryptGCM reverses EncryptGCM. Lengths are checked before anything is
// sliced; any authentication failure is ErrDecrypt, with no detail.
func (c *Client) DecryptGCM(ctx context.Context, id, blob, aad []byte) ([]byte, error) {
	if len(aad) == 0 {
		return nil, fmt.Errorf("%w: associated data must not be empty", ErrInvalidInput)
	}
	if len(blob) < GCMIVLen+GCMTagLen {
		return nil, fmt.Errorf("%w: ciphertext too short", ErrDecrypt)
	}
	iv, sealed := blob[:GCMIVLen], blob[GCMIVLen:]
	var plaintext []byte
	err := c.do(ctx, func(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		params, err := c.initGCM(p11, sh, id, iv, aad, p11.DecryptInit, "C_DecryptInit")
		if err != nil {
			return err
		}
		defer params.Free()
		out, err := p11.Decrypt(sh, sealed)
		if err != nil {
			if classify(err) == classCaller || authFailureAsGeneralError(p11, sh, err) {
				return fmt.Errorf("%w: %w", ErrDecrypt, err)
			}
			return call("C_Decrypt", err)
		}
		plaintext = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(plaintext) != len(sealed)-GCMTagLen {
		return nil, fmt.Errorf("C_Decrypt returned %d bytes for %d of ciphertext", len(plaintext), len(sealed))
	}
	return plaintext, nil
}

// authFailureAsGeneralError recognises SoftHSM 2.6.1's answer to a GCM tag
// that does not verify: CKR_GENERAL_ERROR rather than
// CKR_ENCRYPTED_DATA_INVALID. It counts as the caller's bad ciphertext only
// while the session is still healthy, so a failing device is not mistaken
// for one.
func authFailureAsGeneralError(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, err error) bool {
	code, ok := pkcs11Code(err)
	if !ok || code != pkcs11.CKR_GENERAL_ERROR {
		return false
	}
	_, infoErr := p11.GetSessionInfo(sh)
	return infoErr == nil
}
