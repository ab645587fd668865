// Command compatgen writes the compatibility fixture of commit 16601bf
// (issue 17's stored-format changes): what 32d57c5's fixture has, plus a
// KEK rotation that retires KEK v1 instead of destroying it (the KEK state
// records "retired"), a backup taken under KEK v1 before the rotation and
// restored after it, WAL entries that record labels, and the mount's
// marker on the token (requests carry a mount accessor).
//
// It is built inside a `git archive 16601bf` as cmd/compatgen; run it
// through testdata/compat/regen.sh 16601bf.
package main

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha256" // registers SHA-256 for crypto.Hash.New
	_ "crypto/sha3"   // registers SHA-3 for crypto.Hash.New
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log"
	"math/big"
	"time"

	"github.com/miekg/pkcs11"
)

func main() {
	run(spec{
		Commit:      "16601bf",
		BackendUUID: "5e0c0a7f-1660-41bf-8000-000000000003",
		Prepare:     holdCeremony,
		Populate:    populate,
	})
}

// The hashes sign and verify take at this commit.
var signHashes = []string{"sha2-224", "sha2-256", "sha2-384", "sha2-512", "sha3-224", "sha3-256", "sha3-384", "sha3-512"}

func digest(h crypto.Hash) func([]byte) []byte {
	return func(m []byte) []byte {
		d := h.New()
		d.Write(m)
		return d.Sum(nil)
	}
}

func rsaVariants() []signVariant {
	vs := []signVariant{
		{name: "default", fields: map[string]interface{}{}},
		{name: "url-sha2-512", fields: map[string]interface{}{}, urlHash: "sha2-512"},
		{name: "pss-salt-hash", fields: map[string]interface{}{"salt_length": "hash"}},
		{name: "pss-salt-20", fields: map[string]interface{}{"salt_length": "20"}},
		{name: "prehashed-sha2-256", fields: map[string]interface{}{"prehashed": true, "hash_algorithm": "sha2-256"}, digest: digest(crypto.SHA256)},
		{name: "isdigest-pkcs1v15-sha2-384", fields: map[string]interface{}{"isdigest": true, "signature_algorithm": "pkcs1v15", "hash_algorithm": "sha2-384"}, digest: digest(crypto.SHA384)},
		{name: "prehashed-sha3-256", fields: map[string]interface{}{"prehashed": true, "hash_algorithm": "sha3-256"}, digest: digest(crypto.SHA3_256)},
		{name: "alg-RS256", fields: map[string]interface{}{"alg": "RS256"}},
		{name: "alg-RS512", fields: map[string]interface{}{"alg": "RS512"}},
		{name: "alg-PS384", fields: map[string]interface{}{"alg": "PS384"}},
		{name: "alg-PS512", fields: map[string]interface{}{"alg": "PS512"}},
		{name: "jws", fields: map[string]interface{}{"marshaling_algorithm": "jws"}},
		{name: "algorithm-field-sha2-384", fields: map[string]interface{}{"algorithm": "sha2-384"}},
	}
	for _, h := range signHashes {
		vs = append(vs,
			signVariant{name: "pss-" + h, fields: map[string]interface{}{"hash_algorithm": h}},
			signVariant{name: "pkcs1v15-" + h, fields: map[string]interface{}{"signature_algorithm": "pkcs1v15", "hash_algorithm": h}})
	}
	return vs
}

func ecVariants(curveBits int) []signVariant {
	alg := map[int]string{256: "ES256", 384: "ES384", 521: "ES512"}[curveBits]
	vs := []signVariant{
		{name: "default", fields: map[string]interface{}{}},
		{name: "jws", fields: map[string]interface{}{"marshaling_algorithm": "jws"}},
		{name: "url-sha2-384", fields: map[string]interface{}{}, urlHash: "sha2-384"},
		{name: "prehashed-sha2-256", fields: map[string]interface{}{"prehashed": true, "hash_algorithm": "sha2-256"}, digest: digest(crypto.SHA256)},
		{name: "prehashed-sha3-384", fields: map[string]interface{}{"prehashed": true, "hash_algorithm": "sha3-384"}, digest: digest(crypto.SHA3_384)},
		{name: "alg-" + alg, fields: map[string]interface{}{"alg": alg}},
		{name: "alg-" + alg + "-jws", fields: map[string]interface{}{"alg": alg, "marshaling_algorithm": "jws"}},
	}
	for _, h := range signHashes {
		vs = append(vs, signVariant{name: h, fields: map[string]interface{}{"hash_algorithm": h}})
	}
	return vs
}

func (r *recorder) signAll(key, prefix string, version int, vs []signVariant) {
	for _, v := range vs {
		r.sign(key, prefix+"/sign/"+v.name, version, v)
	}
}

var (
	aesBits   = []int{128, 192, 256}
	rsaBits   = []int{2048, 3072, 4096}
	ecCurves  = []int{256, 384, 521}
	hmacAlgos = []string{"sha2-256", "sha2-384", "sha2-512"}
)

func populate(r *recorder) {
	hsmKeys(r)
	r.stateKeys()
	importedKeys(r)
	adoptedKeys(r)
	wrappedKeys(r)
}

// hsmKeys: residency hsm, every type, some rotated.
func hsmKeys(r *recorder) {
	r.encryptAll("default", "default/v1", 0)
	r.datakeys("default", "default/v1")

	for _, bits := range aesBits {
		k := fmt.Sprintf("aes%d", bits)
		r.create(k, map[string]interface{}{"type": k + "-gcm96"})
		r.encryptAll(k, k+"/v1", 0)
		r.batchEncrypt(k, k+"/v1/batch")
		r.datakeys(k, k+"/v1")
		r.hmac(k, k+"/v1/hmac/sha2-512", 1, "sha2-512")
	}
	// A 4096-byte plaintext (max_plaintext_bytes) and an empty one.
	big := make([]byte, 4096)
	for i := range big {
		big[i] = byte(i)
	}
	r.encrypt("aes256", "aes256/v1/encrypt/4096-bytes", 0, big, binding{})
	r.encrypt("aes256", "aes256/v1/encrypt/empty", 0, []byte{}, binding{})
	v1 := r.encrypt("aes256", "aes256/v1/encrypt/to-rewrap", 0, r.plain("aes256/v1/encrypt/to-rewrap"), binding{Context: "rw"})
	dk := r.datakey("aes256", "aes256/v1/datakey/to-rewrap", "plaintext", 256, binding{})
	dkPlain := r.must("update", "decrypt/aes256", map[string]interface{}{"ciphertext": dk})["plaintext"].(string)
	r.hmac("aes256", "aes256/v1/hmac/sha2-256", 1, "sha2-256")
	r.rotate("aes256")
	r.encryptAll("aes256", "aes256/v2", 0)
	r.encrypt("aes256", "aes256/v1/encrypt/key_version-1", 1, r.plain("aes256/v1/encrypt/key_version-1"), binding{})
	r.rewrap("aes256", "aes256/v2/rewrapped-from-v1", v1, r.plain("aes256/v1/encrypt/to-rewrap"), binding{Context: "rw"})
	r.datakeys("aes256", "aes256/v2")
	r.hmac("aes256", "aes256/v2/hmac/sha2-256", 2, "sha2-256")
	r.batchHMAC("aes256", "aes256/v1/hmac/batch", 1)
	// A data key rewrapped stays a data key: datakey/decrypt opens it.
	rw := str(r.must("update", "rewrap/aes256", map[string]interface{}{"ciphertext": dk}), "ciphertext")
	r.add(check{ID: "aes256/v2/datakey/rewrapped-from-v1/via-decrypt", Group: "datakey-via-decrypt", Key: "aes256", Path: "decrypt/aes256",
		Data: map[string]interface{}{"ciphertext": rw}, Expect: map[string]interface{}{"plaintext": dkPlain}})
	r.add(check{ID: "aes256/v2/datakey/rewrapped-from-v1/via-datakey-decrypt", Group: "datakey-decrypt", Key: "aes256", Path: "datakey/decrypt/aes256",
		Data: map[string]interface{}{"ciphertext": rw}, Expect: map[string]interface{}{"plaintext": dkPlain}})
	// What encrypt made is not a data key: datakey/decrypt must keep
	// refusing it, whatever an upgrade reopens for older layouts.
	r.refused("datakey-purpose", "aes256", "aes256/v1/encrypt/not-a-datakey", "datakey/decrypt/aes256", map[string]interface{}{
		"ciphertext": str(r.must("update", "encrypt/aes256", map[string]interface{}{"plaintext": b64(r.plain("purpose")), "key_version": 1}), "ciphertext")})

	for _, bits := range rsaBits {
		k := fmt.Sprintf("rsa-%d", bits)
		r.create(k, map[string]interface{}{"type": k})
		r.signAll(k, k+"/v1", 0, rsaVariants())
		r.batchSign(k, k+"/v1/sign/batch", map[string]interface{}{})
		r.rsaEncrypt(k, k+"/v1/encrypt/oaep", 0, "oaep")
		r.rsaEncrypt(k, k+"/v1/encrypt/pkcs1v15", 0, "pkcs1v15")
		r.rsaBatch(k, k+"/v1/encrypt/batch")
	}
	r.rotate("rsa-2048")
	r.signAll("rsa-2048", "rsa-2048/v2", 0, rsaVariants()[:4])
	r.sign("rsa-2048", "rsa-2048/v1/sign/key_version-1", 1, rsaVariants()[0])
	r.rsaEncrypt("rsa-2048", "rsa-2048/v2/encrypt/oaep", 0, "oaep")
	r.rsaEncrypt("rsa-2048", "rsa-2048/v1/encrypt/key_version-1", 1, "oaep")

	for _, c := range ecCurves {
		k := fmt.Sprintf("ecdsa-p%d", c)
		r.create(k, map[string]interface{}{"type": k})
		r.signAll(k, k+"/v1", 0, ecVariants(c))
		r.batchSign(k, k+"/v1/sign/batch", map[string]interface{}{"marshaling_algorithm": "jws"})
	}
	r.rotate("ecdsa-p256")
	r.signAll("ecdsa-p256", "ecdsa-p256/v2", 0, ecVariants(256)[:2])
	r.sign("ecdsa-p256", "ecdsa-p256/v1/sign/key_version-1", 1, ecVariants(256)[0])

	r.create("ed25519", map[string]interface{}{"type": "ed25519"})
	ed := []signVariant{{name: "default", fields: map[string]interface{}{}}}
	r.signAll("ed25519", "ed25519/v1", 0, ed)
	r.batchSign("ed25519", "ed25519/v1/sign/batch", map[string]interface{}{})
	r.rotate("ed25519")
	r.signAll("ed25519", "ed25519/v2", 0, ed)
	r.sign("ed25519", "ed25519/v1/sign/key_version-1", 1, ed[0])

	r.create("hmac", map[string]interface{}{"type": "hmac"})
	for _, a := range hmacAlgos {
		r.hmac("hmac", "hmac/v1/hmac/"+a, 1, a)
	}
	r.rotate("hmac")
	for _, a := range hmacAlgos {
		r.hmac("hmac", "hmac/v2/hmac/"+a, 2, a)
	}
	r.batchHMAC("hmac", "hmac/v2/hmac/batch", 2)
	r.create("hmac-256", map[string]interface{}{"type": "hmac", "size": 256})
	r.hmac("hmac-256", "hmac-256/v1/hmac/sha2-256", 1, "sha2-256")

	for _, k := range []string{"rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519"} {
		r.publicKeys(k)
	}
}

// rsaBatch encrypts two items, one per padding, and records one batch
// decrypt.
func (r *recorder) rsaBatch(key, id string) {
	var in, dec, want []interface{}
	for _, p := range []string{"oaep", "pkcs1v15"} {
		in = append(in, map[string]interface{}{"plaintext": b64(r.plain(id + "/" + p)), "padding_scheme": p})
		want = append(want, map[string]interface{}{"plaintext": b64(r.plain(id + "/" + p))})
	}
	res := r.must("update", "encrypt/"+key, map[string]interface{}{"batch_input": in})["batch_results"].([]interface{})
	for i, p := range []string{"oaep", "pkcs1v15"} {
		dec = append(dec, map[string]interface{}{"ciphertext": str(res[i].(map[string]interface{}), "ciphertext"), "padding_scheme": p})
	}
	r.add(check{ID: id, Group: "rsa-decrypt", Key: key, Path: "decrypt/" + key,
		Data: map[string]interface{}{"batch_input": dec}, Expect: map[string]interface{}{"batch_results": want}})
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jwkString(v map[string]interface{}) string {
	raw, err := json.Marshal(v)
	if err != nil {
		log.Fatal(err)
	}
	return string(raw)
}

func rsaJWK(k *rsa.PrivateKey) string {
	k.Precompute()
	return jwkString(map[string]interface{}{
		"kty": "RSA", "n": b64url(k.N.Bytes()), "e": b64url(big.NewInt(int64(k.E)).Bytes()), "d": b64url(k.D.Bytes()),
		"p": b64url(k.Primes[0].Bytes()), "q": b64url(k.Primes[1].Bytes()),
		"dp": b64url(k.Precomputed.Dp.Bytes()), "dq": b64url(k.Precomputed.Dq.Bytes()), "qi": b64url(k.Precomputed.Qinv.Bytes()),
	})
}

func ecJWK(k *ecdsa.PrivateKey) string {
	size := (k.Curve.Params().BitSize + 7) / 8
	return jwkString(map[string]interface{}{
		"kty": "EC", "crv": k.Curve.Params().Name,
		"x": b64url(k.X.FillBytes(make([]byte, size))), "y": b64url(k.Y.FillBytes(make([]byte, size))),
		"d": b64url(k.D.FillBytes(make([]byte, size))),
	})
}

// transitCiphertext is what Transit itself writes for an AES key: GCM with
// a 96-bit nonce and associated_data (or nothing) as the only AAD.
func transitCiphertext(key []byte, version int, plaintext, ad []byte) string {
	block, err := aes.NewCipher(key)
	if err != nil {
		log.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		log.Fatal(err)
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		log.Fatal(err)
	}
	return fmt.Sprintf("vault:v%d:%s", version, b64(gcm.Seal(nonce, nonce, plaintext, ad)))
}

// transitValues records ciphertexts Transit made under the key material
// before it was imported: decrypt opens them (no context), with and
// without associated_data.
func (r *recorder) transitValues(key string, version int, material []byte) {
	for _, ad := range []string{"", "transit-ad"} {
		id := fmt.Sprintf("%s/v%d/transit-ciphertext/ad-%q", key, version, ad)
		p := r.plain(id)
		data := map[string]interface{}{"ciphertext": transitCiphertext(material, version, p, []byte(ad))}
		if ad != "" {
			data["associated_data"] = b64([]byte(ad))
		}
		r.add(check{ID: id, Group: "decrypt", Key: key, Path: "decrypt/" + key, Data: data, Expect: map[string]interface{}{"plaintext": b64(p)}})
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		log.Fatal(err)
	}
	return b
}

// importedKeys: JWK imports of every importable family, an import_version,
// a rotation made in the HSM, and a public-only key.
func importedKeys(r *recorder) {
	const k = "imported-aes256"
	m1, m2 := randBytes(32), randBytes(32)
	r.must("update", "keys/"+k+"/import", map[string]interface{}{"jwk": jwkString(map[string]interface{}{"kty": "oct", "k": b64url(m1)}), "allow_rotation": true})
	r.transitValues(k, 1, m1)
	r.encryptAll(k, k+"/v1", 0)
	r.datakeys(k, k+"/v1")
	r.hmac(k, k+"/v1/hmac/sha2-256", 1, "sha2-256")
	r.must("update", "keys/"+k+"/import_version", map[string]interface{}{"jwk": jwkString(map[string]interface{}{"kty": "oct", "k": b64url(m2)})})
	r.transitValues(k, 2, m2)
	r.encryptAll(k, k+"/v2", 0)
	r.rotate(k)
	r.encryptAll(k, k+"/v3", 0)
	r.datakeys(k, k+"/v3")

	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		log.Fatal(err)
	}
	r.must("update", "keys/imported-rsa-2048/import", map[string]interface{}{"jwk": rsaJWK(rk), "operations": "sign,verify,encrypt,decrypt"})
	r.signAll("imported-rsa-2048", "imported-rsa-2048/v1", 0, rsaVariants()[:4])
	r.rsaEncrypt("imported-rsa-2048", "imported-rsa-2048/v1/encrypt/oaep", 0, "oaep")
	r.publicKeys("imported-rsa-2048")

	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	r.must("update", "keys/imported-ecdsa-p256/import", map[string]interface{}{"jwk": ecJWK(ek)})
	r.signAll("imported-ecdsa-p256", "imported-ecdsa-p256/v1", 0, ecVariants(256)[:2])
	r.publicKeys("imported-ecdsa-p256")

	hk := randBytes(64)
	r.must("update", "keys/imported-hmac/import", map[string]interface{}{"jwk": jwkString(map[string]interface{}{"kty": "oct", "k": b64url(hk)}), "type": "hmac"})
	for _, a := range hmacAlgos {
		r.hmac("imported-hmac", "imported-hmac/v1/hmac/"+a, 1, a)
	}

	// A public key alone verifies what its private half signed elsewhere.
	pk, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&pk.PublicKey)
	if err != nil {
		log.Fatal(err)
	}
	r.must("update", "keys/imported-public-ecdsa-p384/import", map[string]interface{}{"public_key": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))})
	msg := r.plain("imported-public-ecdsa-p384/v1/verify/external")
	d := sha512.Sum384(msg)
	sig, err := ecdsa.SignASN1(rand.Reader, pk, d[:])
	if err != nil {
		log.Fatal(err)
	}
	r.add(check{ID: "imported-public-ecdsa-p384/v1/verify/external", Group: "verify", Key: "imported-public-ecdsa-p384", Path: "verify/imported-public-ecdsa-p384",
		Data:   map[string]interface{}{"input": b64(msg), "signature": "vault:v1:" + b64(sig), "hash_algorithm": "sha2-384"},
		Expect: map[string]interface{}{"valid": true}})
	r.publicKeys("imported-public-ecdsa-p384")
}

// The objects a key ceremony left on the token for adopt, made before the
// plugin loads the module (as this commit's e2e test does).
const (
	ceremonyAES    = "ceremony-aes256"
	ceremonyAES2   = "ceremony-aes256-second"
	ceremonyEC     = "ceremony-ecdsa-p256"
	ceremonyHMACID = "c0ffee0000000000000000000000c0de"
)

func holdCeremony(library, label, pin string) {
	p := pkcs11.New(library)
	if p == nil {
		log.Fatalf("loading %s failed", library)
	}
	if err := p.Initialize(); err != nil {
		log.Fatalf("C_Initialize: %v", err)
	}
	defer func() {
		if err := p.Finalize(); err != nil {
			log.Fatalf("C_Finalize: %v", err)
		}
		p.Destroy()
	}()
	slots, err := p.GetSlotList(true)
	if err != nil {
		log.Fatal(err)
	}
	var slot uint
	found := false
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == label {
			slot, found = s, true
		}
	}
	if !found {
		log.Fatalf("no token labelled %q", label)
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		log.Fatal(err)
	}
	defer p.CloseSession(sh)
	if err := p.Login(sh, pkcs11.CKU_USER, pin); err != nil {
		log.Fatalf("C_Login: %v", err)
	}
	secret := func(label string, id []byte, mech, keyType uint, size int, usage ...uint) {
		t := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, size),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}
		for _, u := range usage {
			t = append(t, pkcs11.NewAttribute(u, true))
		}
		if _, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, t); err != nil {
			log.Fatalf("generating %s: %v", label, err)
		}
	}
	secret(ceremonyAES, randBytes(16), pkcs11.CKM_AES_KEY_GEN, pkcs11.CKK_AES, 32, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
	secret(ceremonyAES2, randBytes(16), pkcs11.CKM_AES_KEY_GEN, pkcs11.CKK_AES, 32, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
	hmacID, err := hex.DecodeString(ceremonyHMACID)
	if err != nil {
		log.Fatal(err)
	}
	secret("ceremony-hmac", hmacID, pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKK_GENERIC_SECRET, 64, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY)

	id := randBytes(16)
	p256 := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	common := func(a ...*pkcs11.Attribute) []*pkcs11.Attribute {
		return append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, ceremonyEC),
		}, a...)
	}
	if _, _, err := p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		common(pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)),
		common(pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true))); err != nil {
		log.Fatalf("generating %s: %v", ceremonyEC, err)
	}
	if err := p.Logout(sh); err != nil {
		log.Fatal(err)
	}
}

// adoptedKeys binds the ceremony's objects: by label, by CKA_ID, and a
// second object as version 2 of an adopted key.
func adoptedKeys(r *recorder) {
	r.must("update", "keys/adopted-aes256/adopt", map[string]interface{}{"label": ceremonyAES})
	r.encryptAll("adopted-aes256", "adopted-aes256/v1", 0)
	r.datakeys("adopted-aes256", "adopted-aes256/v1")
	r.must("update", "keys/adopted-aes256/adopt", map[string]interface{}{"label": ceremonyAES2})
	r.encryptAll("adopted-aes256", "adopted-aes256/v2", 0)

	r.must("update", "keys/adopted-ecdsa-p256/adopt", map[string]interface{}{"label": ceremonyEC})
	r.signAll("adopted-ecdsa-p256", "adopted-ecdsa-p256/v1", 0, ecVariants(256)[:2])
	r.publicKeys("adopted-ecdsa-p256")

	r.must("update", "keys/adopted-hmac/adopt", map[string]interface{}{"id": ceremonyHMACID})
	for _, a := range hmacAlgos {
		r.hmac("adopted-hmac", "adopted-hmac/v1/hmac/"+a, 1, a)
	}
}

// wrappedKeys: residency wrapped of every type that has it, rotations
// before and after a KEK rotation, and a backup taken at the end.
func wrappedKeys(r *recorder) {
	w := func(t string) string { return "wrapped-" + t }
	for _, bits := range aesBits {
		t := fmt.Sprintf("aes%d-gcm96", bits)
		r.create(w(t), map[string]interface{}{"type": t, "residency": "wrapped"})
		r.encryptAll(w(t), w(t)+"/v1", 0)
		r.batchEncrypt(w(t), w(t)+"/v1/batch")
		r.datakeys(w(t), w(t)+"/v1")
	}
	for _, bits := range rsaBits {
		t := fmt.Sprintf("rsa-%d", bits)
		r.create(w(t), map[string]interface{}{"type": t, "residency": "wrapped"})
		r.signAll(w(t), w(t)+"/v1", 0, rsaVariants()[:4])
		r.rsaEncrypt(w(t), w(t)+"/v1/encrypt/oaep", 0, "oaep")
		r.rsaEncrypt(w(t), w(t)+"/v1/encrypt/pkcs1v15", 0, "pkcs1v15")
		r.publicKeys(w(t))
	}
	for _, c := range ecCurves {
		t := fmt.Sprintf("ecdsa-p%d", c)
		r.create(w(t), map[string]interface{}{"type": t, "residency": "wrapped"})
		r.signAll(w(t), w(t)+"/v1", 0, ecVariants(c)[:2])
		r.publicKeys(w(t))
	}
	r.create(w("hmac"), map[string]interface{}{"type": "hmac", "residency": "wrapped"})
	for _, a := range hmacAlgos {
		r.hmac(w("hmac"), w("hmac")+"/v1/hmac/"+a, 1, a)
	}

	// Versions made under KEK v1, then moved to v2 by the rotation's job.
	aes := w("aes256-gcm96")
	cts := map[string]string{}
	cts["v1"] = r.encrypt(aes, aes+"/v1/encrypt/for-restore", 0, r.plain(aes+"/v1/encrypt/for-restore"), binding{})
	r.rotate(aes)
	r.encryptAll(aes, aes+"/v2", 0)
	cts["v2"] = r.encrypt(aes, aes+"/v2/encrypt/for-restore", 0, r.plain(aes+"/v2/encrypt/for-restore"), binding{})
	r.rotate(w("rsa-2048"))
	r.signAll(w("rsa-2048"), w("rsa-2048")+"/v2", 0, rsaVariants()[:2])
	r.rotate(w("ecdsa-p256"))
	r.signAll(w("ecdsa-p256"), w("ecdsa-p256")+"/v2", 0, ecVariants(256)[:2])
	r.rotate(w("hmac"))
	r.hmac(w("hmac"), w("hmac")+"/v2/hmac/sha2-256", 2, "sha2-256")

	// A backup under KEK v1, taken before the rotation: v1 is retired,
	// not destroyed, so it restores after.
	early := str(r.must("read", "backup/"+aes, nil), "backup")

	rotateKEK(r)

	restoredEarly := "restored-early-" + aes
	r.add(check{ID: restoredEarly + "/restore", Group: "restore", Key: restoredEarly, Path: "restore/" + restoredEarly,
		Data: map[string]interface{}{"backup": early}})
	for _, v := range []string{"v1", "v2"} {
		id := aes + "/" + v + "/encrypt/for-restore"
		r.add(check{ID: restoredEarly + "/" + v + "/decrypt", Group: "restore", Key: restoredEarly, Path: "decrypt/" + restoredEarly,
			Data: map[string]interface{}{"ciphertext": cts[v]}, Expect: map[string]interface{}{"plaintext": b64(r.plain(id))}})
	}

	// Made under KEK v2.
	r.rotate(aes)
	r.encryptAll(aes, aes+"/v3", 0)
	r.datakeys(aes, aes+"/v3")
	cts["v3"] = r.encrypt(aes, aes+"/v3/encrypt/for-restore", 0, r.plain(aes+"/v3/encrypt/for-restore"), binding{})
	late := "wrapped-late-aes256-gcm96"
	r.create(late, map[string]interface{}{"type": "aes256-gcm96", "residency": "wrapped"})
	r.encryptAll(late, late+"/v1", 0)
	r.datakeys(late, late+"/v1")
	lateEC := "wrapped-late-ecdsa-p384"
	r.create(lateEC, map[string]interface{}{"type": "ecdsa-p384", "residency": "wrapped"})
	r.signAll(lateEC, lateEC+"/v1", 0, ecVariants(384)[:2])
	r.publicKeys(lateEC)

	// A backup under the KEK the fixture ends with restores under another
	// name and opens the original's ciphertexts.
	backup := str(r.must("read", "backup/"+aes, nil), "backup")
	restored := "restored-" + aes
	r.add(check{ID: restored + "/restore", Group: "restore", Key: restored, Path: "restore/" + restored,
		Data: map[string]interface{}{"backup": backup}})
	for _, v := range []string{"v1", "v2", "v3"} {
		id := aes + "/" + v + "/encrypt/for-restore"
		r.add(check{ID: restored + "/" + v + "/decrypt", Group: "restore", Key: restored, Path: "decrypt/" + restored,
			Data: map[string]interface{}{"ciphertext": cts[v]}, Expect: map[string]interface{}{"plaintext": b64(r.plain(id))}})
	}
}

// rotateKEK rotates the KEK and waits for its rewrap job to finish and to
// retire KEK v1 (kept on the token), as an operator would before taking
// the fixture.
func rotateKEK(r *recorder) {
	r.must("update", "config/kek/rotate", nil)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := r.must("read", "status", nil)
		kek, _ := st["kek"].(map[string]interface{})
		job, _ := kek["rewrap"].(map[string]interface{})
		if job["done"] == true {
			if e, ok := job["error"]; ok {
				log.Fatalf("KEK rewrap job: %v", e)
			}
			if fmt.Sprint(kek["versions"]) != "[1 2]" || fmt.Sprint(kek["retired_versions"]) != "[1]" {
				log.Fatalf("KEK versions after the rewrap: %v, retired %v; want [1 2], [1]", kek["versions"], kek["retired_versions"])
			}
			return
		}
		if time.Now().After(deadline) {
			log.Fatalf("the KEK rewrap job did not finish: %v", kek)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
