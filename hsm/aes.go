package hsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
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
		return inputErrorf("AES key size %d; 128, 192 or 256 allowed", bits)
	}
	if len(id) == 0 {
		return inputErrorf("empty object id")
	}
	template := secretKeyTemplate(pkcs11.CKK_AES, bits/8, id, label, use)
	return c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		c.token.createMu.Lock()
		defer c.token.createMu.Unlock()
		_, err := p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, template)
		return call("C_GenerateKey", err)
	})
}

// EncryptGCM encrypts plaintext with the AES key id, binding aad, which must
// not be empty. The plugin draws a fresh 96-bit IV; a token that uses an IV
// of its own instead has it read back. It returns IV || ciphertext ||
// 128-bit tag, with the IV the token actually used.
func (c *Client) EncryptGCM(ctx context.Context, id, plaintext, aad []byte) ([]byte, error) {
	if len(aad) == 0 {
		return nil, inputErrorf("associated data must not be empty")
	}
	var out []byte
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		key, err := c.findObject(p11, sh, id, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		out, err = c.sealGCM(p11, sh, key, plaintext, aad)
		return err
	})
	return out, err
}

// sealGCM runs one AES-GCM encryption with key and returns IV || ciphertext
// || tag. The IV is the one the token used: ours, the one it wrote into
// CK_GCM_PARAMS, or the one it appended to its output.
func (c *Client) sealGCM(p11 PKCS11, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, plaintext, aad []byte) ([]byte, error) {
	iv := make([]byte, GCMIVLen)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("drawing an IV: %w", err)
	}
	params := newGCMParams(iv, aad, GCMTagLen*8)
	defer params.free()
	if err := p11.EncryptInit(sh, params.mechanism(), key); err != nil {
		return nil, call("C_EncryptInit", err)
	}
	sealedLen := len(plaintext) + GCMTagLen
	// Room for a token that appends its own IV (see gcmIVAppended).
	sealed, err := oneCall(func(n int) ([]byte, error) { return p11.EncryptOnce(sh, plaintext, n) }, sealedLen+GCMIVLen)
	if err != nil {
		return nil, call("C_Encrypt", err)
	}
	used, mode := params.IV(), gcmIVCaller
	switch len(sealed) {
	case sealedLen:
		if !bytes.Equal(used, iv) {
			mode = gcmIVWritten
		}
	case sealedLen + GCMIVLen:
		used, sealed, mode = sealed[sealedLen:], sealed[:sealedLen], gcmIVAppended
	default:
		return nil, fmt.Errorf("C_Encrypt returned %d bytes for %d of plaintext; expected a %d-byte tag", len(sealed), len(plaintext), GCMTagLen)
	}
	if len(used) != GCMIVLen {
		return nil, fmt.Errorf("the token used a %d-byte GCM IV; %d expected", len(used), GCMIVLen)
	}
	c.token.quirks.noteGCMIV(mode)
	out := make([]byte, 0, GCMIVLen+len(sealed))
	out = append(out, used...)
	return append(out, sealed...), nil
}

// DecryptGCM reverses EncryptGCM. Lengths are checked before anything is
// sliced; any authentication failure is ErrDecrypt, with no detail.
func (c *Client) DecryptGCM(ctx context.Context, id, blob, aad []byte) ([]byte, error) {
	if len(aad) == 0 {
		return nil, inputErrorf("associated data must not be empty")
	}
	return c.decryptGCM(ctx, id, blob, aad)
}

// DecryptGCMForeign opens IV || ciphertext || tag made outside the plugin
// (Transit's layout), whose associated data may be empty.
func (c *Client) DecryptGCMForeign(ctx context.Context, id, blob, aad []byte) ([]byte, error) {
	return c.decryptGCM(ctx, id, blob, aad)
}

func (c *Client) decryptGCM(ctx context.Context, id, blob, aad []byte) ([]byte, error) {
	if len(blob) < GCMIVLen+GCMTagLen {
		return nil, fmt.Errorf("%w: ciphertext too short", ErrDecrypt)
	}
	// SoftHSM answers a tag that does not verify and a failure of its own
	// alike (errAmbiguousTag). A client must never be told that good data
	// was altered: look again, with the same decryption once more, and if
	// it fails the same way, a known-answer test of the token's AES-GCM
	// decides. Only a token that passes it has refused the tag.
	plaintext, err := c.decryptGCMOnce(ctx, id, blob, aad)
	if errors.Is(err, errAmbiguousTag) {
		plaintext, err = c.decryptGCMOnce(ctx, id, blob, aad)
	}
	if !errors.Is(err, errAmbiguousTag) {
		return plaintext, err
	}
	if kerr := c.SelfTestGCM(ctx); kerr != nil {
		return nil, fmt.Errorf("%w: CKR_GENERAL_ERROR on decrypt, and the token's AES-GCM fails its known-answer test: %w", ErrUnavailable, kerr)
	}
	return nil, fmt.Errorf("%w: %w", ErrDecrypt, err)
}

// errAmbiguousTag: CKR_GENERAL_ERROR from C_Decrypt on a token that answers
// a bad GCM tag that way; decryptGCM decides which it was.
var errAmbiguousTag = errors.New("CKR_GENERAL_ERROR on AES-GCM decryption")

func (c *Client) decryptGCMOnce(ctx context.Context, id, blob, aad []byte) ([]byte, error) {
	var plaintext []byte
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		key, err := c.findObject(p11, sh, id, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		plaintext, err = c.openGCM(p11, sh, key, blob, aad)
		return err
	})
	return plaintext, err
}

// openGCM decrypts IV || ciphertext || tag with key.
func (c *Client) openGCM(p11 PKCS11, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, blob, aad []byte) ([]byte, error) {
	iv, sealed := blob[:GCMIVLen], blob[GCMIVLen:]
	params := newGCMParams(iv, aad, GCMTagLen*8)
	defer params.free()
	if err := p11.DecryptInit(sh, params.mechanism(), key); err != nil {
		return nil, call("C_DecryptInit", err)
	}
	// The whole input's size: NSS checks the buffer against it, tag
	// included.
	plaintext, err := oneCall(func(n int) ([]byte, error) { return p11.DecryptOnce(sh, sealed, n) }, len(sealed))
	if err != nil {
		switch {
		case classify(err) == classCaller:
			return nil, fmt.Errorf("%w: %w", ErrDecrypt, err)
		case c.authFailureAsGeneralError(p11, sh, err):
			return nil, fmt.Errorf("%w: %w", errAmbiguousTag, err)
		}
		return nil, call("C_Decrypt", err)
	}
	if len(plaintext) != len(sealed)-GCMTagLen {
		return nil, fmt.Errorf("C_Decrypt returned %d bytes for %d of ciphertext", len(plaintext), len(sealed))
	}
	return plaintext, nil
}

// authFailureAsGeneralError recognises SoftHSM 2.6.1's answer to a GCM tag
// that does not verify: CKR_GENERAL_ERROR rather than
// CKR_ENCRYPTED_DATA_INVALID. It counts as the caller's bad ciphertext only
// on a token with that quirk and only while the session is still healthy,
// so a failing device is never mistaken for one; elsewhere
// CKR_GENERAL_ERROR is the HSM's failure.
func (c *Client) authFailureAsGeneralError(p11 PKCS11, sh pkcs11.SessionHandle, err error) bool {
	code, ok := pkcs11Code(err)
	if !ok || code != pkcs11.CKR_GENERAL_ERROR || !c.token.quirks.has("gcm_tag_mismatch_general_error") {
		return false
	}
	_, infoErr := p11.GetSessionInfo(sh)
	return infoErr == nil
}
