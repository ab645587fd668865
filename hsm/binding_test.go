package hsm

import (
	"bytes"
	"context"
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
