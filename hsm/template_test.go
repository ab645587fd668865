package hsm

import (
	"bytes"
	"context"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// readBack compares every attribute of template with what the token holds
// for object h. Attributes the token computes or rounds (none of ours) would
// differ; every one we set must come back as set.
func readBack(t *testing.T, p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, what string, template []*pkcs11.Attribute) {
	t.Helper()
	for _, want := range template {
		if want.Type == pkcs11.CKA_MODULUS_BITS {
			continue // a generation parameter NSS does not keep on the object; the modulus is checked elsewhere
		}
		got, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(want.Type, nil)})
		if err != nil {
			t.Errorf("%s: reading attribute %#x: %v", what, want.Type, err)
			continue
		}
		if !bytes.Equal(got[0].Value, want.Value) {
			t.Errorf("%s: attribute %#x is %x on the token, template says %x", what, want.Type, got[0].Value, want.Value)
		}
	}
}

func findHandle(t *testing.T, c *Client, p11 PKCS11, sh pkcs11.SessionHandle, id []byte, class uint) pkcs11.ObjectHandle {
	t.Helper()
	h, err := c.findObject(p11, sh, id, class)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Every key the plugin makes carries its template on both tokens: read back
// attribute by attribute. A sign-only RSA key pair can be made (NSS wants
// the public half able to verify) and its usages cannot be widened later.
func TestKeyTemplatesReadBackAndCannotBeWidened(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		ctx := context.Background()
		aesID, hmacID, signID, decID, ecID := newID(t, c), newID(t, c), newID(t, c), newID(t, c), newID(t, c)
		aesUse, hmacUse := Usage{Encrypt: true, Decrypt: true}, Usage{Sign: true, Verify: true}
		signUse, decUse, ecUse := Usage{Sign: true}, Usage{Decrypt: true}, Usage{Sign: true, Verify: true}
		if err := c.GenerateAESKey(ctx, aesID, "tmpl-aes", 256, aesUse); err != nil {
			t.Fatal(err)
		}
		if err := c.GenerateHMACKey(ctx, hmacID, "tmpl-hmac", 512, hmacUse); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GenerateRSAKeyPair(ctx, signID, "tmpl-rsa-sign", 2048, signUse); err != nil {
			t.Fatalf("sign-only RSA key pair: %v", err)
		}
		if _, err := c.GenerateRSAKeyPair(ctx, decID, "tmpl-rsa-dec", 2048, decUse); err != nil {
			t.Fatalf("decrypt-only RSA key pair: %v", err)
		}
		if _, err := c.GenerateECKeyPair(ctx, ecID, "tmpl-ec", "P-256", ecUse); err != nil {
			t.Fatal(err)
		}
		p256, _ := asn1.Marshal(curveOIDs["P-256"])
		err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
			readBack(t, p11, sh, findHandle(t, c, p11, sh, aesID, pkcs11.CKO_SECRET_KEY), "AES",
				secretKeyTemplate(pkcs11.CKK_AES, 32, aesID, "tmpl-aes", aesUse))
			readBack(t, p11, sh, findHandle(t, c, p11, sh, hmacID, pkcs11.CKO_SECRET_KEY), "HMAC",
				secretKeyTemplate(pkcs11.CKK_GENERIC_SECRET, 64, hmacID, "tmpl-hmac", hmacUse))
			for _, kp := range []struct {
				name string
				id   []byte
				use  Usage
			}{{"RSA sign-only", signID, signUse}, {"RSA decrypt-only", decID, decUse}} {
				pub, priv := keyPairTemplates(pkcs11.CKK_RSA, kp.id, "x", kp.use, []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048),
					pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
				}, nil)
				label := map[string]string{"RSA sign-only": "tmpl-rsa-sign", "RSA decrypt-only": "tmpl-rsa-dec"}[kp.name]
				readBack(t, p11, sh, findHandle(t, c, p11, sh, kp.id, pkcs11.CKO_PUBLIC_KEY), kp.name+" public", withLabel(pub, label))
				readBack(t, p11, sh, findHandle(t, c, p11, sh, kp.id, pkcs11.CKO_PRIVATE_KEY), kp.name+" private", withLabel(priv, label))
			}
			pub, priv := keyPairTemplates(pkcs11.CKK_EC, ecID, "tmpl-ec", ecUse, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256)}, nil)
			readBack(t, p11, sh, findHandle(t, c, p11, sh, ecID, pkcs11.CKO_PUBLIC_KEY), "EC public", pub)
			readBack(t, p11, sh, findHandle(t, c, p11, sh, ecID, pkcs11.CKO_PRIVATE_KEY), "EC private", priv)

			// No usage can be added afterwards: CKA_MODIFIABLE is false.
			signPriv := findHandle(t, c, p11, sh, signID, pkcs11.CKO_PRIVATE_KEY)
			if err := p11.SetAttributeValue(sh, signPriv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)}); err == nil {
				t.Error("C_SetAttributeValue(CKA_DECRYPT, true) on a sign-only private key succeeded")
			}
			aes := findHandle(t, c, p11, sh, aesID, pkcs11.CKO_SECRET_KEY)
			if err := p11.SetAttributeValue(sh, aes, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_WRAP, true)}); err == nil {
				t.Error("C_SetAttributeValue(CKA_WRAP, true) on an AES key succeeded")
			}
			got, err := p11.GetAttributeValue(sh, signPriv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, nil)})
			if err != nil || !bytes.Equal(got[0].Value, []byte{0}) {
				t.Errorf("sign-only key's CKA_DECRYPT after the attempt: %v %v", got, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func withLabel(template []*pkcs11.Attribute, label string) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, len(template))
	for i, a := range template {
		if a.Type == pkcs11.CKA_LABEL {
			a = pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)
		}
		out[i] = a
	}
	return out
}

// After a re-initialisation a cached object handle is used again only if
// the token confirms it still names the same object: here the cache is
// made to point at another key, and the encryption must still use the
// right one.
func TestStaleHandleAfterReinitialisationIsCheckedByID(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		ctx := context.Background()
		right, wrong := newAESKey(t, c, 256), newAESKey(t, c, 256)
		var wrongHandle pkcs11.ObjectHandle
		if err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
			wrongHandle = findHandle(t, c, p11, sh, wrong, pkcs11.CKO_SECRET_KEY)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		c.mod.mu.Lock()
		key := fmt.Sprintf("%d/%s", pkcs11.CKO_SECRET_KEY, hex.EncodeToString(right))
		c.token.cacheHandle(key, cachedHandle{wrongHandle, c.mod.generation})
		c.mod.generation++ // as a re-initialisation would
		c.mod.mu.Unlock()
		blob, err := c.EncryptGCM(ctx, right, []byte("right key"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.DecryptGCM(ctx, wrong, blob, []byte("aad")); err == nil {
			t.Fatal("the stale handle was used: the other key decrypts")
		}
		if got, err := c.DecryptGCM(ctx, right, blob, []byte("aad")); err != nil || string(got) != "right key" {
			t.Fatalf("right key: %q %v", got, err)
		}
	})
}
