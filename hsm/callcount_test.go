package hsm_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"testing"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// On a network HSM every PKCS#11 call is a round trip, so a request's
// latency is its number of calls times the round trip. These tests count
// the calls each operation makes on a warm key (its handle cached, a
// session idle in the pool), by function name, on every token kind:
// counts, not times.

// warmCalls runs op once to warm the key and the pool, then again, and
// returns the PKCS#11 calls the second run made.
func warmCalls(t *testing.T, ft *faulttoken.Token, op func() error) map[string]int {
	t.Helper()
	if err := op(); err != nil {
		t.Fatalf("warming up: %v", err)
	}
	before := ft.Counts()
	if err := op(); err != nil {
		t.Fatal(err)
	}
	return faulttoken.Delta(before, ft.Counts())
}

// initAndOneCall are the calls of a single-part operation done in one
// call: C_<op>Init, then C_<op> with a buffer sized from what the plugin
// knows, never a length query first.
func initAndOneCall(op string) map[string]int {
	return map[string]int{"C_" + op + "Init": 1, "C_" + op: 1}
}

func TestCallsPerOperationOnAWarmKey(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 1)
		ctx := context.Background()
		digest := sha256.Sum256([]byte("counted"))

		aesID := newKey(t, c)
		blob, err := c.EncryptGCM(ctx, aesID, []byte("counted"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		hmacID := newID(t, c)
		if err := c.GenerateHMACKey(ctx, hmacID, "count", 512, hsm.Usage{Sign: true, Verify: true}); err != nil {
			t.Fatal(err)
		}
		rsaID := newID(t, c)
		rsaPub, err := c.GenerateRSAKeyPair(ctx, rsaID, "count", 2048, hsm.Usage{Sign: true, Verify: true, Encrypt: true, Decrypt: true})
		if err != nil {
			t.Fatal(err)
		}
		oaepCT, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, []byte("counted"), nil)
		if err != nil {
			t.Fatal(err)
		}
		pkcs1CT, err := rsa.EncryptPKCS1v15(rand.Reader, rsaPub, []byte("counted"))
		if err != nil {
			t.Fatal(err)
		}
		ecID := newID(t, c)
		ecPub, err := c.GenerateECKeyPair(ctx, ecID, "count", "P-256", hsm.Usage{Sign: true, Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		edID := newID(t, c)
		edPub, edErr := c.GenerateEd25519KeyPair(ctx, edID, "count", hsm.Usage{Sign: true, Verify: true})
		if edErr != nil && !errors.Is(edErr, hsm.ErrNoEd25519) {
			t.Fatal(edErr)
		}

		cases := []struct {
			name string
			op   func() error
			want map[string]int
		}{
			{"encrypt AES-GCM", func() error {
				_, err := c.EncryptGCM(ctx, aesID, []byte("counted"), []byte("aad"))
				return err
			}, initAndOneCall("Encrypt")},
			{"decrypt AES-GCM", func() error {
				_, err := c.DecryptGCM(ctx, aesID, blob, []byte("aad"))
				return err
			}, initAndOneCall("Decrypt")},
			{"sign RSA PKCS#1 v1.5", func() error {
				_, err := c.SignRSAPKCS1v15(ctx, rsaID, rsaPub, crypto.SHA256, digest[:])
				return err
			}, initAndOneCall("Sign")},
			{"sign RSA PSS", func() error {
				_, err := c.SignRSAPSS(ctx, rsaID, rsaPub, crypto.SHA256, digest[:], 32)
				return err
			}, initAndOneCall("Sign")},
			{"sign ECDSA P-256", func() error {
				_, err := c.SignECDSA(ctx, ecID, ecPub, digest[:])
				return err
			}, initAndOneCall("Sign")},
			{"sign Ed25519", func() error {
				if edErr != nil {
					return edErr
				}
				_, err := c.SignEd25519(ctx, edID, edPub, []byte("counted"))
				return err
			}, initAndOneCall("Sign")},
			// HMAC verify is an HMAC compared in Go: the same calls.
			{"HMAC SHA-256", func() error {
				_, err := c.HMAC(ctx, hmacID, crypto.SHA256, []byte("counted"))
				return err
			}, initAndOneCall("Sign")},
			{"HMAC SHA-512", func() error {
				_, err := c.HMAC(ctx, hmacID, crypto.SHA512, []byte("counted"))
				return err
			}, initAndOneCall("Sign")},
			{"decrypt RSA-OAEP", func() error {
				_, err := c.DecryptRSAOAEP(ctx, rsaID, rsaPub, oaepCT)
				return err
			}, initAndOneCall("Decrypt")},
			{"decrypt RSA PKCS#1 v1.5", func() error {
				_, err := c.DecryptRSAPKCS1v15(ctx, rsaID, rsaPub, pkcs1CT)
				return err
			}, initAndOneCall("Decrypt")},
			{"random 32 B", func() error {
				_, err := c.Random(ctx, 32)
				return err
			}, map[string]int{"C_GenerateRandom": 1}},
			{"random 64 KiB", func() error {
				_, err := c.Random(ctx, 64<<10)
				return err
			}, map[string]int{"C_GenerateRandom": 1}},
			{"random 64 KiB + 1", func() error {
				_, err := c.Random(ctx, 64<<10+1)
				return err
			}, map[string]int{"C_GenerateRandom": 2}},
			{"random 1 MiB", func() error {
				_, err := c.Random(ctx, hsm.MaxRandom)
				return err
			}, map[string]int{"C_GenerateRandom": 16}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				if tc.name == "sign Ed25519" && edErr != nil {
					t.Skipf("the token has no Ed25519: %v", edErr)
				}
				got := warmCalls(t, ft, tc.op)
				t.Logf("%s on %s: %d calls %v", tc.name, tokenA.Kind, total(got), got)
				if !maps.Equal(got, tc.want) {
					t.Errorf("calls %v, want %v", got, tc.want)
				}
			})
		}
	})
}

// Whatever the operation, a warm key is never looked up again, and
// nothing is read about objects or sessions on the request path: those
// calls are round trips that answer nothing the plugin does not know.
func TestNoLookupsOrProbesOnTheRequestPath(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		c, ft := openFaulty(t, tokenA, 4)
		ctx := context.Background()
		id := newKey(t, c)
		ecID := newID(t, c)
		pub, err := c.GenerateECKeyPair(ctx, ecID, "count", "P-384", hsm.Usage{Sign: true, Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256([]byte("x"))
		mix := func() error {
			for i := range 8 {
				blob, err := c.EncryptGCM(ctx, id, []byte(fmt.Sprint(i)), []byte("aad"))
				if err != nil {
					return err
				}
				if _, err := c.DecryptGCM(ctx, id, blob, []byte("aad")); err != nil {
					return err
				}
				if _, err := c.SignECDSA(ctx, ecID, pub, digest[:]); err != nil {
					return err
				}
			}
			return nil
		}
		got := warmCalls(t, ft, mix)
		for _, name := range []string{"C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal",
			"C_GetAttributeValue", "C_GetSessionInfo", "C_GetTokenInfo", "C_OpenSession", "C_CloseSession"} {
			if got[name] != 0 {
				t.Errorf("%d calls of %s on warm keys (all calls: %v)", got[name], name, got)
			}
		}
		if want := 8 * 3 * 2; total(got) != want {
			t.Errorf("%d calls for 8 × (encrypt, decrypt, sign), want %d: %v", total(got), want, got)
		}
	})
}

func total(calls map[string]int) int {
	n := 0
	for _, c := range calls {
		n += c
	}
	return n
}

func newID(t *testing.T, c *hsm.Client) []byte {
	t.Helper()
	id, err := c.NewObjectID(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return id
}
