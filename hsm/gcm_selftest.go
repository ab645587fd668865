package hsm

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"fmt"

	"github.com/miekg/pkcs11"
)

// SelfTestGCM checks, on a session key, that the token's AES-GCM is one the
// plugin can use: it encrypts a known block the way EncryptGCM does,
// compares the result with Go's AES-GCM under the IV the token reports,
// decrypts it again and sees a forged tag refused. A token that ignores the
// caller's IV without saying which one it used, or that appends something
// else, fails here rather than producing ciphertexts nobody can decrypt.
// A failure of the token itself is returned as such; a token whose GCM is
// wrong gives ErrGCMUnusable.
func (c *Client) SelfTestGCM(ctx context.Context) error {
	keyValue := sha256.Sum256([]byte("hsmkms AES-GCM self-test key"))
	plaintext := []byte("hsmkms AES-GCM self-test: 37 bytes..")
	aad := []byte("hsmkms self-test")
	return c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		key, known, err := selfTestKey(p11, sh, keyValue[:])
		if err != nil {
			return err
		}
		defer func() { _ = p11.DestroyObject(sh, key) }()
		blob, err := c.sealGCM(p11, sh, key, plaintext, aad)
		if err != nil {
			if classify(err) == classOther {
				return fmt.Errorf("%w: encrypting: %w", ErrGCMUnusable, err)
			}
			return err
		}
		if known {
			block, _ := aes.NewCipher(keyValue[:])
			gcm, _ := cipher.NewGCM(block)
			want := gcm.Seal(nil, blob[:GCMIVLen], plaintext, aad)
			if !bytes.Equal(want, blob[GCMIVLen:]) {
				return fmt.Errorf("%w: its output differs from AES-GCM under the IV it reports (the token may use an IV it does not return)", ErrGCMUnusable)
			}
		}
		got, err := c.openGCM(p11, sh, key, blob, aad)
		if err != nil {
			if classify(err) == classCaller || classify(err) == classOther {
				return fmt.Errorf("%w: it cannot decrypt its own ciphertext: %w", ErrGCMUnusable, err)
			}
			return err
		}
		if !bytes.Equal(got, plaintext) {
			return fmt.Errorf("%w: decrypting its own ciphertext gave other bytes", ErrGCMUnusable)
		}
		forged := bytes.Clone(blob)
		forged[len(forged)-1] ^= 1
		if _, err := c.openGCM(p11, sh, key, forged, aad); err == nil {
			return fmt.Errorf("%w: it accepted a forged tag", ErrGCMUnusable)
		}
		return nil
	})
}

// selfTestKey makes a session AES key with a known value; a token whose
// policy refuses plaintext key import gets a generated session key, and
// known is false (the comparison with Go is then skipped).
func selfTestKey(p11 PKCS11, sh pkcs11.SessionHandle, value []byte) (pkcs11.ObjectHandle, bool, error) {
	common := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
	}
	h, err := p11.CreateObject(sh, append(common, pkcs11.NewAttribute(pkcs11.CKA_VALUE, value)))
	if err == nil {
		return h, true, nil
	}
	if c := classify(err); c == classSession || c == classDevice {
		return 0, false, call("C_CreateObject (GCM self-test)", err)
	}
	h, err = p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		append(common, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, len(value))))
	if err != nil {
		return 0, false, call("C_GenerateKey (GCM self-test)", err)
	}
	return h, false, nil
}
