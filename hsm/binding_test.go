package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// The binding's own one-call C_Encrypt and C_WrapKey go through the
// function list miekg/pkcs11 initialised. p11-kit's proxy hands out a new,
// uninitialised list on every C_GetFunctionList, so calls made through a
// second list answer CKR_CRYPTOKI_NOT_INITIALIZED (issue 19); on the
// p11kit token this test fails that way when the binding asks twice.
func TestOneCallEncryptAndWrapUseTheInitialisedFunctionList(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c := openClient(t, tokenA, 1) // Open's GCM self-test is one C_Encrypt already
		ctx := context.Background()
		id := newAESKey(t, c, 256)
		blob, err := c.EncryptGCM(ctx, id, []byte("through the proxy"), []byte("aad"))
		if err != nil {
			t.Fatalf("EncryptGCM: %v", err)
		}
		if got, err := c.DecryptGCM(ctx, id, blob, []byte("aad")); err != nil || string(got) != "through the proxy" {
			t.Fatalf("DecryptGCM: %q, %v", got, err)
		}
		// A key wrapped by C_WrapKey in one call unwraps to itself. (Its
		// length is a multiple of 8: SoftHSM 2.6.1 pads other lengths with
		// zeros that unwrapping keeps.)
		value := bytes.Repeat([]byte{0x5a}, 32)
		err = c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
			kwp, err := c.kwpMechanism(p11, sh)
			if err != nil {
				return err
			}
			kek, err := p11.CreateObject(sh, setAttribute(setAttribute(ephemeralTemplate(rfc5649Vector.kek), pkcs11.CKA_WRAP, true), pkcs11.CKA_UNWRAP, true))
			if err != nil {
				return call("C_CreateObject (KEK)", err)
			}
			defer func() { _ = p11.DestroyObject(sh, kek) }()
			key, err := p11.CreateObject(sh, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
			})
			if err != nil {
				return call("C_CreateObject (key)", err)
			}
			defer func() { _ = p11.DestroyObject(sh, key) }()
			wrapped, err := p11.WrapKeyOnce(sh, kwp, kek, key, 64)
			if err != nil {
				return call("C_WrapKey", err)
			}
			back, err := p11.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(kwp, nil)}, kek, wrapped, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			})
			if err != nil {
				return call("C_UnwrapKey", err)
			}
			defer func() { _ = p11.DestroyObject(sh, back) }()
			attrs, err := p11.GetAttributeValue(sh, back, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if err != nil {
				return call("C_GetAttributeValue", err)
			}
			if !bytes.Equal(attrs[0].Value, value) {
				t.Errorf("wrapped and unwrapped, the key is %x, not %x", attrs[0].Value, value)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// A buffer smaller than the result is answered CKR_BUFFER_TOO_SMALL and
// the operation stays active: oneCall asks for the size and finishes it.
// NSS ends an AES-GCM decryption given too small a buffer, which is why
// the plugin's buffer is the whole ciphertext's size. Sizes are
// chosen so that none of this happens on the request path; it is for a
// token whose results are larger than the plugin knows them to be.
func TestOneCallFinishesAfterBufferTooSmall(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c := openClient(t, tokenA, 1)
		ctx := context.Background()
		aesID := newAESKey(t, c, 256)
		blob, err := c.EncryptGCM(ctx, aesID, []byte("sixteen bytes..."), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		rsaID := newID(t, c)
		pub, err := c.GenerateRSAKeyPair(ctx, rsaID, "small-buffer", 2048, Usage{Sign: true, Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256([]byte("small buffer"))
		signCalls, decryptCalls := 0, 0
		var decryptErr error
		err = c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
			key, err := c.findObject(p11, sh, rsaID, pkcs11.CKO_PRIVATE_KEY)
			if err != nil {
				return err
			}
			if err := p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, key); err != nil {
				return err
			}
			sig, err := oneCall(func(n int) ([]byte, error) {
				signCalls++
				return p11.SignOnce(sh, append(append([]byte(nil), digestInfoPrefixes[crypto.SHA256]...), digest[:]...), n)
			}, 16)
			if err != nil {
				return fmt.Errorf("sign: %w", err)
			}
			if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
				return fmt.Errorf("the signature finished after CKR_BUFFER_TOO_SMALL does not verify: %w", err)
			}
			key, err = c.findObject(p11, sh, aesID, pkcs11.CKO_SECRET_KEY)
			if err != nil {
				return err
			}
			params := newGCMParams(blob[:GCMIVLen], []byte("aad"), GCMTagLen*8)
			defer params.free()
			if err := p11.DecryptInit(sh, params.mechanism(), key); err != nil {
				return err
			}
			var plain []byte
			plain, decryptErr = oneCall(func(n int) ([]byte, error) {
				decryptCalls++
				return p11.DecryptOnce(sh, blob[GCMIVLen:], n)
			}, 4)
			if decryptErr == nil && string(plain) != "sixteen bytes..." {
				return fmt.Errorf("decrypted %q", plain)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		wantSign, wantDecrypt := 3, 3 // too small, the size, the result
		if tokenA.Implementation() == tokentest.NSS {
			if code, ok := pkcs11Code(decryptErr); !ok || code != pkcs11.CKR_OPERATION_NOT_INITIALIZED {
				t.Errorf("AES-GCM decryption after a buffer too small: %v; NSS was seen to end the operation", decryptErr)
			}
			wantDecrypt = 2 // too small, then the size query finds no operation
		} else if decryptErr != nil {
			t.Errorf("AES-GCM decryption after a buffer too small: %v", decryptErr)
		}
		if signCalls != wantSign || decryptCalls != wantDecrypt {
			t.Errorf("%d C_Sign and %d C_Decrypt calls, want %d and %d", signCalls, decryptCalls, wantSign, wantDecrypt)
		}
	})
}
