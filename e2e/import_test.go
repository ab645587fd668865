package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash"
	"math/big"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/miekg/pkcs11"
	"github.com/tink-crypto/tink-go/v2/kwp/subtle"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// Imports through Vault: keys made by the test (in Go, or by Vault's own
// Transit engine) go into kms/ by JWK, by Transit's BYOK wire format and by
// the real `vault transit import` CLI, and then must give exactly the
// answers the test computes with the same material outside the HSM.

// impHashes are BYOK's hash_function names and the OAEP hash each stands for.
var impHashes = map[string]func() hash.Hash{
	"SHA1":   sha1.New,
	"SHA256": sha256.New,
	"SHA384": sha512.New384,
	"SHA512": sha512.New,
}

// impKeys holds the test's RSA keys, shared by both tokens' subtests and by
// the tests of this file: key generation is the slow part, and the keys go
// into different Vaults.
var impKeys struct {
	sync.Mutex
	rsa map[string]*rsa.PrivateKey
}

// impRSAKey is the test's RSA key number n of the given size.
func impRSAKey(t *testing.T, bits, n int) *rsa.PrivateKey {
	t.Helper()
	impKeys.Lock()
	defer impKeys.Unlock()
	if impKeys.rsa == nil {
		impKeys.rsa = map[string]*rsa.PrivateKey{}
	}
	name := fmt.Sprintf("%d/%d", bits, n)
	if k, ok := impKeys.rsa[name]; ok {
		return k
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	impKeys.rsa[name] = k
	return k
}

// Two published 4096-bit primes: RFC 7919's ffdhe4096 and RFC 3526's
// 4096-bit MODP group. Their product is a valid, consistent RSA-8192 key
// (of no secrecy at all) made in microseconds, where generating one takes
// Go a minute: the plugin must refuse it for its size, not for a flaw.
const (
	impFFDHE4096 = "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F619172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035BBC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91CAEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E655F6AFFFFFFFFFFFFFFFF"
	impMODP4096  = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D788719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA993B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"
)

func impRSA8192(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	p, _ := new(big.Int).SetString(impFFDHE4096, 16)
	q, _ := new(big.Int).SetString(impMODP4096, 16)
	one := big.NewInt(1)
	phi := new(big.Int).Mul(new(big.Int).Sub(p, one), new(big.Int).Sub(q, one))
	k := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: new(big.Int).Mul(p, q), E: 65537},
		D:         new(big.Int).ModInverse(big.NewInt(65537), phi),
		Primes:    []*big.Int{p, q},
	}
	k.Precompute()
	if err := k.Validate(); err != nil || k.N.BitLen() != 8192 {
		t.Fatalf("the RSA-8192 key of published primes: %d bits, %v", k.N.BitLen(), err)
	}
	return k
}

func impRandom(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func impB64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func impECKey(t *testing.T, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// impMaterial is what BYOK and the CLI carry: raw bytes for AES and HMAC,
// PKCS#8 DER for RSA and EC.
func impMaterial(t *testing.T, key interface{}) []byte {
	t.Helper()
	if raw, ok := key.([]byte); ok {
		return raw
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// impWrappingKey reads kms/wrapping_key as the vault CLI does.
func impWrappingKey(t *testing.T, v *vaultServer) *rsa.PublicKey {
	t.Helper()
	status, resp := v.raw("GET", "kms/wrapping_key", v.token, nil)
	data, _ := resp["data"].(map[string]interface{})
	pemText, _ := data["public_key"].(string)
	block, _ := pem.Decode([]byte(pemText))
	if status != 200 || block == nil {
		t.Fatalf("GET kms/wrapping_key: %d %v", status, resp)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatalf("wrapping_key: %v", err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok || rsaPub.N.BitLen() != 4096 {
		t.Fatalf("wrapping_key is a %T, want an RSA-4096 public key", pub)
	}
	return rsaPub
}

// impWrap is Transit's BYOK ciphertext (before base64) of material for the
// wrapping key pub: RSA-OAEP(ephemeral AES-256 key) ‖ AES-KWP(material),
// made as the vault CLI makes it.
func impWrap(t *testing.T, pub *rsa.PublicKey, material []byte, hashName string) []byte {
	t.Helper()
	ephemeral := impRandom(t, 32)
	kwp, err := subtle.NewKWP(ephemeral)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := kwp.Wrap(material)
	if err != nil {
		t.Fatal(err)
	}
	newHash, ok := impHashes[hashName]
	if !ok {
		t.Fatalf("no hash %q", hashName)
	}
	head, err := rsa.EncryptOAEP(newHash(), rand.Reader, pub, ephemeral, nil)
	if err != nil {
		t.Fatal(err)
	}
	return append(head, wrapped...)
}

// impJWK is key as a JWK made by go-jose, decoded so that a case can change
// its members.
func impJWK(t *testing.T, key interface{}, alg string) map[string]interface{} {
	t.Helper()
	b, err := jose.JSONWebKey{Key: key, Algorithm: alg}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]interface{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func impJSON(t *testing.T, m map[string]interface{}) string {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// impPost POSTs body and fails t unless Vault answers 200; it returns the
// response's data.
func impPost(t *testing.T, v *vaultServer, path string, body map[string]interface{}) map[string]interface{} {
	t.Helper()
	status, resp := v.raw("POST", path, v.token, body)
	if status != 200 {
		t.Fatalf("POST %s: %d %v", path, status, resp)
	}
	data, _ := resp["data"].(map[string]interface{})
	return data
}

func impRead(t *testing.T, v *vaultServer, name string) map[string]interface{} {
	t.Helper()
	status, resp := v.raw("GET", "kms/keys/"+name, v.token, nil)
	data, _ := resp["data"].(map[string]interface{})
	if status != 200 || data == nil {
		t.Fatalf("GET kms/keys/%s: %d %v", name, status, resp)
	}
	return data
}

// impObject is hsm_objects[version] of a key read.
func impObject(t *testing.T, data map[string]interface{}, version int) map[string]interface{} {
	t.Helper()
	objects, _ := data["hsm_objects"].(map[string]interface{})
	o, ok := objects[strconv.Itoa(version)].(map[string]interface{})
	if !ok {
		t.Fatalf("%v: no hsm_objects[%d] in %v", data["name"], version, data["hsm_objects"])
	}
	return o
}

// impCheckImported checks what a key read says of imported versions.
func impCheckImported(t *testing.T, data map[string]interface{}, versions ...int) {
	t.Helper()
	if data["imported_key"] != true {
		t.Errorf("%v: imported_key is %v, want true", data["name"], data["imported_key"])
	}
	for _, ver := range versions {
		o := impObject(t, data, ver)
		if o["origin"] != "imported" || o["extractable"] == true {
			t.Errorf("%v: hsm_objects[%d] = %v, want origin imported and not extractable", data["name"], ver, o)
		}
	}
}

func impLatest(data map[string]interface{}) string { return fmt.Sprint(data["latest_version"]) }

// impPublicKey is the public key of a version, from the PEM in the key read.
func impPublicKey(t *testing.T, data map[string]interface{}, version int) crypto.PublicKey {
	t.Helper()
	keys, _ := data["keys"].(map[string]interface{})
	entry, _ := keys[strconv.Itoa(version)].(map[string]interface{})
	pemText, _ := entry["public_key"].(string)
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		t.Fatalf("%v: keys[%d].public_key is not PEM: %v", data["name"], version, keys[strconv.Itoa(version)])
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// impTransitSeal encrypts as Transit does: "vault:vN:" + base64(nonce ‖
// ciphertext ‖ tag), AES-GCM with associated_data as the AAD.
func impTransitSeal(t *testing.T, key []byte, version int, plaintext, ad []byte) string {
	t.Helper()
	gcm := newGCM(t, key)
	nonce := impRandom(t, gcm.NonceSize())
	return fmt.Sprintf("vault:v%d:", version) + impB64(gcm.Seal(nonce, nonce, plaintext, ad))
}

// impTransitOpen opens a ciphertext as Transit would, and fails unless it is
// in Transit's layout under key with ad.
func impTransitOpen(t *testing.T, key []byte, ct string, ad []byte) ([]byte, error) {
	t.Helper()
	parts := strings.SplitN(ct, ":", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a vault ciphertext")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, err
	}
	gcm := newGCM(t, key)
	if len(raw) < gcm.NonceSize()+gcm.Overhead() {
		return nil, fmt.Errorf("%d bytes", len(raw))
	}
	return gcm.Open(nil, raw[:gcm.NonceSize()], raw[gcm.NonceSize():], ad)
}

// impDecrypt decrypts through kms/decrypt with ad as associated_data (none
// when nil).
func impDecrypt(t *testing.T, v *vaultServer, name, ct string, ad []byte) []byte {
	t.Helper()
	body := map[string]interface{}{"ciphertext": ct}
	if ad != nil {
		body["associated_data"] = impB64(ad)
	}
	data := impPost(t, v, "kms/decrypt/"+name, body)
	pt, err := base64.StdEncoding.DecodeString(fmt.Sprint(data["plaintext"]))
	if err != nil {
		t.Fatalf("decrypt %s: plaintext %v: %v", name, data["plaintext"], err)
	}
	return pt
}

// impSignature signs msg through kms/sign and returns the raw signature.
func impSignature(t *testing.T, v *vaultServer, name string, version int, msg []byte, extra map[string]interface{}) []byte {
	t.Helper()
	body := map[string]interface{}{"input": impB64(msg), "key_version": version}
	for k, val := range extra {
		body[k] = val
	}
	data := impPost(t, v, "kms/sign/"+name, body)
	sig := fmt.Sprint(data["signature"])
	prefix := fmt.Sprintf("vault:v%d:", version)
	if !strings.HasPrefix(sig, prefix) {
		t.Fatalf("sign %s: signature %q, want the prefix %s", name, sig, prefix)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sig, prefix))
	if err != nil {
		t.Fatalf("sign %s: %q: %v", name, sig, err)
	}
	return raw
}

// impKMSVerifies asks kms/verify about a signature the test made.
func impKMSVerifies(t *testing.T, v *vaultServer, name string, msg, sig []byte, extra map[string]interface{}) bool {
	t.Helper()
	body := map[string]interface{}{"input": impB64(msg), "signature": "vault:v1:" + impB64(sig)}
	for k, val := range extra {
		body[k] = val
	}
	data := impPost(t, v, "kms/verify/"+name, body)
	return data["valid"] == true
}

// impCheckAES: Transit-layout ciphertexts made by the test with key decrypt
// through kms/decrypt, and kms/ round-trips.
func impCheckAES(t *testing.T, v *vaultServer, name string, version int, key []byte) {
	t.Helper()
	for _, ad := range [][]byte{nil, []byte("invoice 2291, tenant 7")} {
		pt := []byte(fmt.Sprintf("known answer for %s v%d, associated_data %q", name, version, ad))
		ct := impTransitSeal(t, key, version, pt, ad)
		if got := impDecrypt(t, v, name, ct, ad); !bytes.Equal(got, pt) {
			t.Errorf("%s: a Transit-layout ciphertext (associated_data %q) decrypted to %q, want %q", name, ad, got, pt)
		}
	}
	pt := []byte("round trip through " + name)
	data := impPost(t, v, "kms/encrypt/"+name, map[string]interface{}{"plaintext": impB64(pt)})
	ct := fmt.Sprint(data["ciphertext"])
	if got := impDecrypt(t, v, name, ct, nil); !bytes.Equal(got, pt) {
		t.Errorf("%s: encrypt then decrypt gave %q", name, got)
	}
}

// impCheckRSA: kms/sign's PSS and PKCS#1 v1.5 signatures verify with the
// test's key, a signature of the test's verifies through kms/verify, and the
// public key read back is the test's.
func impCheckRSA(t *testing.T, v *vaultServer, name string, version int, key *rsa.PrivateKey) {
	t.Helper()
	msg := []byte("signed by " + name)
	digest := sha256.Sum256(msg)
	for _, scheme := range []string{"pss", "pkcs1v15"} {
		sig := impSignature(t, v, name, version, msg, map[string]interface{}{"signature_algorithm": scheme})
		var err error
		if scheme == "pss" {
			err = rsa.VerifyPSS(&key.PublicKey, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		} else {
			err = rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, digest[:], sig)
		}
		if err != nil {
			t.Errorf("%s v%d: a %s signature does not verify with the test's key: %v", name, version, scheme, err)
		}
	}
	if version == 1 {
		mine, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if !impKMSVerifies(t, v, name, msg, mine, map[string]interface{}{"signature_algorithm": "pkcs1v15"}) {
			t.Errorf("%s: kms/verify rejects the test's own PKCS#1 v1.5 signature", name)
		}
	}
	if pub := impPublicKey(t, impRead(t, v, name), version); !key.PublicKey.Equal(pub) {
		t.Errorf("%s v%d: the public key read back is not the test's", name, version)
	}
}

func impCheckEC(t *testing.T, v *vaultServer, name string, version int, key *ecdsa.PrivateKey) {
	t.Helper()
	msg := []byte("signed by " + name)
	digest := sha256.Sum256(msg)
	sig := impSignature(t, v, name, version, msg, nil)
	if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
		t.Errorf("%s v%d: the signature does not verify with the test's key", name, version)
	}
	if version == 1 {
		mine, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if !impKMSVerifies(t, v, name, msg, mine, nil) {
			t.Errorf("%s: kms/verify rejects the test's own signature", name)
		}
	}
	if pub := impPublicKey(t, impRead(t, v, name), version); !key.PublicKey.Equal(pub) {
		t.Errorf("%s v%d: the public key read back is not the test's", name, version)
	}
}

// impCheckHMAC: kms/hmac equals Go's HMAC with key, one subtest per hash.
// softHSMRefusal allows SHA-512 to be refused as SoftHSM does with a key
// shorter than 64 bytes that was not padded: that subtest is skipped,
// saying so.
func impCheckHMAC(t *testing.T, v *vaultServer, name string, key []byte, softHSMRefusal bool) {
	t.Helper()
	msg := []byte("authenticated by " + name)
	for _, tc := range []struct {
		name         string
		path         string
		hash         func() hash.Hash
		mayBeRefused bool
	}{
		{"HMAC-SHA-256", "kms/hmac/" + name, sha256.New, false},
		{"HMAC-SHA-512", "kms/hmac/" + name + "/sha2-512", sha512.New, softHSMRefusal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := v.forTest(t)
			mac := hmac.New(tc.hash, key)
			mac.Write(msg)
			want := "vault:v1:" + impB64(mac.Sum(nil))
			status, resp := v.raw("POST", tc.path, v.token, map[string]interface{}{"input": impB64(msg)})
			if errs := fmt.Sprint(resp["errors"]); tc.mayBeRefused && status == 400 && strings.Contains(errs, "refuses HMAC with SHA-512") {
				t.Skipf("the token refuses it: %s: %s", tc.path, errs)
			}
			data, _ := resp["data"].(map[string]interface{})
			if status != 200 || data["hmac"] != want {
				t.Errorf("%s: %d %v, want Go's %s", tc.path, status, resp, want)
			}
		})
	}
}

// impTokenObject is a key's object on the token and the attribute that holds
// its secret.
type impTokenObject struct {
	key        string
	id         []byte
	class      uint
	secretAttr uint
}

func impTokenObjectOf(t *testing.T, data map[string]interface{}, version int, key interface{}) impTokenObject {
	t.Helper()
	id, err := hex.DecodeString(fmt.Sprint(impObject(t, data, version)["id"]))
	if err != nil || len(id) == 0 {
		t.Fatalf("%v: hsm_objects[%d].id: %v", data["name"], version, err)
	}
	o := impTokenObject{key: fmt.Sprintf("%v v%d", data["name"], version), id: id, class: pkcs11.CKO_SECRET_KEY, secretAttr: pkcs11.CKA_VALUE}
	switch key.(type) {
	case *rsa.PrivateKey:
		o.class, o.secretAttr = pkcs11.CKO_PRIVATE_KEY, pkcs11.CKA_PRIVATE_EXPONENT
	case *ecdsa.PrivateKey:
		o.class = pkcs11.CKO_PRIVATE_KEY
	}
	return o
}

// impCheckOnToken opens the token apart from Vault and checks that each
// imported key is a sensitive, non-extractable token object whose secret
// cannot be read.
func impCheckOnToken(t *testing.T, tok *tokentest.Token, objects []impTokenObject) {
	t.Helper()
	p11, sh := openTokenSession(t, tok)
	isTrue := func(a *pkcs11.Attribute) bool { return len(a.Value) == 1 && a.Value[0] == 1 }
	for _, o := range objects {
		h := findObject(t, p11, sh, o.id, o.class)
		attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		})
		if err != nil {
			t.Fatalf("%s: %v", o.key, err)
		}
		if !isTrue(attrs[0]) || isTrue(attrs[1]) || !isTrue(attrs[2]) {
			t.Errorf("%s: CKA_SENSITIVE=%v CKA_EXTRACTABLE=%v CKA_TOKEN=%v, want true false true", o.key, attrs[0].Value, attrs[1].Value, attrs[2].Value)
		}
		_, err = p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(o.secretAttr, nil)})
		if code, ok := err.(pkcs11.Error); !ok || code != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("%s: reading its secret attribute gave %v, want CKR_ATTRIBUTE_SENSITIVE", o.key, err)
		}
	}
}

// ---------------------------------------------------------------------------

func TestMigrationFromTransit(t *testing.T) {
	eachToken(t, testMigrationFromTransit)
}

type impTransitValue struct {
	plaintext, ad []byte // ad nil: encrypted without associated_data
	ciphertext    string
	version       int
}

// A key of Vault's own Transit engine, exported and brought into kms/ with
// the real CLI, opens every ciphertext Transit made under it; rewrap moves
// them to the plugin's layout.
func testMigrationFromTransit(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("secrets", "enable", "transit")
	v.cli("write", "transit/keys/src", "type=aes256-gcm96", "exportable=true")

	values := make([]impTransitValue, 100)
	for i := range values {
		values[i].plaintext = []byte(fmt.Sprintf("customer %03d: balance %d.%02d EUR", i, i*7919%10007, i%100))
		if i%3 == 0 {
			values[i].ad = []byte(fmt.Sprintf("tenant-%d/row-%d", i%7, i))
		}
	}
	item := func(i int) map[string]interface{} {
		m := map[string]interface{}{"plaintext": impB64(values[i].plaintext)}
		if values[i].ad != nil {
			m["associated_data"] = impB64(values[i].ad)
		}
		return m
	}
	encrypt := func(from, to, version int, batch bool) {
		if !batch {
			for i := from; i < to; i++ {
				secret, err := v.client.Logical().Write("transit/encrypt/src", item(i))
				if err != nil {
					t.Fatalf("transit encrypt %d: %v", i, err)
				}
				values[i].ciphertext, values[i].version = secret.Data["ciphertext"].(string), version
			}
			return
		}
		var items []map[string]interface{}
		for i := from; i < to; i++ {
			items = append(items, item(i))
		}
		secret, err := v.client.Logical().Write("transit/encrypt/src", map[string]interface{}{"batch_input": items})
		if err != nil {
			t.Fatalf("transit batch encrypt: %v", err)
		}
		results := secret.Data["batch_results"].([]interface{})
		if len(results) != to-from {
			t.Fatalf("transit batch: %d results for %d items", len(results), to-from)
		}
		for j, r := range results {
			values[from+j].ciphertext, values[from+j].version = r.(map[string]interface{})["ciphertext"].(string), version
		}
	}
	encrypt(0, 30, 1, false)
	encrypt(30, 50, 1, true)
	v.cli("write", "-f", "transit/keys/src/rotate")
	encrypt(50, 80, 2, true)
	encrypt(80, 100, 2, false)

	secret, err := v.client.Logical().Read("transit/export/encryption-key/src")
	if err != nil {
		t.Fatal(err)
	}
	exported := secret.Data["keys"].(map[string]interface{})
	raw := map[int][]byte{}
	dir := t.TempDir()
	files := map[int]string{}
	for _, ver := range []int{1, 2} {
		text, _ := exported[strconv.Itoa(ver)].(string)
		if raw[ver], err = base64.StdEncoding.DecodeString(text); err != nil || len(raw[ver]) != 32 {
			t.Fatalf("transit export of v%d: %q %v", ver, text, err)
		}
		files[ver] = filepath.Join(dir, fmt.Sprintf("src-v%d.b64", ver))
		writeFile(t, files[ver], text)
	}
	// The test's own reading of Transit's layout must open Transit's
	// ciphertexts, or the layout checks below would prove nothing.
	for i, val := range values {
		if !strings.HasPrefix(val.ciphertext, fmt.Sprintf("vault:v%d:", val.version)) {
			t.Fatalf("transit ciphertext %d: %q, want version %d", i, val.ciphertext, val.version)
		}
		if pt, err := impTransitOpen(t, raw[val.version], val.ciphertext, val.ad); err != nil || !bytes.Equal(pt, val.plaintext) {
			t.Fatalf("the test cannot open Transit's ciphertext %d itself: %v", i, err)
		}
	}

	v.cli("transit", "import", "kms/keys/moved", "@"+files[1], "type=aes256-gcm96")
	v.cli("transit", "import-version", "kms/keys/moved", "@"+files[2])
	data := impRead(t, v, "moved")
	if impLatest(data) != "2" || data["type"] != "aes256-gcm96" {
		t.Fatalf("kms/keys/moved after import and import-version: %v", data)
	}
	impCheckImported(t, data, 1, 2)
	for _, ver := range []int{1, 2} {
		if o := impObject(t, data, ver); o["transit_layout"] != true {
			t.Errorf("hsm_objects[%d] = %v, want transit_layout true", ver, o)
		}
	}

	t.Run("AllHundredDecrypt", func(t *testing.T) {
		v := v.forTest(t)
		for i, val := range values {
			if got := impDecrypt(t, v, "moved", val.ciphertext, val.ad); !bytes.Equal(got, val.plaintext) {
				t.Errorf("transit ciphertext %d (v%d, associated_data %q): %q, want %q", i, val.version, val.ad, got, val.plaintext)
			}
		}
		var items []map[string]interface{}
		for i, val := range values {
			it := map[string]interface{}{"ciphertext": val.ciphertext, "reference": strconv.Itoa(i)}
			if val.ad != nil {
				it["associated_data"] = impB64(val.ad)
			}
			items = append(items, it)
		}
		results, _ := impPost(t, v, "kms/decrypt/moved", map[string]interface{}{"batch_input": items})["batch_results"].([]interface{})
		if len(results) != len(values) {
			t.Fatalf("batch decrypt: %d results for %d items", len(results), len(values))
		}
		for i, r := range results {
			res, _ := r.(map[string]interface{})
			if res["reference"] != strconv.Itoa(i) || res["plaintext"] != impB64(values[i].plaintext) {
				t.Errorf("batch item %d: %v, want plaintext %q", i, res, values[i].plaintext)
			}
		}
	})

	t.Run("WrongAssociatedDataIs400", func(t *testing.T) {
		v := v.forTest(t)
		for _, tc := range []struct {
			name string
			i    int
			ad   interface{}
		}{
			{"v1, other associated_data", 0, impB64([]byte("tenant-0/row-1"))},
			{"v2, other associated_data", 51, impB64([]byte("tenant-2/row-50"))},
			{"v2, associated_data left out", 54, nil},
			{"v1, associated_data added", 1, impB64([]byte("tenant-1/row-1"))},
		} {
			body := map[string]interface{}{"ciphertext": values[tc.i].ciphertext}
			if tc.ad != nil {
				body["associated_data"] = tc.ad
			}
			status, resp := v.raw("POST", "kms/decrypt/moved", v.token, body)
			if status != 400 {
				t.Errorf("%s: %d %v, want 400", tc.name, status, resp)
			}
			if strings.Contains(fmt.Sprint(resp), impB64(values[tc.i].plaintext)) {
				t.Errorf("%s: the error carries the plaintext", tc.name)
			}
		}
	})

	t.Run("RewrapMovesToThePluginLayout", func(t *testing.T) {
		v := v.forTest(t)
		for i, val := range values {
			body := map[string]interface{}{"ciphertext": val.ciphertext}
			if val.ad != nil {
				body["associated_data"] = impB64(val.ad)
			}
			ct := fmt.Sprint(impPost(t, v, "kms/rewrap/moved", body)["ciphertext"])
			if ct == val.ciphertext || !strings.HasPrefix(ct, "vault:v2:") {
				t.Errorf("rewrap of %d (v%d): %q, want a new vault:v2: ciphertext", i, val.version, ct)
				continue
			}
			if got := impDecrypt(t, v, "moved", ct, val.ad); !bytes.Equal(got, val.plaintext) {
				t.Errorf("rewrapped %d: %q, want %q", i, got, val.plaintext)
			}
			for _, ver := range []int{1, 2} {
				if _, err := impTransitOpen(t, raw[ver], ct, val.ad); err == nil {
					t.Errorf("rewrapped %d opens in Transit's layout under the raw v%d key: it was not moved", i, ver)
				}
			}
			if i == 3 {
				// The plugin's layout still binds associated_data.
				status, resp := v.raw("POST", "kms/decrypt/moved", v.token, map[string]interface{}{"ciphertext": ct, "associated_data": impB64([]byte("other"))})
				if status != 400 {
					t.Errorf("rewrapped %d with other associated_data: %d %v, want 400", i, status, resp)
				}
			}
		}
	})
}

// ---------------------------------------------------------------------------

func TestImportKnownAnswer(t *testing.T) {
	eachToken(t, testImportKnownAnswer)
}

// impCase is one key the test makes and imports.
type impCase struct {
	name  string      // in kms/keys/
	typ   string      // the type it must read back as
	via   string      // "jwk" (a JSON string), "jwk-object", "seeds" (POST keys/:name keys=[jwk]) or "byok"
	hash  string      // byok's hash_function; "" sends none (SHA256)
	alg   string      // the JWK's alg
	key   interface{} // []byte (AES, HMAC), *rsa.PrivateKey or *ecdsa.PrivateKey
	extra map[string]interface{}
}

// impImport imports c's key and returns Vault's answer.
func impImport(t *testing.T, v *vaultServer, wrapping *rsa.PublicKey, c impCase) (int, map[string]interface{}) {
	t.Helper()
	body := map[string]interface{}{}
	for k, val := range c.extra {
		body[k] = val
	}
	path := "kms/keys/" + c.name + "/import"
	switch c.via {
	case "jwk":
		body["jwk"] = impJSON(t, impJWK(t, c.key, c.alg))
	case "jwk-object":
		body["jwk"] = impJWK(t, c.key, c.alg)
	case "seeds":
		path = "kms/keys/" + c.name
		body["keys"] = []interface{}{impJWK(t, c.key, c.alg)}
	case "byok":
		body["type"] = c.typ
		hashName := "SHA256"
		if c.hash != "" {
			body["hash_function"], hashName = c.hash, c.hash
		}
		body["ciphertext"] = impB64(impWrap(t, wrapping, impMaterial(t, c.key), hashName))
	default:
		t.Fatalf("no import via %q", c.via)
	}
	return v.raw("POST", path, v.token, body)
}

// For every type, a key the test made is imported by JWK and by BYOK, and
// kms/ then answers what Go computes with the same key; the objects on the
// token are sensitive and non-extractable.
func testImportKnownAnswer(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms", "max_keys=100")
	wrapping := impWrappingKey(t, v)
	cases := []impCase{
		{name: "aes128-jwk", typ: "aes128-gcm96", via: "jwk", key: impRandom(t, 16)},
		{name: "aes192-jwk", typ: "aes192-gcm96", via: "jwk-object", key: impRandom(t, 24)},
		{name: "aes256-jwk", typ: "aes256-gcm96", via: "jwk", key: impRandom(t, 32)},
		{name: "aes256-seeds", typ: "aes256-gcm96", via: "seeds", key: impRandom(t, 32)},
		{name: "aes128-byok", typ: "aes128-gcm96", via: "byok", hash: "SHA1", key: impRandom(t, 16)},
		{name: "aes192-byok", typ: "aes192-gcm96", via: "byok", hash: "SHA384", key: impRandom(t, 24)},
		{name: "aes256-byok", typ: "aes256-gcm96", via: "byok", key: impRandom(t, 32)},
		{name: "rsa2048-jwk", typ: "rsa-2048", via: "jwk", key: impRSAKey(t, 2048, 0)},
		{name: "rsa3072-jwk", typ: "rsa-3072", via: "jwk-object", key: impRSAKey(t, 3072, 0)},
		{name: "rsa2048-byok", typ: "rsa-2048", via: "byok", hash: "SHA512", key: impRSAKey(t, 2048, 1)},
		{name: "ec256-jwk", typ: "ecdsa-p256", via: "jwk", key: impECKey(t, elliptic.P256())},
		{name: "ec384-jwk", typ: "ecdsa-p384", via: "jwk-object", key: impECKey(t, elliptic.P384())},
		{name: "ec521-jwk", typ: "ecdsa-p521", via: "jwk", key: impECKey(t, elliptic.P521())},
		{name: "ec256-byok", typ: "ecdsa-p256", via: "byok", hash: "SHA256", key: impECKey(t, elliptic.P256())},
		{name: "ec384-byok", typ: "ecdsa-p384", via: "byok", hash: "SHA1", key: impECKey(t, elliptic.P384())},
		{name: "ec521-byok", typ: "ecdsa-p521", via: "byok", hash: "SHA384", key: impECKey(t, elliptic.P521())},
		{name: "hmac32-jwk", typ: "hmac", via: "jwk", key: impRandom(t, 32), extra: map[string]interface{}{"type": "hmac"}},
		{name: "hmac16-jwk", typ: "hmac", via: "jwk", alg: "HS256", key: impRandom(t, 16)},
		{name: "hmac32-byok", typ: "hmac", via: "byok", hash: "SHA512", key: impRandom(t, 32)},
		{name: "hmac16-byok", typ: "hmac", via: "byok", hash: "SHA256", key: impRandom(t, 16)},
	}
	// SoftHSM refuses HMAC with a key shorter than the hash's output, and
	// a key unwrapped in the token cannot be padded as a JWK's is: the
	// plugin refuses such BYOK imports with a 400. Those cases are
	// skipped, saying so, on SoftHSM only, and counted.
	softHSMRefusesShortHMAC := func(c impCase) bool {
		return tok.Kind == tokentest.SoftHSM2 && c.typ == "hmac" && c.via == "byok"
	}
	var objects []impTokenObject
	refused := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := v.forTest(t)
			status, resp := impImport(t, v, wrapping, c)
			errs := fmt.Sprint(resp["errors"])
			if softHSMRefusesShortHMAC(c) && status == 400 && strings.Contains(errs, "ciphertext") && strings.Contains(errs, "refuses HMAC with a key this short") {
				refused++
				t.Skipf("the token refuses it: %s: %s", c.name, errs)
			}
			if status != 200 {
				t.Fatalf("import %s via %s: %d %v", c.name, c.via, status, resp)
			}
			data := impRead(t, v, c.name)
			if data["type"] != c.typ || impLatest(data) != "1" {
				t.Errorf("read: type %v latest_version %v, want %s and 1", data["type"], data["latest_version"], c.typ)
			}
			impCheckImported(t, data, 1)
			if o := impObject(t, data, 1); o["public_only"] == true {
				t.Errorf("hsm_objects[1] = %v: a private key imported public-only", o)
			}
			switch key := c.key.(type) {
			case []byte:
				if c.typ == "hmac" {
					impCheckHMAC(t, v, c.name, key, softHSMRefusesShortHMAC(c))
					break
				}
				if o := impObject(t, data, 1); o["transit_layout"] != true {
					t.Errorf("hsm_objects[1] = %v, want transit_layout true for an imported AES key", o)
				}
				impCheckAES(t, v, c.name, 1, key)
			case *rsa.PrivateKey:
				impCheckRSA(t, v, c.name, 1, key)
			case *ecdsa.PrivateKey:
				impCheckEC(t, v, c.name, 1, key)
			}
			objects = append(objects, impTokenObjectOf(t, data, 1, c.key))
		})
	}
	t.Run("ObjectsAreSensitiveOnTheToken", func(t *testing.T) {
		if len(objects)+refused != len(cases) {
			t.Errorf("only %d of %d imports (%d skipped, refused by the token) made a key whose object can be checked", len(objects), len(cases), refused)
		}
		impCheckOnToken(t, tok, objects)
	})
}

// ---------------------------------------------------------------------------

func TestImportWithTheVaultCLI(t *testing.T) {
	eachToken(t, testImportWithTheVaultCLI)
}

// The real `vault transit import` and `import-version` bring AES-256,
// RSA-2048 and ECDSA-P256 keys in; rotation of imported keys follows
// allow_rotation.
func testImportWithTheVaultCLI(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	dir := t.TempDir()
	file := func(name string, material []byte) string {
		path := filepath.Join(dir, name+".b64")
		writeFile(t, path, impB64(material))
		return "@" + path
	}
	var objects []impTokenObject
	for _, tc := range []struct {
		name, typ string
		keys      [2]interface{}
	}{
		{"cli-aes256", "aes256-gcm96", [2]interface{}{impRandom(t, 32), impRandom(t, 32)}},
		{"cli-rsa2048", "rsa-2048", [2]interface{}{impRSAKey(t, 2048, 2), impRSAKey(t, 2048, 3)}},
		{"cli-ecdsa-p256", "ecdsa-p256", [2]interface{}{impECKey(t, elliptic.P256()), impECKey(t, elliptic.P256())}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := v.forTest(t)
			v.cli("transit", "import", "kms/keys/"+tc.name, file(tc.name+"-v1", impMaterial(t, tc.keys[0])), "type="+tc.typ)
			v.cli("transit", "import-version", "kms/keys/"+tc.name, file(tc.name+"-v2", impMaterial(t, tc.keys[1])))
			data := impRead(t, v, tc.name)
			if data["type"] != tc.typ || impLatest(data) != "2" {
				t.Fatalf("read: type %v latest_version %v, want %s and 2", data["type"], data["latest_version"], tc.typ)
			}
			impCheckImported(t, data, 1, 2)
			for i, key := range tc.keys {
				switch key := key.(type) {
				case []byte:
					impCheckAES(t, v, tc.name, i+1, key)
				case *rsa.PrivateKey:
					impCheckRSA(t, v, tc.name, i+1, key)
				case *ecdsa.PrivateKey:
					impCheckEC(t, v, tc.name, i+1, key)
				}
				objects = append(objects, impTokenObjectOf(t, data, i+1, key))
			}
			if tc.typ == "aes256-gcm96" {
				ct := fmt.Sprint(impPost(t, v, "kms/encrypt/"+tc.name, map[string]interface{}{"plaintext": b64("latest")})["ciphertext"])
				if !strings.HasPrefix(ct, "vault:v2:") {
					t.Errorf("encrypt after import-version: %q, want version 2", ct)
				}
			}
		})
	}

	t.Run("RotationFollowsAllowRotation", func(t *testing.T) {
		v := v.forTest(t)
		fixed := impRandom(t, 32)
		impPost(t, v, "kms/keys/rot-refused/import", map[string]interface{}{"jwk": impJSON(t, impJWK(t, fixed, ""))})
		if data := impRead(t, v, "rot-refused"); data["allow_rotation"] != false {
			t.Errorf("rot-refused: allow_rotation %v, want false (Transit's default)", data["allow_rotation"])
		}
		status, resp := v.raw("POST", "kms/keys/rot-refused/rotate", v.token, nil)
		if status != 400 || !strings.Contains(fmt.Sprint(resp["errors"]), "allow_rotation") {
			t.Errorf("rotate of a key imported without allow_rotation: %d %v, want a 400 naming allow_rotation", status, resp)
		}
		if data := impRead(t, v, "rot-refused"); impLatest(data) != "1" {
			t.Errorf("a refused rotation left latest_version %v", data["latest_version"])
		}

		rotating := impRandom(t, 32)
		v.cli("transit", "import", "kms/keys/rot-allowed", file("rot-allowed", rotating), "type=aes256-gcm96", "allow_rotation=true")
		old := impTransitSeal(t, rotating, 1, []byte("from before the rotation"), nil)
		v.cli("write", "-f", "kms/keys/rot-allowed/rotate")
		data := impRead(t, v, "rot-allowed")
		if impLatest(data) != "2" || data["allow_rotation"] != true {
			t.Fatalf("after rotate: latest_version %v allow_rotation %v, want 2 and true", data["latest_version"], data["allow_rotation"])
		}
		impCheckImported(t, data, 1)
		if o := impObject(t, data, 2); o["origin"] != "generated" {
			t.Errorf("hsm_objects[2] = %v, want origin generated", o)
		}
		if string(impDecrypt(t, v, "rot-allowed", old, nil)) != "from before the rotation" {
			t.Error("the imported version no longer decrypts after the rotation")
		}
		ct := fmt.Sprint(impPost(t, v, "kms/encrypt/rot-allowed", map[string]interface{}{"plaintext": b64("after")})["ciphertext"])
		if !strings.HasPrefix(ct, "vault:v2:") || string(impDecrypt(t, v, "rot-allowed", ct, nil)) != "after" {
			t.Errorf("encrypt after the rotation: %q", ct)
		}
		if _, err := impTransitOpen(t, rotating, ct, nil); err == nil {
			t.Error("the rotated version encrypts with the imported key")
		}
		objects = append(objects, impTokenObjectOf(t, data, 1, rotating))
	})

	t.Run("ObjectsAreSensitiveOnTheToken", func(t *testing.T) {
		if len(objects) != 7 {
			t.Errorf("only %d of 7 imported versions made an object that can be checked", len(objects))
		}
		impCheckOnToken(t, tok, objects)
	})
}

// ---------------------------------------------------------------------------

func TestImportBadInput(t *testing.T) {
	eachToken(t, testImportBadInput)
}

// Every malformed import is a 4xx whose message names the field, leaves no
// key behind and changes no existing key.
func testImportBadInput(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms", "max_keys=100")
	wrapping := impWrappingKey(t, v)
	aes := impRandom(t, 32)
	rsaKey := impRSAKey(t, 2048, 4)
	ecKey := impECKey(t, elliptic.P256())
	good := impWrap(t, wrapping, aes, "SHA256")
	rsaJWK, ecJWK, aesJWK := impJWK(t, rsaKey, ""), impJWK(t, ecKey, ""), impJWK(t, aes, "")

	// The unchanged material imports, so each failure below is the change's.
	impPost(t, v, "kms/keys/control-byok/import", map[string]interface{}{"ciphertext": impB64(good), "type": "aes256-gcm96"})
	impCheckAES(t, v, "control-byok", 1, aes)
	impPost(t, v, "kms/keys/control-rsa/import", map[string]interface{}{"jwk": impJSON(t, rsaJWK)})
	impPost(t, v, "kms/keys/control-ec/import", map[string]interface{}{"jwk": impJSON(t, ecJWK)})
	impPost(t, v, "kms/keys/existing/import", map[string]interface{}{"jwk": impJSON(t, aesJWK)})
	v.cli("write", "kms/keys/generated", "type=aes256-gcm96")

	changed := func(m map[string]interface{}, member string, f func([]byte) []byte) map[string]interface{} {
		out := map[string]interface{}{}
		for k, val := range m {
			out[k] = val
		}
		b, err := base64.RawURLEncoding.DecodeString(m[member].(string))
		if err != nil {
			t.Fatalf("JWK member %s: %v", member, err)
		}
		out[member] = base64.RawURLEncoding.EncodeToString(f(b))
		return out
	}
	offCurve := changed(ecJWK, "y", func(y []byte) []byte { y[len(y)-1] ^= 1; return y })
	wrongQi := changed(rsaJWK, "qi", func(qi []byte) []byte { return new(big.Int).Add(new(big.Int).SetBytes(qi), big.NewInt(1)).Bytes() })
	publicRSA := impJWK(t, &rsaKey.PublicKey, "")
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	okp := impJWK(t, edKey, "")
	rsa8192 := impRSA8192(t)
	other4096 := impRSAKey(t, 4096, 0)
	jwkBody := func(jwk map[string]interface{}, extra ...interface{}) map[string]interface{} {
		body := map[string]interface{}{"jwk": impJSON(t, jwk)}
		for i := 0; i+1 < len(extra); i += 2 {
			body[extra[i].(string)] = extra[i+1]
		}
		return body
	}
	byokBody := func(ct []byte, extra ...interface{}) map[string]interface{} {
		body := map[string]interface{}{"ciphertext": impB64(ct), "type": "aes256-gcm96"}
		for i := 0; i+1 < len(extra); i += 2 {
			body[extra[i].(string)] = extra[i+1]
		}
		return body
	}
	cases := []struct {
		name, key, path string // path "" is kms/keys/<key>/import
		body            map[string]interface{}
		want            []string // the message names each; "a|b": either
	}{
		{"KWP part not a multiple of 8", "kwp-odd", "", byokBody(good[:len(good)-3]), []string{"ciphertext"}},
		{"KWP part shortened by 8 bytes", "kwp-short", "", byokBody(good[:len(good)-8]), []string{"ciphertext"}},
		{"KWP part truncated to 8 bytes", "kwp-8", "", byokBody(good[:512+8]), []string{"ciphertext"}},
		{"no KWP part", "kwp-none", "", byokBody(good[:512]), []string{"ciphertext"}},
		{"wrapped for another wrapping key", "other-wrapping", "", byokBody(impWrap(t, &other4096.PublicKey, aes, "SHA256")), []string{"ciphertext"}},
		{"hash_function SHA3", "sha3", "", byokBody(good, "hash_function", "SHA3"), []string{"hash_function"}},
		{"hash_function SHA512, wrapped with SHA256", "sha-mismatch", "", byokBody(good, "hash_function", "SHA512"), []string{"ciphertext|hash_function"}},
		{"ciphertext shorter than 512 bytes", "short", "", byokBody(impRandom(t, 300)), []string{"ciphertext"}},
		{"ciphertext not base64", "not-b64", "", map[string]interface{}{"ciphertext": "%%% not base64", "type": "aes256-gcm96"}, []string{"ciphertext"}},
		{"AES material as rsa-2048", "aes-as-rsa", "", byokBody(good, "type", "rsa-2048"), []string{"ciphertext|type"}},
		{"64-byte material as aes256-gcm96", "aes64-byok", "", byokBody(impWrap(t, wrapping, impRandom(t, 64), "SHA256")), []string{"ciphertext|type"}},
		{"16-byte material as aes256-gcm96", "aes16-byok", "", byokBody(impWrap(t, wrapping, impRandom(t, 16), "SHA256")), []string{"ciphertext|type"}},
		{"RSA JWK without d, for sign", "rsa-no-d", "", jwkBody(publicRSA, "operations", "sign,verify"), []string{"jwk|operations"}},
		{"EC JWK off its curve", "ec-off-curve", "", jwkBody(offCurve), []string{"jwk"}},
		{"RSA JWK with a wrong qi", "rsa-bad-qi", "", jwkBody(wrongQi), []string{"jwk"}},
		{"kty OKP", "okp", "", jwkBody(okp), []string{"jwk"}},
		{"kty foo", "foo", "", jwkBody(map[string]interface{}{"kty": "foo", "k": base64.RawURLEncoding.EncodeToString(aes)}), []string{"jwk"}},
		{"RSA-8192 JWK", "rsa8192", "", jwkBody(impJWK(t, rsa8192, "")), []string{"jwk"}},
		{"RSA-8192 public JWK for verify", "rsa8192-public", "", jwkBody(impJWK(t, &rsa8192.PublicKey, ""), "operations", "verify"), []string{"jwk"}},
		{"RSA-1024 JWK", "rsa1024", "", jwkBody(impJWK(t, impRSAKey(t, 1024, 0), "")), []string{"jwk"}},
		{"oct of 64 bytes as AES", "oct64", "", jwkBody(impJWK(t, impRandom(t, 64), ""), "type", "aes256-gcm96"), []string{"jwk|type"}},
		{"P-256 JWK as ecdsa-p384", "ec-wrong-type", "", jwkBody(ecJWK, "type", "ecdsa-p384"), []string{"jwk|type"}},
		{"JWK not JSON", "not-json", "", map[string]interface{}{"jwk": `{"kty":"oct",`}, []string{"jwk"}},
		{"import onto an existing key", "existing", "", jwkBody(impJWK(t, impRandom(t, 32), "")), []string{"import_version|exists"}},
		{"import_version on a generated key", "generated", "kms/keys/generated/import_version", jwkBody(aesJWK), []string{"import"}},
		{"import_version of another type", "existing", "kms/keys/existing/import_version", jwkBody(ecJWK), []string{"type|jwk"}},
		{"exportable=true", "exportable", "", jwkBody(aesJWK, "exportable", true), []string{"exportable"}},
		{"allow_plaintext_backup=true", "backup", "", jwkBody(aesJWK, "allow_plaintext_backup", true), []string{"allow_plaintext_backup"}},
		{"both jwk and ciphertext", "both", "", jwkBody(aesJWK, "ciphertext", impB64(good)), []string{"jwk", "ciphertext"}},
		{"neither jwk nor ciphertext", "neither", "", map[string]interface{}{"type": "aes256-gcm96"}, []string{"jwk|ciphertext"}},
		{"seeds' keys with an off-curve JWK", "seeds-off-curve", "kms/keys/seeds-off-curve", map[string]interface{}{"keys": []interface{}{offCurve}}, []string{"keys|jwk"}},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			v := v.forTest(t)
			path := tc.path
			if path == "" {
				path = "kms/keys/" + tc.key + "/import"
			}
			before, existed := 0, false
			if status, resp := v.raw("GET", "kms/keys/"+tc.key, v.token, nil); status == 200 {
				existed = true
				before, _ = strconv.Atoi(impLatest(resp["data"].(map[string]interface{})))
			}
			status, resp := v.raw("POST", path, v.token, tc.body)
			msg := fmt.Sprint(resp["errors"])
			t.Logf("%d %s", status, msg)
			if status < 400 || status >= 500 {
				t.Errorf("POST %s: %d %v, want a 4xx", path, status, resp)
			}
			for _, want := range tc.want {
				found := false
				for _, field := range strings.Split(want, "|") {
					found = found || strings.Contains(msg, field)
				}
				if !found {
					t.Errorf("the message %q does not name %s", msg, strings.ReplaceAll(want, "|", " or "))
				}
			}
			status, resp = v.raw("GET", "kms/keys/"+tc.key, v.token, nil)
			switch {
			case !existed && status == 200:
				t.Errorf("a refused import left kms/keys/%s: %v", tc.key, resp["data"])
			case existed && status != 200:
				t.Errorf("a refused import removed kms/keys/%s: %d %v", tc.key, status, resp)
			case existed:
				if after, _ := strconv.Atoi(impLatest(resp["data"].(map[string]interface{}))); after != before {
					t.Errorf("a refused import took kms/keys/%s from version %d to %d", tc.key, before, after)
				}
			}
		})
	}

	t.Run("PublicOnlyJWKForVerify", func(t *testing.T) {
		v := v.forTest(t)
		impPost(t, v, "kms/keys/verify-only/import", jwkBody(publicRSA, "operations", "verify"))
		data := impRead(t, v, "verify-only")
		impCheckImported(t, data, 1)
		if o := impObject(t, data, 1); o["public_only"] != true {
			t.Errorf("hsm_objects[1] = %v, want public_only true", o)
		}
		if pub := impPublicKey(t, data, 1); !rsaKey.PublicKey.Equal(pub) {
			t.Error("the public key read back is not the test's")
		}
		msg := []byte("verified with an imported public key")
		digest := sha256.Sum256(msg)
		mine, err := rsa.SignPKCS1v15(nil, rsaKey, crypto.SHA256, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if !impKMSVerifies(t, v, "verify-only", msg, mine, map[string]interface{}{"signature_algorithm": "pkcs1v15"}) {
			t.Error("kms/verify rejects the test's signature")
		}
		if impKMSVerifies(t, v, "verify-only", []byte("other message"), mine, map[string]interface{}{"signature_algorithm": "pkcs1v15"}) {
			t.Error("kms/verify accepts the signature over another message")
		}
		status, resp := v.raw("POST", "kms/sign/verify-only", v.token, map[string]interface{}{"input": impB64(msg)})
		if status != 400 {
			t.Errorf("sign with a public-only key: %d %v, want 400", status, resp)
		}
	})
}
