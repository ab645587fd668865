package hsmkms

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/tink-crypto/tink-go/v2/kwp/subtle"
)

func jwkOf(t *testing.T, key interface{}) string {
	t.Helper()
	b, err := jose.JSONWebKey{Key: key}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// transitCiphertext encrypts as Transit does: nonce || ciphertext || tag,
// AAD = associated data.
func transitCiphertext(t *testing.T, key, plaintext, ad []byte) string {
	t.Helper()
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(block)
	nonce := make([]byte, 12)
	_, _ = rand.Read(nonce)
	return "vault:v1:" + base64.StdEncoding.EncodeToString(append(nonce, gcm.Seal(nil, nonce, plaintext, ad)...))
}

func TestImportedAESKeyOpensTransitCiphertexts(t *testing.T) {
	m := configuredMount(t, nil)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	resp := m.mustOK(logical.UpdateOperation, "keys/moved/import", map[string]interface{}{"jwk": jwkOf(t, key)})
	objects := resp.Data["hsm_objects"].(map[string]map[string]interface{})
	if resp.Data["imported_key"] != true || objects["1"]["origin"] != keyring.OriginImported || objects["1"]["transit_layout"] != true {
		t.Fatalf("import response: %v", resp.Data)
	}
	ad := []byte("tenant-7")
	for _, tc := range []struct {
		ad []byte
	}{{nil}, {ad}} {
		ct := transitCiphertext(t, key, []byte("from transit"), tc.ad)
		data := map[string]interface{}{"ciphertext": ct}
		if tc.ad != nil {
			data["associated_data"] = base64.StdEncoding.EncodeToString(tc.ad)
		}
		resp := m.mustOK(logical.UpdateOperation, "decrypt/moved", data)
		if got, _ := base64.StdEncoding.DecodeString(resp.Data["plaintext"].(string)); string(got) != "from transit" {
			t.Fatalf("decrypted %q", got)
		}
		rewrapped := m.mustOK(logical.UpdateOperation, "rewrap/moved", data).Data["ciphertext"].(string)
		if rewrapped == ct {
			t.Fatal("rewrap returned the Transit ciphertext")
		}
		// The rewrapped ciphertext is in the plugin's layout: Transit's AAD
		// no longer opens it.
		raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(rewrapped, "vault:v1:"))
		block, _ := aes.NewCipher(key)
		gcm, _ := cipher.NewGCM(block)
		if _, err := gcm.Open(nil, raw[:12], raw[12:], tc.ad); err == nil {
			t.Fatal("the rewrapped ciphertext is still in Transit's layout")
		}
		data["ciphertext"] = rewrapped
		m.mustOK(logical.UpdateOperation, "decrypt/moved", data)
	}
	wrongAD := map[string]interface{}{"ciphertext": transitCiphertext(t, key, []byte("x"), ad), "associated_data": base64.StdEncoding.EncodeToString([]byte("other"))}
	m.mustFail(logical.UpdateOperation, "decrypt/moved", wrongAD, "could not be decrypted")
	// A generated key never opens Transit's layout.
	m.mustOK(logical.UpdateOperation, "keys/native", nil)
	m.mustFail(logical.UpdateOperation, "decrypt/native", map[string]interface{}{"ciphertext": transitCiphertext(t, key, []byte("x"), nil)}, "could not be decrypted")
	m.mustFail(logical.UpdateOperation, "keys/moved/rotate", nil, "allow_rotation")
}

func TestImportByTransitBYOK(t *testing.T) {
	m := configuredMount(t, nil)
	block, _ := pem.Decode([]byte(m.mustOK(logical.ReadOperation, "wrapping_key", nil).Data["public_key"].(string)))
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	wrapping := pub.(*rsa.PublicKey)
	if wrapping.N.BitLen() != 4096 {
		t.Fatalf("wrapping key of %d bits", wrapping.N.BitLen())
	}
	byok := func(material []byte) string {
		eph := make([]byte, 32)
		_, _ = rand.Read(eph)
		kw, _ := subtle.NewKWP(eph)
		wrapped, _ := kw.Wrap(material)
		enc, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, wrapping, eph, nil)
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(append(enc, wrapped...))
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	resp := m.mustOK(logical.UpdateOperation, "keys/ec/import", map[string]interface{}{"ciphertext": byok(der), "type": "ecdsa-p384"})
	if resp.Data["type"] != "ecdsa-p384" {
		t.Fatalf("type %v", resp.Data["type"])
	}
	digest := sha256.Sum256([]byte("hello"))
	sig := m.mustOK(logical.UpdateOperation, "sign/ec", map[string]interface{}{
		"input": base64.StdEncoding.EncodeToString(digest[:]), "prehashed": true,
	}).Data["signature"].(string)
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(sig, "vault:v1:"))
	if !ecdsa.VerifyASN1(&ecKey.PublicKey, digest[:], raw) {
		t.Fatal("the signature of the imported EC key does not verify with the Go key")
	}
	// Another version must be the same type.
	key := make([]byte, 32)
	m.mustFail(logical.UpdateOperation, "keys/ec/import_version", map[string]interface{}{"ciphertext": byok(key), "type": "aes256-gcm96"}, "type")
	m.mustFail(logical.UpdateOperation, "keys/ec/import", map[string]interface{}{"ciphertext": byok(der), "type": "ecdsa-p384"}, "already exists")
	m.mustFail(logical.UpdateOperation, "keys/x/import", map[string]interface{}{"ciphertext": byok(key), "hash_function": "SHA512"}, "ciphertext")
	m.mustFail(logical.UpdateOperation, "keys/x/import", map[string]interface{}{"ciphertext": byok(key), "hash_function": "MD5"}, "hash_function")
	m.mustFail(logical.UpdateOperation, "keys/x/import", map[string]interface{}{"ciphertext": byok(key), "exportable": true}, "exportable")
}

func TestImportRefusesBadJWKs(t *testing.T) {
	m := configuredMount(t, nil)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	var rsaJWK map[string]interface{}
	_ = json.Unmarshal([]byte(jwkOf(t, rsaKey)), &rsaJWK)
	badQi := map[string]interface{}{}
	for k, v := range rsaJWK {
		badQi[k] = v
	}
	badQi["qi"] = base64.RawURLEncoding.EncodeToString(new(big.Int).Add(rsaKey.Precomputed.Qinv, big.NewInt(2)).Bytes())
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var ecJWK map[string]interface{}
	_ = json.Unmarshal([]byte(jwkOf(t, ecKey)), &ecJWK)
	offCurve := map[string]interface{}{}
	for k, v := range ecJWK {
		offCurve[k] = v
	}
	y, _ := base64.RawURLEncoding.DecodeString(ecJWK["y"].(string))
	y[len(y)-1] ^= 1
	offCurve["y"] = base64.RawURLEncoding.EncodeToString(y)
	cases := map[string]struct {
		data map[string]interface{}
		want string
	}{
		"wrong qi":        {map[string]interface{}{"jwk": badQi}, "qi"},
		"off-curve point": {map[string]interface{}{"jwk": offCurve}, "jwk"},
		"missing d":       {map[string]interface{}{"jwk": jwkOf(t, &rsaKey.PublicKey)}, "d is missing"},
		"unknown kty":     {map[string]interface{}{"jwk": `{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`}, "kty"},
		"64-byte AES":     {map[string]interface{}{"jwk": jwkOf(t, make([]byte, 64))}, "jwk"},
		"two sources":     {map[string]interface{}{"jwk": jwkOf(t, make([]byte, 32)), "ciphertext": "AAAA"}, "exactly one"},
		"not JSON":        {map[string]interface{}{"jwk": "{"}, "jwk"},
	}
	for name, tc := range cases {
		t.Log(name)
		m.mustFail(logical.UpdateOperation, "keys/bad/import", tc.data, tc.want)
	}
	// A public key alone is fine for verification.
	resp := m.mustOK(logical.UpdateOperation, "keys/pub/import", map[string]interface{}{"jwk": jwkOf(t, &ecKey.PublicKey), "operations": "verify"})
	if objects := resp.Data["hsm_objects"].(map[string]map[string]interface{}); objects["1"]["public_only"] != true {
		t.Fatalf("public-only import: %v", objects)
	}
	m.mustFail(logical.UpdateOperation, "sign/pub", map[string]interface{}{"input": "aGk="}, "sign")
	m.mustOK(logical.UpdateOperation, "keys/pub/deactivate", nil)
	m.mustOK(logical.DeleteOperation, "keys/pub", nil)
	// The seeds' form.
	m.mustOK(logical.UpdateOperation, "keys/seeds", map[string]interface{}{"keys": []interface{}{jwkOf(t, rsaKey)}})
}

// HMAC keys of any accepted length give Go's HMAC, by JWK (padded by the
// plugin) and by BYOK (as the token holds them).
func TestImportedHMACKeysMatchGo(t *testing.T) {
	for _, tok := range []string{"softhsm2", "nss"} {
		t.Run(tok, func(t *testing.T) {
			m := configuredMount(t, nil)
			if tok == "nss" {
				m = nssMount(t)
			}
			block, _ := pem.Decode([]byte(m.mustOK(logical.ReadOperation, "wrapping_key", nil).Data["public_key"].(string)))
			pub, _ := x509.ParsePKIXPublicKey(block.Bytes)
			for _, size := range []int{16, 32, 65} {
				key := make([]byte, size)
				_, _ = rand.Read(key)
				eph := make([]byte, 32)
				_, _ = rand.Read(eph)
				kw, _ := subtle.NewKWP(eph)
				wrapped, _ := kw.Wrap(key)
				enc, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), eph, nil)
				sources := map[string]map[string]interface{}{
					"jwk":  {"jwk": jwkOf(t, key), "type": "hmac"},
					"byok": {"ciphertext": base64.StdEncoding.EncodeToString(append(enc, wrapped...)), "type": "hmac"},
				}
				for how, data := range sources {
					name := fmt.Sprintf("h%d-%s", size, how)
					if tok == "softhsm2" && how == "byok" && size < 32 {
						// SoftHSM refuses HMAC keys shorter than the hash;
						// the plugin cannot pad a key it never sees.
						m.mustFail(logical.UpdateOperation, "keys/"+name+"/import", data, "JWK")
						continue
					}
					m.mustOK(logical.UpdateOperation, "keys/"+name+"/import", data)
					got := m.mustOK(logical.UpdateOperation, "hmac/"+name, map[string]interface{}{"input": base64.StdEncoding.EncodeToString([]byte("message"))}).Data["hmac"].(string)
					mac := hmac.New(sha256.New, key)
					mac.Write([]byte("message"))
					if want := "vault:v1:" + base64.StdEncoding.EncodeToString(mac.Sum(nil)); got != want {
						t.Errorf("%s: hmac %s, want %s", name, got, want)
					}
				}
			}
		})
	}
}
