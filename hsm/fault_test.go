package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// Faults injected through the seam (hsm.Config.Intercept): what real HSMs
// do and software tokens never show. The cryptography underneath stays the
// real token's.

func openFaulty(t *testing.T, tok *tokentest.Token, poolSize int) (*hsm.Client, *faulttoken.Token) {
	t.Helper()
	ft := faulttoken.New(nil)
	cfg := hsm.TokenConfig(tok, poolSize)
	cfg.Intercept = ft.Intercept
	c, err := hsm.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open through the fault seam: %v", err)
	}
	t.Cleanup(c.Close)
	return c, ft
}

func newKey(t *testing.T, c *hsm.Client) []byte {
	t.Helper()
	ctx := context.Background()
	id, err := c.NewObjectID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.GenerateAESKey(ctx, id, "fault-test", 256, hsm.Usage{Encrypt: true, Decrypt: true}); err != nil {
		t.Fatal(err)
	}
	return id
}

func hasQuirk(c *hsm.Client, name string) bool {
	for _, q := range c.Quirks() {
		if q.Name == name {
			return true
		}
	}
	return false
}

// A token that ignores the caller's IV and reports its own (written into
// CK_GCM_PARAMS like CloudHSM, or appended like Luna in FIPS mode): the
// ciphertext carries the token's IV and decrypts.
func TestTokenWithItsOwnGCMIV(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		for name, mode := range map[string]faulttoken.IVMode{"written": faulttoken.IVWritten, "appended": faulttoken.IVAppended} {
			t.Run(name, func(t *testing.T) {
				c, ft := openFaulty(t, tokenA, 2)
				ctx := context.Background()
				id := newKey(t, c)
				ft.SetIVMode(mode)
				blob, err := c.EncryptGCM(ctx, id, []byte("iv chosen by the token"), []byte("aad"))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(blob[:hsm.GCMIVLen], ft.LastIV()) {
					t.Fatalf("ciphertext IV %x, token used %x", blob[:hsm.GCMIVLen], ft.LastIV())
				}
				if len(blob) != hsm.GCMIVLen+len("iv chosen by the token")+hsm.GCMTagLen {
					t.Fatalf("blob of %d bytes", len(blob))
				}
				got, err := c.DecryptGCM(ctx, id, blob, []byte("aad"))
				if err != nil || string(got) != "iv chosen by the token" {
					t.Fatalf("round trip: %q, %v", got, err)
				}
				want := map[faulttoken.IVMode]string{faulttoken.IVWritten: "gcm_token_iv", faulttoken.IVAppended: "gcm_appended_iv"}[mode]
				if !hasQuirk(c, want) {
					t.Fatalf("quirk %s not listed: %+v", want, c.Quirks())
				}
			})
		}
	})
}

// A token that uses an IV of its own and reports none would make
// ciphertexts nobody can decrypt: the self-test refuses it at Open.
func TestTokenThatHidesItsGCMIVIsRefused(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		ft := faulttoken.New(nil)
		ft.SetIVMode(faulttoken.IVIgnored)
		cfg := hsm.TokenConfig(tokenA, 2)
		cfg.Intercept = ft.Intercept
		c, err := hsm.Open(context.Background(), cfg)
		if !errors.Is(err, hsm.ErrGCMUnusable) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("Open on a token hiding its IV: %v, want ErrGCMUnusable", err)
		}
	})
}

func TestDeviceErrorMidOperationIsRetriedAfterReinitialising(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		id := newKey(t, c)
		ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
		blob, err := c.EncryptGCM(ctx, id, []byte("survives"), []byte("aad"))
		if err != nil {
			t.Fatalf("encrypt across a device error: %v", err)
		}
		if got, err := c.DecryptGCM(ctx, id, blob, []byte("aad")); err != nil || string(got) != "survives" {
			t.Fatalf("decrypt: %q %v", got, err)
		}
		if st := c.Stats(); st.Reconnects != 1 {
			t.Fatalf("reconnects %d, want 1", st.Reconnects)
		}
		// Twice in a row is an outage: 503-style, no third try.
		ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR), pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
		if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("two device errors: %v, want ErrUnavailable", err)
		}
		if _, err := c.EncryptGCM(ctx, id, []byte("after"), []byte("aad")); err != nil {
			t.Fatalf("after the outage: %v", err)
		}
	})
}

func TestSessionHandleInvalidMidOperationReplacesTheSession(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		id := newKey(t, c)
		before := c.Stats()
		ft.FailNext("C_EncryptInit", pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID))
		if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
			t.Fatalf("encrypt across a lost session: %v", err)
		}
		after := c.Stats()
		if after.Replaced != before.Replaced+1 || after.Reconnects != before.Reconnects {
			t.Fatalf("stats %+v -> %+v: want one session replaced, no re-initialisation", before, after)
		}
	})
}

// NSS's order after C_Finalize behind the client's back: the session is
// invalid, then the slot. One re-initialisation and one retry, whatever
// the order.
func TestErrorsInNSSOrderLeadToOneReinitialisation(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 1)
		ctx := context.Background()
		id := newKey(t, c)
		ft.FailNext("C_EncryptInit", pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID))
		ft.FailNext("C_GetTokenInfo", pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED))
		if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
			t.Fatalf("session error on a token that stopped answering: %v", err)
		}
		if st := c.Stats(); st.Reconnects != 1 {
			t.Fatalf("reconnects %d, want 1", st.Reconnects)
		}
		ft.FailNext("C_EncryptInit", pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID))
		ft.FailNext("C_OpenSession", pkcs11.Error(pkcs11.CKR_SLOT_ID_INVALID))
		if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
			t.Fatalf("session error, then slot error: %v", err)
		}
		if st := c.Stats(); st.Reconnects != 2 {
			t.Fatalf("reconnects %d, want 2", st.Reconnects)
		}
	})
}

func TestPINIncorrectIsReportedAndNotRetried(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, _, tokenB *tokentest.Token) {
		ft := faulttoken.New(nil)
		ft.FailNext("C_Login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
		cfg := hsm.TokenConfig(tokenB, 1)
		cfg.Intercept = ft.Intercept
		if _, err := hsm.Open(context.Background(), cfg); !errors.Is(err, hsm.ErrPINIncorrect) {
			t.Fatalf("Open: %v, want ErrPINIncorrect", err)
		}
		if n := ft.Calls("C_Login"); n != 1 {
			t.Fatalf("C_Login called %d times, want 1", n)
		}
	})
}

// A slow token holds its sessions; callers beyond the pool wait no longer
// than their deadline and get ErrPoolTimeout, not a hang. In a
// testing/synctest bubble: the slow call's delay and the caller's
// deadline run on the bubble's clock, so the wait is measured exactly.
func TestSlowCallsDoNotHangOtherCallers(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		synctest.Test(t, func(t *testing.T) {
			c, ft := openFaulty(t, tokenA, 1)
			id := newKey(t, c)
			ft.SetDelay("C_Encrypt", 400*time.Millisecond)
			start := time.Now()
			var slowErr error
			var slowEnd time.Duration
			var wg sync.WaitGroup
			wg.Go(func() {
				_, slowErr = c.EncryptGCM(context.Background(), id, []byte("slow"), []byte("aad"))
				slowEnd = time.Since(start)
			})
			// Nothing else in the bubble runs: the slow call is in the
			// token's delay, holding the only session.
			synctest.Wait()
			const deadline = 50 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			_, err := c.EncryptGCM(ctx, id, []byte("waits"), []byte("aad"))
			waited := time.Since(start)
			wg.Wait()
			if !errors.Is(err, hsm.ErrPoolTimeout) {
				t.Fatalf("caller behind a slow call: %v, want ErrPoolTimeout", err)
			}
			if waited != deadline {
				t.Errorf("the caller behind a slow call was answered after %v, want its deadline, %v", waited, deadline)
			}
			if slowErr != nil {
				t.Fatalf("the slow call itself: %v", slowErr)
			}
			if slowEnd <= waited {
				t.Errorf("the slow call ended at %v, before the caller behind it gave up (%v): it did not hold the session", slowEnd, waited)
			}
		})
	})
}

// Slot ids change after a token is re-initialised; the client finds its
// token again by label.
func TestSlotRenumberedIsFoundAgainByLabel(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		id := newKey(t, c)
		info, err := c.TokenInfo()
		if err != nil {
			t.Fatal(err)
		}
		ft.ShiftSlots(100)
		ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED))
		if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("aad")); err != nil {
			t.Fatalf("encrypt after the slot was renumbered: %v", err)
		}
		after, err := c.TokenInfo()
		if err != nil {
			t.Fatal(err)
		}
		if after.Slot != info.Slot+100 || after.Label != tokenA.Label {
			t.Fatalf("token now in slot %d (%s), want %d", after.Slot, after.Label, info.Slot+100)
		}
	})
}

// A transient failure during the one-time RSA-OAEP probe must not switch
// the token to raw RSA for good.
func TestOAEPProbeSurvivesATransientFailure(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, _, tokenB *tokentest.Token) {
		c, ft := openFaulty(t, tokenB, 2)
		ctx := context.Background()
		ft.FailNext("C_DecryptInit", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR), pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
		if _, err := c.OAEPMode(ctx); !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("probe during an outage: %v, want ErrUnavailable", err)
		}
		mode, err := c.OAEPMode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := map[tokentest.Kind]hsm.OAEPMode{tokentest.NSS: hsm.OAEPInToken, tokentest.SoftHSM2: hsm.OAEPRawUnpad}[tokenB.Implementation()]
		if mode != want {
			t.Fatalf("OAEP mode after the outage: %q, want %q", mode, want)
		}
	})
}

// CKR_GENERAL_ERROR from C_Decrypt is SoftHSM's answer to a bad tag, and
// to failures of its own. Good data is never called corrupt: one such
// answer is looked at again and the data decrypts; on a token that keeps
// failing, the known-answer test fails and the answer is ErrUnavailable. A
// really bad tag on SoftHSM is still ErrDecrypt.
func TestGeneralErrorOnDecryptNeverCallsGoodDataCorrupt(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		id := newKey(t, c)
		blob, err := c.EncryptGCM(ctx, id, []byte("good data"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		ft.FailNext("C_Decrypt", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR))
		got, err := c.DecryptGCM(ctx, id, blob, []byte("aad"))
		if err != nil || string(got) != "good data" {
			t.Fatalf("good data after a CKR_GENERAL_ERROR: %q, %v; want it decrypted on the second look", got, err)
		}
		ft.SetFailing("C_Decrypt", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR))
		if _, err := c.DecryptGCM(ctx, id, blob, []byte("aad")); !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("a token that keeps answering CKR_GENERAL_ERROR: %v, want ErrUnavailable", err)
		}
		ft.SetFailing("C_Decrypt", nil)
		bad := bytes.Clone(blob)
		bad[len(bad)-1] ^= 1
		if _, err := c.DecryptGCM(ctx, id, bad, []byte("aad")); !errors.Is(err, hsm.ErrDecrypt) {
			t.Fatalf("a bad tag: %v, want ErrDecrypt", err)
		}
	})
}

// A KEK handle that went stale at C_UnwrapKey (a token that lost its
// storage answers CKR_UNWRAPPING_KEY_HANDLE_INVALID) is a stale handle
// like any other: looked up again and retried once, and, if it fails
// again, an outage (503), never an internal error.
func TestStaleKEKHandleAtUnwrapIsRetriedThenUnavailable(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		newID := func() []byte {
			id, err := c.NewObjectID(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return id
		}
		kek := newID()
		if err := c.GenerateKEK(ctx, kek, "hsmkms-test/kek"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.DestroyObjects(ctx, kek, func(string) bool { return true }) })
		spec := hsm.ImportSpec{Kind: hsm.ImportAES, Bits: 256, ID: newID(), Label: "hsmkms-test/wrapped", Use: hsm.Usage{Encrypt: true, Decrypt: true}}
		blob, _, err := c.GenerateWrapped(ctx, kek, spec)
		if err != nil {
			t.Fatal(err)
		}
		stale := pkcs11.Error(pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID)
		ft.FailNext("C_UnwrapKey", stale)
		release, err := c.PinWrapped(ctx, hsm.WrappedKey{KEK: kek, Blob: blob, Spec: spec})
		if err != nil {
			t.Fatalf("a stale KEK handle once: %v, want the key loaded on the retry", err)
		}
		release()
		c.ForgetUnwrapped(spec.ID)
		ft.FailNext("C_UnwrapKey", stale, stale)
		if _, err := c.PinWrapped(ctx, hsm.WrappedKey{KEK: kek, Blob: blob, Spec: spec}); !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("a stale KEK handle twice: %v, want ErrUnavailable", err)
		}
	})
}

// TestTemplateInconsistentAtKeyPairGenerationIsRetriedThenUnavailable: an
// RSA or EC template is the plugin's own, so the token's
// CKR_TEMPLATE_INCONSISTENT (SoftHSM2 answered it once to an e2e rotation
// under load, a 500) is its failure: retried once on a fresh session, then
// ErrUnavailable, the 503.
func TestTemplateInconsistentAtKeyPairGenerationIsRetriedThenUnavailable(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 2)
		ctx := context.Background()
		use := hsm.Usage{Sign: true, Verify: true}
		generate := map[string]func(id []byte) error{
			"ec": func(id []byte) error {
				_, err := c.GenerateECKeyPair(ctx, id, "hsmkms-test/ec-retry", "P-256", use)
				return err
			},
			"rsa": func(id []byte) error {
				_, err := c.GenerateRSAKeyPair(ctx, id, "hsmkms-test/rsa-retry", 2048, use)
				return err
			},
		}
		inconsistent := pkcs11.Error(pkcs11.CKR_TEMPLATE_INCONSISTENT)
		for name, gen := range generate {
			id, err := c.NewObjectID(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.DestroyObjects(ctx, id, func(string) bool { return true }) })
			ft.FailNext("C_GenerateKeyPair", inconsistent)
			if err := gen(id); err != nil {
				t.Fatalf("%s: CKR_TEMPLATE_INCONSISTENT once: %v, want the key pair made on the retry", name, err)
			}
			other, err := c.NewObjectID(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ft.FailNext("C_GenerateKeyPair", inconsistent, inconsistent)
			if err := gen(other); !errors.Is(err, hsm.ErrUnavailable) || errors.Is(err, hsm.ErrInvalidInput) {
				t.Fatalf("%s: CKR_TEMPLATE_INCONSISTENT twice: %v, want ErrUnavailable", name, err)
			}
		}
	})
}
