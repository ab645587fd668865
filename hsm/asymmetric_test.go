package hsm

import (
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"

	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"

	"github.com/miekg/pkcs11"
)

func newID(t *testing.T, c *Client) []byte {
	t.Helper()
	id, err := c.NewObjectID(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestRSASignaturesVerifyInGoAndInTheHSM(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		ctx := context.Background()
		id := newID(t, c)
		pub, err := c.GenerateRSAKeyPair(ctx, id, "rsa-test", 2048, Usage{Sign: true, Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		if pub.N.BitLen() != 2048 || pub.E != 65537 {
			t.Fatalf("public key: %d bits, e=%d", pub.N.BitLen(), pub.E)
		}
		if again, err := c.PublicKey(ctx, id); err != nil || !again.(*rsa.PublicKey).Equal(pub) {
			t.Fatalf("PublicKey read back: %v", err)
		}
		for _, hash := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			h := hash.New()
			h.Write([]byte("message"))
			digest := h.Sum(nil)

			sig, err := c.SignRSAPKCS1v15(ctx, id, pub, hash, digest)
			if err != nil {
				t.Fatalf("%v pkcs1: %v", hash, err)
			}
			if err := rsa.VerifyPKCS1v15(pub, hash, digest, sig); err != nil {
				t.Fatalf("%v pkcs1 Go verify: %v", hash, err)
			}
			if ok, err := c.VerifyRSAInHSM(ctx, id, false, hash, digest, sig, 0); err != nil || !ok {
				t.Fatalf("%v pkcs1 HSM verify: %v %v", hash, ok, err)
			}
			for _, salt := range []int{hash.Size(), PSSSaltMax(pub, hash), 0} {
				sig, err := c.SignRSAPSS(ctx, id, pub, hash, digest, salt)
				if err != nil {
					t.Fatalf("%v pss salt %d: %v", hash, salt, err)
				}
				if err := rsa.VerifyPSS(pub, hash, digest, sig, &rsa.PSSOptions{SaltLength: salt, Hash: hash}); err != nil {
					t.Fatalf("%v pss salt %d Go verify: %v", hash, salt, err)
				}
				if ok, err := c.VerifyRSAInHSM(ctx, id, true, hash, digest, sig, salt); err != nil || !ok {
					t.Fatalf("%v pss HSM verify: %v %v", hash, ok, err)
				}
				sig[0] ^= 1
				if ok, err := c.VerifyRSAInHSM(ctx, id, true, hash, digest, sig, salt); err != nil || ok {
					t.Fatalf("%v pss HSM verify of a bad signature: %v %v", hash, ok, err)
				}
			}
		}
		if _, err := c.SignRSAPKCS1v15(ctx, id, pub, crypto.SHA256, []byte("short")); !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("short digest: %v", err)
		}
		if _, err := c.SignRSAPSS(ctx, id, pub, crypto.SHA256, make([]byte, 32), 300); !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("salt too long: %v", err)
		}
	})
}

func TestECDSASignaturesOnEveryCurve(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		ctx := context.Background()
		for curve, hash := range map[string]crypto.Hash{"P-256": crypto.SHA256, "P-384": crypto.SHA384, "P-521": crypto.SHA512} {
			id := newID(t, c)
			pub, err := c.GenerateECKeyPair(ctx, id, "ec-test", curve, Usage{Sign: true, Verify: true})
			if err != nil {
				t.Fatalf("%s: %v", curve, err)
			}
			h := hash.New()
			h.Write([]byte("message"))
			digest := h.Sum(nil)
			sig, err := c.SignECDSA(ctx, id, pub, digest)
			if err != nil {
				t.Fatalf("%s sign: %v", curve, err)
			}
			size := len(sig) / 2
			if !ecdsa.Verify(pub, digest, new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])) {
				t.Fatalf("%s: Go does not verify the HSM's signature", curve)
			}
			if ok, err := c.VerifyECDSAInHSM(ctx, id, digest, sig); err != nil || !ok {
				t.Fatalf("%s HSM verify: %v %v", curve, ok, err)
			}
			digest[0] ^= 1
			if ok, err := c.VerifyECDSAInHSM(ctx, id, digest, sig); err != nil || ok {
				t.Fatalf("%s HSM verify of another digest: %v %v", curve, ok, err)
			}
		}
		if _, err := c.GenerateECKeyPair(ctx, []byte{1}, "x", "P-224", Usage{}); !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("P-224: %v", err)
		}
	})
}

func TestPrivateKeysAreSensitive(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 1)
		ctx := context.Background()
		id := newID(t, c)
		if _, err := c.GenerateECKeyPair(ctx, id, "ec-attrs", "P-256", Usage{Sign: true}); err != nil {
			t.Fatal(err)
		}
		err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
			h, err := c.findObject(p11, sh, id, pkcs11.CKO_PRIVATE_KEY)
			if err != nil {
				return err
			}
			attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			})
			if err != nil {
				return err
			}
			if attrs[0].Value[0] != 1 || attrs[1].Value[0] != 0 {
				t.Errorf("sensitive=%v extractable=%v", attrs[0].Value, attrs[1].Value)
			}
			if _, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
				t.Error("the private value was readable")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.DestroyObjects(ctx, id, anyLabel); err != nil {
			t.Fatal(err)
		}
		if _, err := c.PublicKey(ctx, id); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("both halves should be gone: %v", err)
		}
	})
}

func TestRSADecryptionOAEPAndPKCS1(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		ctx := context.Background()
		mode, err := c.OAEPMode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// NSS does OAEP-SHA-256 in the token; SoftHSM 2.6 has SHA-1 only.
		want := map[tokentest.Kind]OAEPMode{tokentest.NSS: OAEPInToken, tokentest.SoftHSM2: OAEPRawUnpad}[tokenA.Implementation()]
		if mode != want {
			t.Fatalf("OAEP mode on %s: %q, want %q", tokenA.Kind, mode, want)
		}
		id := newID(t, c)
		pub, err := c.GenerateRSAKeyPair(ctx, id, "rsa-enc", 2048, Usage{Encrypt: true, Decrypt: true})
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("wrapped data key")
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.DecryptRSAOAEP(ctx, id, pub, ct)
		if err != nil || string(got) != string(msg) {
			t.Fatalf("OAEP decrypt: %q %v", got, err)
		}
		ct[10] ^= 1
		if _, err := c.DecryptRSAOAEP(ctx, id, pub, ct); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("tampered OAEP: %v", err)
		}
		if _, err := c.DecryptRSAOAEP(ctx, id, pub, ct[1:]); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("short OAEP: %v", err)
		}
		ct, err = rsa.EncryptPKCS1v15(rand.Reader, pub, msg)
		if err != nil {
			t.Fatal(err)
		}
		got, err = c.DecryptRSAPKCS1v15(ctx, id, pub, ct)
		if err != nil || string(got) != string(msg) {
			t.Fatalf("PKCS1 decrypt: %q %v", got, err)
		}
	})
}

// The plugin's OAEP unpadding against Wycheproof's RSA-OAEP-SHA-256 vectors:
// every valid vector gives its message, every invalid one is refused.
func TestUnpadOAEPWycheproof(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "wycheproof", "rsa_oaep_2048_sha256_mgf1sha256_test.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		TestGroups []struct {
			PrivateKeyPkcs8 string `json:"privateKeyPkcs8"`
			Tests           []struct {
				TcID   int    `json:"tcId"`
				Msg    string `json:"msg"`
				Ct     string `json:"ct"`
				Label  string `json:"label"`
				Result string `json:"result"`
			} `json:"tests"`
		} `json:"testGroups"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, g := range file.TestGroups {
		der, _ := hex.DecodeString(g.PrivateKeyPkcs8)
		key, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			t.Fatal(err)
		}
		priv := key.(*rsa.PrivateKey)
		k := (priv.N.BitLen() + 7) / 8
		for _, tc := range g.Tests {
			count++
			ct, _ := hex.DecodeString(tc.Ct)
			label, _ := hex.DecodeString(tc.Label)
			var got []byte
			err := errOAEP
			c := new(big.Int).SetBytes(ct)
			if len(ct) == k && c.Cmp(priv.N) < 0 {
				m := new(big.Int).Exp(c, priv.D, priv.N)
				em := m.FillBytes(make([]byte, k))
				got, err = UnpadOAEP(sha256.New(), em, label)
			}
			switch tc.Result {
			case "valid":
				if err != nil || hex.EncodeToString(got) != tc.Msg {
					t.Errorf("tcId %d: valid vector gave %x, %v", tc.TcID, got, err)
				}
			case "invalid":
				if err == nil {
					t.Errorf("tcId %d: invalid vector accepted", tc.TcID)
				}
			}
		}
	}
	if count < 30 {
		t.Fatalf("only %d vectors read", count)
	}
}
