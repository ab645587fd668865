package hsm

import (
	"context"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// An id from storage, a backup or a request is checked on the token before
// anything is destroyed: only objects with a label the caller owns go.
func TestDestroyObjectsLeavesObjectsTheCallerDoesNotOwn(t *testing.T) {
	eachToken(t, func(t *testing.T, tok, _ *tokentest.Token) {
		c := openClient(t, tok, 2)
		ctx := context.Background()
		id := newAESKey(t, c, 256) // labelled "test-key"
		t.Cleanup(func() { _ = c.DestroyObjects(ctx, id, anyLabel) })
		err := c.DestroyObjects(ctx, id, ExactLabel("hsmkms/another-mount/k/v1"))
		if !errors.Is(err, ErrNotOwned) {
			t.Fatalf("destroying an object labelled otherwise: %v, want ErrNotOwned", err)
		}
		if ok, err := c.ObjectExists(ctx, id); err != nil || !ok {
			t.Fatalf("the object the caller does not own is gone: %v %v", ok, err)
		}
		if err := c.DestroyObjects(ctx, id, ExactLabel("test-key")); err != nil {
			t.Fatal(err)
		}
		if ok, err := c.ObjectExists(ctx, id); err != nil || ok {
			t.Fatalf("the owned object survived: %v %v", ok, err)
		}
	})
}

// A KEK wraps and unwraps only: a key that may also encrypt (pkcs11-tool's
// default) could be taken for a data key, so it is not found as a KEK;
// CheckKEK refuses what is not a KEK and accepts an unwrap-only one.
func TestOnlyAKeyFitForAKEKIsTakenAsOne(t *testing.T) {
	eachToken(t, func(t *testing.T, tok, _ *tokentest.Token) {
		c := openClient(t, tok, 2)
		ctx := context.Background()
		make := func(label string, attrs map[uint]bool) []byte {
			t.Helper()
			id := newID(t, c)
			template := secretKeyTemplate(pkcs11.CKK_AES, 32, id, label, Usage{})
			for a, v := range attrs {
				template = setAttribute(template, a, v)
			}
			err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
				_, err := p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, template)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.DestroyObjects(ctx, id, anyLabel) })
			return id
		}
		good := make("kek-test/good", map[uint]bool{pkcs11.CKA_WRAP: true, pkcs11.CKA_UNWRAP: true})
		make("kek-test/also-encrypts", map[uint]bool{pkcs11.CKA_WRAP: true, pkcs11.CKA_UNWRAP: true, pkcs11.CKA_ENCRYPT: true, pkcs11.CKA_DECRYPT: true})
		unwrapOnly := make("kek-test/unwrap-only", map[uint]bool{pkcs11.CKA_UNWRAP: true})
		dataKey := make("kek-test/data", map[uint]bool{pkcs11.CKA_ENCRYPT: true, pkcs11.CKA_DECRYPT: true})

		if id, err := c.FindKEK(ctx, "kek-test/good"); err != nil || string(id) != string(good) {
			t.Fatalf("FindKEK(good) = %x, %v", id, err)
		}
		if id, err := c.FindKEK(ctx, "kek-test/nothing"); err != nil || id != nil {
			t.Fatalf("FindKEK(nothing) = %x, %v", id, err)
		}
		for _, label := range []string{"kek-test/also-encrypts", "kek-test/unwrap-only", "kek-test/data"} {
			if _, err := c.FindKEK(ctx, label); !errors.Is(err, ErrInvalidInput) {
				t.Errorf("FindKEK(%s) = %v, want ErrInvalidInput", label, err)
			}
		}
		if label, err := c.CheckKEK(ctx, unwrapOnly); err != nil || label != "kek-test/unwrap-only" {
			t.Errorf("CheckKEK(unwrap-only) = %q, %v", label, err)
		}
		if _, err := c.CheckKEK(ctx, dataKey); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("CheckKEK(data key) = %v, want ErrInvalidInput", err)
		}
		if _, err := c.CheckKEK(ctx, newID(t, c)); !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("CheckKEK(absent) = %v, want ErrKeyNotFound", err)
		}
	})
}

// A blob from outside is checked against what it claims to be before it is
// wrapped again; an empty or oversized blob is refused before the token
// sees it.
func TestRewrapCheckedRefusesABlobThatIsNotTheKeyDescribed(t *testing.T) {
	eachToken(t, func(t *testing.T, tok, _ *tokentest.Token) {
		c := openClient(t, tok, 2)
		ctx := context.Background()
		kek := newID(t, c)
		if err := c.GenerateKEK(ctx, kek, "hsmkms-test/kek"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.DestroyObjects(ctx, kek, anyLabel) })
		gen := func(spec ImportSpec) ([]byte, ImportSpec) {
			t.Helper()
			spec.ID, spec.Label = newID(t, c), "hsmkms-test/wrapped"
			blob, pub, err := c.GenerateWrapped(ctx, kek, spec)
			if err != nil {
				t.Fatal(err)
			}
			spec.Public = pub
			return blob, spec
		}
		aesBlob, aes := gen(ImportSpec{Kind: ImportAES, Bits: 256, Use: Usage{Decrypt: true}})
		ecBlob, ec := gen(ImportSpec{Kind: ImportEC, Curve: "P-256", Use: Usage{Verify: true}})
		_, ec2 := gen(ImportSpec{Kind: ImportEC, Curve: "P-256", Use: Usage{Verify: true}})
		rsaBlob, rsa := gen(ImportSpec{Kind: ImportRSA, Bits: 2048, Use: Usage{Sign: true}})

		for name, blob := range map[string][]byte{"aes": aesBlob, "ec": ecBlob, "rsa": rsaBlob} {
			spec := map[string]ImportSpec{"aes": aes, "ec": ec, "rsa": rsa}[name]
			if _, err := c.RewrapChecked(ctx, kek, kek, blob, spec); err != nil {
				t.Errorf("%s: a good blob: %v", name, err)
			}
		}
		flipped := append([]byte(nil), aesBlob...)
		flipped[len(flipped)-1] ^= 1
		aes128 := aes
		aes128.Bits = 128
		ecOtherKey := ec
		ecOtherKey.Public = ec2.Public
		rsaAsEC := ec
		rsa3072 := rsa
		rsa3072.Bits = 3072
		for name, tc := range map[string]struct {
			blob []byte
			spec ImportSpec
		}{
			"empty":              {nil, aes},
			"oversized":          {make([]byte, 1<<20), aes},
			"flipped":            {flipped, aes},
			"truncated":          {aesBlob[:len(aesBlob)-8], aes},
			"AES-256 as AES-128": {aesBlob, aes128},
			"another EC key":     {ecBlob, ecOtherKey},
			"RSA as EC":          {rsaBlob, rsaAsEC},
			"RSA-2048 as 3072":   {rsaBlob, rsa3072},
			"EC as AES":          {ecBlob, aes},
		} {
			if _, err := c.RewrapChecked(ctx, kek, kek, tc.blob, tc.spec); !errors.Is(err, ErrInvalidInput) {
				t.Errorf("%s: %v, want ErrInvalidInput", name, err)
			}
		}
		if _, err := c.PinWrapped(ctx, WrappedKey{KEK: kek, Blob: []byte{}, Spec: aes}); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("an empty blob loaded: %v, want ErrInvalidInput", err)
		}
	})
}
