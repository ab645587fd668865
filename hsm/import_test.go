package hsm

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"math/big"
	"testing"

	"github.com/tink-crypto/tink-go/v2/kwp/subtle"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// byok makes Transit's BYOK ciphertext of material for wrapping key pub.
func byok(t *testing.T, pub *rsa.PublicKey, hash crypto.Hash, material []byte) []byte {
	t.Helper()
	ephemeral := make([]byte, 32)
	if _, err := rand.Read(ephemeral); err != nil {
		t.Fatal(err)
	}
	kw, err := subtle.NewKWP(ephemeral)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := kw.Wrap(material)
	if err != nil {
		t.Fatal(err)
	}
	encEph, err := rsa.EncryptOAEP(hash.New(), rand.Reader, pub, ephemeral, nil)
	if err != nil {
		t.Fatal(err)
	}
	return append(encEph, wrapped...)
}

// The key that went in is the key the token uses: AES keys imported both
// ways decrypt what Go encrypted under the same bytes, and private keys
// sign what their Go public keys verify.
func TestImportPutsTheGivenKeyInTheToken(t *testing.T) {
	eachToken(t, func(t *testing.T, tok, _ *tokentest.Token) {
		ctx := context.Background()
		c := openClient(t, tok, 2)
		wkID := newID(t, c)
		wkPub, err := c.GenerateWrappingKey(ctx, wkID, "hsmkms-test/wrapping")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.DestroyObjects(ctx, wkID, anyLabel) })
		wk := WrappingKey{ID: wkID, Public: wkPub}

		imports := map[string]func(material []byte, spec ImportSpec) (Imported, error){
			"jwk": func(material []byte, spec ImportSpec) (Imported, error) { return c.ImportMaterial(ctx, material, spec) },
			"byok-sha256": func(material []byte, spec ImportSpec) (Imported, error) {
				return c.ImportWrapped(ctx, wk, byok(t, wkPub, crypto.SHA256, material), crypto.SHA256, spec)
			},
			"byok-sha1": func(material []byte, spec ImportSpec) (Imported, error) {
				return c.ImportWrapped(ctx, wk, byok(t, wkPub, crypto.SHA1, material), crypto.SHA1, spec)
			},
		}
		for how, doImport := range imports {
			t.Run(how, func(t *testing.T) {
				key := make([]byte, 32)
				_, _ = rand.Read(key)
				id := newID(t, c)
				t.Cleanup(func() { _ = c.DestroyObjects(ctx, id, anyLabel) })
				if _, err := doImport(key, ImportSpec{Kind: ImportAES, Bits: 256, ID: id, Label: "hsmkms-test/aes", Use: Usage{Encrypt: true, Decrypt: true}}); err != nil {
					t.Fatalf("AES import: %v", err)
				}
				block, _ := aes.NewCipher(key)
				gcm, _ := cipher.NewGCM(block)
				nonce := make([]byte, 12)
				_, _ = rand.Read(nonce)
				aad := []byte("aad")
				blob := append(nonce, gcm.Seal(nil, nonce, []byte("known answer"), aad)...)
				plain, err := c.DecryptGCM(ctx, id, blob, aad)
				if err != nil || string(plain) != "known answer" {
					t.Fatalf("decrypting Go's ciphertext with the imported key: %q, %v", plain, err)
				}

				ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				der, _ := x509.MarshalPKCS8PrivateKey(ecKey)
				ecID := newID(t, c)
				t.Cleanup(func() { _ = c.DestroyObjects(ctx, ecID, anyLabel) })
				got, err := doImport(der, ImportSpec{Kind: ImportEC, Curve: "P-256", ID: ecID, Label: "hsmkms-test/ec", Use: Usage{Sign: true}})
				if err != nil {
					t.Fatalf("EC import: %v", err)
				}
				if !ecKey.PublicKey.Equal(got.Public) {
					t.Fatal("the recovered EC public key is not the imported key's")
				}
				digest := sha256.Sum256([]byte("sign me"))
				sig, err := c.SignECDSA(ctx, ecID, &ecKey.PublicKey, digest[:])
				if err != nil {
					t.Fatal(err)
				}
				half := len(sig) / 2
				if !ecdsa.Verify(&ecKey.PublicKey, digest[:], new(big.Int).SetBytes(sig[:half]), new(big.Int).SetBytes(sig[half:])) {
					t.Fatal("the imported EC key's signature does not verify with the Go key")
				}
			})
		}

		rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
		id := newID(t, c)
		t.Cleanup(func() { _ = c.DestroyObjects(ctx, id, anyLabel) })
		got, err := c.ImportWrapped(ctx, wk, byok(t, wkPub, crypto.SHA256, der), crypto.SHA256, ImportSpec{Kind: ImportRSA, Bits: 2048, ID: id, Label: "hsmkms-test/rsa", Use: Usage{Sign: true}})
		if err != nil {
			t.Fatalf("RSA import: %v", err)
		}
		if !rsaKey.PublicKey.Equal(got.Public) {
			t.Fatal("the RSA public key read back is not the imported key's")
		}
		digest := sha256.Sum256([]byte("sign me"))
		sig, err := c.SignRSAPKCS1v15(ctx, id, &rsaKey.PublicKey, crypto.SHA256, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(&rsaKey.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatalf("the imported RSA key's signature: %v", err)
		}
		t.Logf("%s: key wrap %v", tok.Kind, c.Quirks())
	})
}

// What does not open under the wrapping key, or is not the key the type
// says, is the caller's input and leaves nothing on the token.
func TestImportRefusesWhatIsNotTheKey(t *testing.T) {
	eachToken(t, func(t *testing.T, tok, _ *tokentest.Token) {
		ctx := context.Background()
		c := openClient(t, tok, 2)
		wkID := newID(t, c)
		wkPub, err := c.GenerateWrappingKey(ctx, wkID, "hsmkms-test/wrapping")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.DestroyObjects(ctx, wkID, anyLabel) })
		wk := WrappingKey{ID: wkID, Public: wkPub}
		other, _ := rsa.GenerateKey(rand.Reader, 4096)
		key := make([]byte, 32)
		spec := func() ImportSpec {
			return ImportSpec{Kind: ImportAES, Bits: 256, ID: newID(t, c), Label: "hsmkms-test/bad", Use: Usage{Encrypt: true}}
		}
		good := byok(t, wkPub, crypto.SHA256, key)
		tampered := append([]byte(nil), good...)
		tampered[len(tampered)-1] ^= 1
		cases := map[string]struct {
			ct   []byte
			hash crypto.Hash
			spec ImportSpec
			want error
		}{
			"another wrapping key": {byok(t, &other.PublicKey, crypto.SHA256, key), crypto.SHA256, spec(), ErrNotUnwrapped},
			"another hash":         {good, crypto.SHA512, spec(), ErrNotUnwrapped},
			"tampered key wrap":    {tampered, crypto.SHA256, spec(), ErrNotUnwrapped},
			"truncated":            {good[:len(good)-3], crypto.SHA256, spec(), ErrInvalidInput},
			"only the RSA part":    {good[:512], crypto.SHA256, spec(), ErrInvalidInput},
			"key of another size":  {byok(t, wkPub, crypto.SHA256, key[:16]), crypto.SHA256, spec(), ErrInvalidInput},
		}
		for name, tc := range cases {
			_, err := c.ImportWrapped(ctx, wk, tc.ct, tc.hash, tc.spec)
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: %v, want %v", name, err, tc.want)
			}
			if exists, _ := c.ObjectExists(ctx, tc.spec.ID); exists {
				t.Errorf("%s: an object was left on the token", name)
			}
		}
	})
}
