package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"math/big"
	"testing"
	"testing/synctest"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// objectsWithID lists the objects with CKA_ID id and whether each is a
// token object, straight from the token.
func objectsWithID(t *testing.T, c *Client, id []byte) (tokenObjects, sessionObjects int, sensitive, extractable []bool) {
	t.Helper()
	err := c.do(context.Background(), func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		found, err := findAll(p11, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}, 16)
		if err != nil {
			return err
		}
		for _, h := range found {
			if readBool(p11, sh, h, pkcs11.CKA_TOKEN) {
				tokenObjects++
			} else {
				sessionObjects++
			}
			sensitive = append(sensitive, readBool(p11, sh, h, pkcs11.CKA_SENSITIVE))
			extractable = append(extractable, readBool(p11, sh, h, pkcs11.CKA_EXTRACTABLE))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return
}

// A wrapped key exists on the token only as a cached session object,
// sensitive and never extractable, made from its blob when used and gone
// after the TTL; a blob moved to another KEK still gives the same key.
// In a testing/synctest bubble: the TTL and the cache's sweeps run on the
// bubble's clock, which stands still while the token works, so no entry
// expires in the middle of a check and the expiry is checked exactly.
func TestWrappedKeysLiveOnlyInTheCache(t *testing.T) {
	eachToken(t, func(t *testing.T, tok, _ *tokentest.Token) {
		synctest.Test(t, func(t *testing.T) { testWrappedKeysLiveOnlyInTheCache(t, tok) })
	})
}

// unwrappedSweep is how often the cache looks for expired entries with a
// TTL under 800 ms (unwrapped_cache.go's sweepLoop).
const unwrappedSweep = 200 * time.Millisecond

func testWrappedKeysLiveOnlyInTheCache(t *testing.T, tok *tokentest.Token) {
	ctx := context.Background()
	cfg := tokenConfig(tok, 2)
	cfg.UnwrappedTTL = 300 * time.Millisecond
	c, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	kek, kek2 := newID(t, c), newID(t, c)
	for _, id := range [][]byte{kek, kek2} {
		if err := c.GenerateKEK(ctx, id, "hsmkms-test/kek"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.DestroyObjects(ctx, id, anyLabel) })
	}
	specs := map[string]ImportSpec{
		"aes":  {Kind: ImportAES, Bits: 256, Use: Usage{Encrypt: true, Decrypt: true}},
		"hmac": {Kind: ImportHMAC, Bits: 512, Use: Usage{Sign: true, Verify: true}},
		"rsa":  {Kind: ImportRSA, Bits: 2048, Use: Usage{Sign: true, Verify: true}},
		"ec":   {Kind: ImportEC, Curve: "P-256", Use: Usage{Sign: true, Verify: true}},
	}
	for name, spec := range specs {
		spec.ID, spec.Label = newID(t, c), "hsmkms-test/wrapped"
		blob, pub, err := c.GenerateWrapped(ctx, kek, spec)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		spec.Public = pub
		if tokenObjs, sessionObjs, _, _ := objectsWithID(t, c, spec.ID); tokenObjs+sessionObjs != 0 {
			t.Fatalf("%s: %d token and %d session objects left after wrapping", name, tokenObjs, sessionObjs)
		}
		use := func(blob, kekID []byte) {
			t.Helper()
			release, err := c.PinWrapped(ctx, WrappedKey{KEK: kekID, Blob: blob, Spec: spec})
			if err != nil {
				t.Fatalf("%s: loading: %v", name, err)
			}
			defer release()
			digest := sha256.Sum256([]byte("wrapped"))
			switch spec.Kind {
			case ImportAES:
				ct, err := c.EncryptGCM(ctx, spec.ID, []byte("x"), []byte("aad"))
				if err == nil {
					_, err = c.DecryptGCM(ctx, spec.ID, ct, []byte("aad"))
				}
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			case ImportHMAC:
				if _, err := c.HMAC(ctx, spec.ID, crypto.SHA256, []byte("x")); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			case ImportRSA:
				sig, err := c.SignRSAPKCS1v15(ctx, spec.ID, pub.(*rsa.PublicKey), crypto.SHA256, digest[:])
				if err != nil || rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, digest[:], sig) != nil {
					t.Fatalf("%s: %v", name, err)
				}
			case ImportEC:
				sig, err := c.SignECDSA(ctx, spec.ID, pub.(*ecdsa.PublicKey), digest[:])
				if err != nil || !ecdsa.Verify(pub.(*ecdsa.PublicKey), digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
					t.Fatalf("%s: %v", name, err)
				}
			}
			tokenObjs, sessionObjs, sensitive, extractable := objectsWithID(t, c, spec.ID)
			if tokenObjs != 0 || sessionObjs != 1 || !sensitive[0] || extractable[0] {
				t.Fatalf("%s: in use: %d token objects, %d session objects, sensitive %v, extractable %v", name, tokenObjs, sessionObjs, sensitive, extractable)
			}
		}
		use(blob, kek)
		moved, err := c.Rewrap(ctx, kek, kek2, blob, spec)
		if err != nil {
			t.Fatalf("%s: rewrap: %v", name, err)
		}
		c.ForgetUnwrapped(spec.ID)
		if _, sessionObjs, _, _ := objectsWithID(t, c, spec.ID); sessionObjs != 0 {
			t.Fatalf("%s: a forgotten key's object is still on the token", name)
		}
		use(moved, kek2)
		// Last used now: kept for the TTL, gone at the first sweep
		// after it.
		time.Sleep(cfg.UnwrappedTTL - time.Nanosecond)
		synctest.Wait()
		if _, sessionObjs, _, _ := objectsWithID(t, c, spec.ID); sessionObjs != 1 {
			t.Fatalf("%s: %d cached objects just before the TTL ended, want 1", name, sessionObjs)
		}
		time.Sleep(unwrappedSweep + time.Nanosecond)
		synctest.Wait()
		if _, sessionObjs, _, _ := objectsWithID(t, c, spec.ID); sessionObjs != 0 {
			t.Fatalf("%s: the cached object outlived its TTL by a sweep", name)
		}
	}
	st := c.UnwrappedCacheStats()
	if st.Unwraps < 8 || st.Evictions < 8 || st.Entries != 0 {
		t.Fatalf("cache stats: %+v", st)
	}
}
