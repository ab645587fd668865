// Command compatgen writes the compatibility fixture of commit 464c4a2
// (issues 19 and 20's stored-format changes): what 16601bf's fixture has,
// plus the config's batch_concurrency, deletion_window,
// deletion_warn_recent and purge_protection; keys with a description and
// tags (one retagged through keys/:name/config); keys pending deletion
// (their deletion index entries), some cancelled in the replay and used
// again, one purged, the others left pending; backups that carry tags,
// usage and a pending state; and the keys' usage entries, flushed to
// storage by the clean shutdown (Cleanup) that ends the generation.
//
// It is built inside a `git archive 464c4a2` as cmd/compatgen; run it
// through testdata/compat/regen.sh 464c4a2.
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
		Commit:      "464c4a2",
		BackendUUID: "5e0c0a7f-464c-44a2-8000-000000000004",
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
	mountConfig(r)
	hsmKeys(r)
	r.stateKeys()
	importedKeys(r)
	adoptedKeys(r)
	wrappedKeys(r)
	deletedKeys(r)
	taggedKeys(r)
	usageKeys(r)
	// Last, once nothing more is used: the usage the shutdown flushes,
	// read back first in the replay, before its requests add to it.
	r.first(func() { storedUsage(r) })
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

// first runs fn and moves the checks it recorded to the front of the
// replay.
func (r *recorder) first(fn func()) {
	n := len(r.checks)
	fn()
	added := append([]check(nil), r.checks[n:]...)
	r.checks = append(added, r.checks[:n]...)
}

// pick is the part of an answer a check expects: the fields that matter,
// none of the volatile ones.
func pick(m map[string]interface{}, fields ...string) map[string]interface{} {
	out := map[string]interface{}{}
	for _, f := range fields {
		v, ok := m[f]
		if !ok {
			log.Fatalf("answer has no %s: %v", f, m)
		}
		out[f] = v
	}
	return out
}

// keyFields are what a read of a tagged or pending key is checked on.
var keyFields = []string{"type", "state", "description", "tags"}

// readCheck records a read of the key as it is now, on fields.
func (r *recorder) readCheck(group, key, id string, fields ...string) map[string]interface{} {
	got := r.must("read", "keys/"+key, nil)
	r.add(check{ID: id, Group: group, Key: key, Operation: "read", Path: "keys/" + key, Expect: pick(got, fields...)})
	return got
}

// listCheck records LIST keys with a filter (query parameters, as Vault
// hands them to the plugin): the exact list of names and, for each, the
// key_info fields given.
func (r *recorder) listCheck(group, id string, filter map[string]interface{}, fields ...string) []interface{} {
	got := r.must("list", "keys/", filter)
	names, ok := got["keys"].([]interface{})
	if !ok || len(names) == 0 {
		log.Fatalf("%s: LIST keys %v answered %v", id, filter, got)
	}
	info, _ := got["key_info"].(map[string]interface{})
	want := map[string]interface{}{}
	for _, n := range names {
		ki, ok := info[n.(string)].(map[string]interface{})
		if !ok {
			log.Fatalf("%s: no key_info for %v in %v", id, n, got)
		}
		want[n.(string)] = pick(ki, fields...)
	}
	r.add(check{ID: id, Group: group, Key: "keys/", Operation: "list", Path: "keys/", Data: filter,
		Expect: map[string]interface{}{"keys": names, "key_info": want}})
	return names
}

func sameNames(got []interface{}, want ...string) bool {
	return fmt.Sprint(got) == fmt.Sprint(want)
}

// The mount's deletion window: the longest the plugin takes. The replay
// never runs the periodic purge, so the fixture's pending keys stay
// pending after their date; but cancel_deletion is documented as working
// until the date, and for a year the replay cancels before it.
const deletionWindow = "8760h"

// mountConfig writes the config fields of issues 19 and 20 over the one
// run() wrote, keeping purge possible (purge_protection cannot be turned
// off once on).
func mountConfig(r *recorder) {
	r.must("update", "config", map[string]interface{}{
		"batch_concurrency": 4, "deletion_window": deletionWindow, "deletion_warn_recent": "48h", "purge_protection": false,
	})
	got := r.must("read", "config", nil)
	want := pick(got, "batch_concurrency", "deletion_window", "deletion_warn_recent", "purge_protection")
	if fmt.Sprint(want) != "map[batch_concurrency:4 deletion_warn_recent:172800 deletion_window:31536000 purge_protection:false]" {
		log.Fatalf("config read after the write: %v", want)
	}
	r.add(check{ID: "config/batch-and-deletion", Group: "config", Key: "config", Operation: "read", Path: "config", Expect: want})
}

// taggedKeys: descriptions and tags given at creation (as a map and as
// key=value pairs) and replaced by keys/:name/config; LIST filters by tag
// (env=prod also finds a key pending deletion).
func taggedKeys(r *recorder) {
	const ta, te, rt = "tagged-aes256", "tagged-ecdsa-p256", "retagged-aes128"
	r.create(ta, map[string]interface{}{"type": "aes256-gcm96", "description": "payments ledger (compatibility fixture)",
		"tags": map[string]interface{}{"env": "prod", "team": "payments", "app.example/tier": "gold"}})
	r.encryptAll(ta, ta+"/v1", 0)
	r.create(te, map[string]interface{}{"type": "ecdsa-p256", "description": "release signing",
		"tags": []interface{}{"env=dev", "owner=alice@example.org"}})
	r.signAll(te, te+"/v1", 0, ecVariants(256)[:2])
	r.create(rt, map[string]interface{}{"type": "aes128-gcm96", "description": "before its config",
		"tags": map[string]interface{}{"env": "staging", "owner": "bob"}})
	r.encrypt(rt, rt+"/v1/encrypt/before-retag", 0, r.plain(rt+"/v1/encrypt/before-retag"), binding{})
	r.must("update", "keys/"+rt+"/config", map[string]interface{}{"description": "retagged by keys/:name/config",
		"tags": map[string]interface{}{"env": "prod", "cost-center": "42"}})
	r.encrypt(rt, rt+"/v1/encrypt/after-retag", 0, r.plain(rt+"/v1/encrypt/after-retag"), binding{})

	for _, k := range []string{ta, te, rt} {
		r.readCheck("tags", k, k+"/read/description-and-tags", keyFields...)
	}
	// The config's tags replace the old ones: owner is gone.
	if got := r.must("read", "keys/"+rt, nil)["tags"]; fmt.Sprint(got) != "map[cost-center:42 env:prod]" {
		log.Fatalf("%s: tags after keys/:name/config: %v", rt, got)
	}
	if names := r.listCheck("tags", "keys/list/tag=env=prod", map[string]interface{}{"tag": "env=prod"}, keyFields...); !sameNames(names, "pending-kept-ecdsa-p384", rt, ta) {
		log.Fatalf("LIST tag=env=prod: %v", names)
	}
	if names := r.listCheck("tags", "keys/list/tag=owner", map[string]interface{}{"tag": "owner"}, keyFields...); !sameNames(names, te) {
		log.Fatalf("LIST tag=owner: %v", names)
	}
	// Unfiltered, key_info holds every key: checked on the tagged ones.
	all := r.must("list", "keys/", nil)
	info, _ := all["key_info"].(map[string]interface{})
	want := map[string]interface{}{}
	for _, k := range []string{ta, te, rt} {
		ki, ok := info[k].(map[string]interface{})
		if !ok {
			log.Fatalf("LIST keys: no key_info for %s: %v", k, all)
		}
		want[k] = pick(ki, keyFields...)
	}
	r.add(check{ID: "keys/list/key_info", Group: "tags", Key: "keys/", Operation: "list", Path: "keys/",
		Expect: map[string]interface{}{"key_info": want}})
}

// A value made under a key before its deletion, checked once the deletion
// is cancelled and the key activated again.
type kept struct {
	id, path string
	data     map[string]interface{}
	expect   map[string]interface{}
}

func (r *recorder) addKept(key string, vs []kept) {
	for _, v := range vs {
		r.add(check{ID: v.id, Group: "deletion", Key: key, Path: v.path, Data: v.data, Expect: v.expect})
	}
}

// deletedKeys: keys deleted with the mount's window, so stored as
// pending_deletion with a deletion date and a deletion index entry. The
// replay first checks them pending (reads, LIST, every operation and a
// reuse of the name refused), then cancels two and uses their old values,
// purges one and reuses its name, restores a pending key's backup, and
// leaves two pending.
func deletedKeys(r *recorder) {
	const (
		da = "deleted-aes256"          // deactivated, then deleted
		de = "deleted-ecdsa-p256"      // deleted while active: deletion_allowed
		pk = "pending-kept-ecdsa-p384" // stays pending
		pw = "pending-wrapped-aes256"  // stays pending; its backup is restored pending
		pp = "pending-purged-aes128"   // purged in the replay
		rp = "restored-pending-wrapped-aes256"
	)
	// deleted-aes256: ciphertexts of every binding over two versions, a
	// data key and an HMAC.
	r.create(da, map[string]interface{}{"type": "aes256-gcm96", "description": "deleted, then cancelled",
		"tags": map[string]interface{}{"lifecycle": "cancelled"}})
	var daValues []kept
	encrypt := func(key, id string, b binding) string {
		p := r.plain(id)
		ct := str(r.must("update", "encrypt/"+key, with(b.fields(), map[string]interface{}{"plaintext": b64(p)})), "ciphertext")
		daValues = append(daValues, kept{id: id, path: "decrypt/" + key,
			data: with(b.fields(), map[string]interface{}{"ciphertext": ct}), expect: map[string]interface{}{"plaintext": b64(p)}})
		return ct
	}
	var firstCT string
	for _, bd := range bindings {
		ct := encrypt(da, da+"/v1/encrypt/"+bd.name, bd.b)
		if firstCT == "" {
			firstCT = ct
		}
	}
	dk := r.must("update", "datakey/wrapped/"+da, map[string]interface{}{"bits": 256})
	dkPlain := str(r.must("update", "decrypt/"+da, map[string]interface{}{"ciphertext": str(dk, "ciphertext")}), "plaintext")
	daValues = append(daValues, kept{id: da + "/v1/datakey/wrapped-256", path: "datakey/decrypt/" + da,
		data: map[string]interface{}{"ciphertext": str(dk, "ciphertext")}, expect: map[string]interface{}{"plaintext": dkPlain}})
	macIn := map[string]interface{}{"input": b64(r.plain(da + "/v1/hmac")), "key_version": 1}
	mac := str(r.must("update", "hmac/"+da+"/sha2-256", macIn), "hmac")
	daValues = append(daValues, kept{id: da + "/v1/hmac/sha2-256", path: "hmac/" + da + "/sha2-256",
		data: macIn, expect: map[string]interface{}{"hmac": mac}})
	r.rotate(da)
	for _, bd := range bindings[:2] {
		encrypt(da, da+"/v2/encrypt/"+bd.name, bd.b)
	}
	r.must("update", "keys/"+da+"/deactivate", nil)
	r.must("delete", "keys/"+da, nil)

	// deleted-ecdsa-p256: signatures of two versions.
	r.create(de, map[string]interface{}{"type": "ecdsa-p256", "description": "deleted while active, then cancelled",
		"tags": map[string]interface{}{"lifecycle": "cancelled"}})
	var deValues []kept
	sign := func(key, id string, version int, v signVariant) {
		input := b64(r.plain(id))
		data := with(v.fields, map[string]interface{}{"input": input, "key_version": version})
		suffix := ""
		if v.urlHash != "" {
			suffix = "/" + v.urlHash
		}
		sig := str(r.must("update", "sign/"+key+suffix, data), "signature")
		deValues = append(deValues, kept{id: id, path: "verify/" + key + suffix,
			data: with(v.fields, map[string]interface{}{"input": input, "signature": sig}), expect: map[string]interface{}{"valid": true}})
	}
	for _, v := range ecVariants(256)[:3] {
		sign(de, de+"/v1/sign/"+v.name, 1, v)
	}
	r.rotate(de)
	sign(de, de+"/v2/sign/default", 2, ecVariants(256)[0])
	r.must("update", "keys/"+de+"/config", map[string]interface{}{"deletion_allowed": true})
	r.must("delete", "keys/"+de, nil)

	r.create(pk, map[string]interface{}{"type": "ecdsa-p384", "description": "retired, left to its deletion date",
		"tags": map[string]interface{}{"env": "prod", "lifecycle": "pending"}})
	r.must("update", "sign/"+pk, map[string]interface{}{"input": b64(r.plain(pk + "/v1/sign"))})
	r.must("update", "keys/"+pk+"/deactivate", nil)
	r.must("delete", "keys/"+pk, nil)

	r.create(pp, map[string]interface{}{"type": "aes128-gcm96", "description": "purged before its date"})
	r.must("update", "encrypt/"+pp, map[string]interface{}{"plaintext": b64(r.plain(pp + "/v1"))})
	r.must("update", "keys/"+pp+"/deactivate", nil)
	r.must("delete", "keys/"+pp, nil)

	r.create(pw, map[string]interface{}{"type": "aes256-gcm96", "residency": "wrapped", "description": "wrapped, pending, backed up",
		"tags": map[string]interface{}{"lifecycle": "pending"}})
	pwPlain := r.plain(pw + "/v1/encrypt/for-restore")
	pwCT := str(r.must("update", "encrypt/"+pw, map[string]interface{}{"plaintext": b64(pwPlain)}), "ciphertext")
	r.must("update", "keys/"+pw+"/deactivate", nil)
	r.must("delete", "keys/"+pw, nil)
	pwBackup := str(r.must("read", "backup/"+pw, nil), "backup")

	// Pending, as stored.
	pendingFields := append([]string{"deletion_date"}, keyFields...)
	for _, k := range []string{da, de, pk, pp, pw} {
		got := r.readCheck("deletion", k, k+"/read/pending", pendingFields...)
		if got["state"] != "pending_deletion" {
			log.Fatalf("%s after DELETE: state %v", k, got["state"])
		}
	}
	r.readCheck("deletion", de, de+"/read/deletion_allowed", "deletion_allowed")
	if names := r.listCheck("deletion", "keys/list/state=pending_deletion", map[string]interface{}{"state": "pending_deletion"}, pendingFields...); len(names) != 5 {
		log.Fatalf("LIST state=pending_deletion: %v", names)
	}
	r.refused("deletion", da, da+"/pending/encrypt", "encrypt/"+da, map[string]interface{}{"plaintext": b64(r.plain("refused"))})
	r.refused("deletion", da, da+"/pending/decrypt", "decrypt/"+da, map[string]interface{}{"ciphertext": firstCT})
	r.refused("deletion", da, da+"/pending/datakey", "datakey/plaintext/"+da, nil)
	r.refused("deletion", da, da+"/pending/hmac", "hmac/"+da, map[string]interface{}{"input": b64(r.plain("refused"))})
	r.refused("deletion", da, da+"/pending/rotate", "keys/"+da+"/rotate", nil)
	r.refused("deletion", da, da+"/pending/activate", "keys/"+da+"/activate", nil)
	r.refused("deletion", da, da+"/pending/create", "keys/"+da, map[string]interface{}{"type": "aes256-gcm96"})
	r.refused("deletion", de, de+"/pending/sign", "sign/"+de, map[string]interface{}{"input": b64(r.plain("refused"))})
	r.refused("deletion", de, de+"/pending/verify", "verify/"+de, deValues[0].data)
	r.refused("deletion", de, de+"/pending/create", "keys/"+de, map[string]interface{}{"type": "ecdsa-p256"})
	r.refused("deletion", pk, pk+"/pending/sign", "sign/"+pk, map[string]interface{}{"input": b64(r.plain("refused"))})
	r.refused("deletion", pk, pk+"/pending/create", "keys/"+pk, map[string]interface{}{"type": "aes256-gcm96"})
	r.refused("deletion", pw, pw+"/pending/decrypt", "decrypt/"+pw, map[string]interface{}{"ciphertext": pwCT})
	r.refused("deletion", pw, pw+"/pending/restore-over", "restore/"+pw, map[string]interface{}{"backup": pwBackup, "force": true})

	// A backup of a pending key comes back pending, and cancels as one.
	r.add(check{ID: rp + "/restore", Group: "restore", Key: rp, Path: "restore/" + rp, Data: map[string]interface{}{"backup": pwBackup}})
	pwRead := r.must("read", "keys/"+pw, nil)
	r.add(check{ID: rp + "/read/pending", Group: "restore", Key: rp, Operation: "read", Path: "keys/" + rp, Expect: pick(pwRead, pendingFields...)})
	r.add(check{ID: rp + "/cancel_deletion", Group: "restore", Key: rp, Path: "keys/" + rp + "/cancel_deletion", Expect: map[string]interface{}{"state": "deactivated"}})
	r.add(check{ID: rp + "/activate", Group: "restore", Key: rp, Path: "keys/" + rp + "/activate"})
	r.add(check{ID: rp + "/v1/decrypt", Group: "restore", Key: rp, Path: "decrypt/" + rp,
		Data: map[string]interface{}{"ciphertext": pwCT}, Expect: map[string]interface{}{"plaintext": b64(pwPlain)}})

	// Cancelled: deactivated, refusing until activated, then every old
	// value works.
	for _, c := range []struct {
		key    string
		values []kept
	}{{da, daValues}, {de, deValues}} {
		r.add(check{ID: c.key + "/cancel_deletion", Group: "deletion", Key: c.key, Path: "keys/" + c.key + "/cancel_deletion",
			Expect: map[string]interface{}{"state": "deactivated"}})
		r.add(check{ID: c.key + "/cancelled/still-deactivated", Group: "deletion", Key: c.key, Path: c.values[0].path,
			Data: c.values[0].data, ExpectStatus: 400})
		r.add(check{ID: c.key + "/activate", Group: "deletion", Key: c.key, Path: "keys/" + c.key + "/activate"})
		r.addKept(c.key, c.values)
		r.add(check{ID: c.key + "/read/active-again", Group: "deletion", Key: c.key, Operation: "read", Path: "keys/" + c.key,
			Expect: map[string]interface{}{"state": "active", "tags": map[string]interface{}{"lifecycle": "cancelled"}}})
	}

	// Purged before its date: gone, and its name free again.
	r.add(check{ID: pp + "/purge", Group: "deletion", Key: pp, Path: "purge/" + pp})
	r.add(check{ID: pp + "/purged/read", Group: "deletion", Key: pp, Operation: "read", Path: "keys/" + pp, ExpectStatus: 404})
	r.add(check{ID: pp + "/purged/create-again", Group: "deletion", Key: pp, Path: "keys/" + pp, Data: map[string]interface{}{"type": "aes128-gcm96"}})
	r.add(check{ID: pp + "/purged/encrypt-again", Group: "deletion", Key: pp, Path: "encrypt/" + pp, Data: map[string]interface{}{"plaintext": b64(r.plain(pp + "/v1-again"))}})
}

// usageKeys makes keys whose usage is known: every counted operation over
// two versions, and one key never used. A backup taken now carries the
// usage of its key.
func usageKeys(r *recorder) {
	const ua, ue, un, uw = "usage-aes256", "usage-ecdsa-p256", "usage-never-aes256", "usage-wrapped-aes256"
	tags := map[string]interface{}{"purpose": "usage"}
	r.create(ua, map[string]interface{}{"type": "aes256-gcm96", "tags": tags})
	r.encryptAll(ua, ua+"/v1", 0)
	ct := r.encrypt(ua, ua+"/v1/encrypt/to-rewrap", 0, r.plain(ua+"/v1/encrypt/to-rewrap"), binding{})
	r.datakeys(ua, ua+"/v1")
	r.hmac(ua, ua+"/v1/hmac/sha2-256", 1, "sha2-256")
	r.must("update", "decrypt/"+ua, map[string]interface{}{"ciphertext": ct})
	r.rotate(ua)
	r.rewrap(ua, ua+"/v2/rewrapped-from-v1", ct, r.plain(ua+"/v1/encrypt/to-rewrap"), binding{})
	r.encryptAll(ua, ua+"/v2", 0)
	r.batchEncrypt(ua, ua+"/v2/batch")

	r.create(ue, map[string]interface{}{"type": "ecdsa-p256", "tags": tags})
	r.signAll(ue, ue+"/v1", 0, ecVariants(256)[:3])
	r.batchSign(ue, ue+"/v1/sign/batch", map[string]interface{}{})
	sig := str(r.must("update", "sign/"+ue, map[string]interface{}{"input": b64(r.plain(ue + "/verify"))}), "signature")
	r.must("update", "verify/"+ue, map[string]interface{}{"input": b64(r.plain(ue + "/verify")), "signature": sig})

	r.create(un, map[string]interface{}{"type": "aes256-gcm96", "tags": tags})

	r.create(uw, map[string]interface{}{"type": "aes256-gcm96", "residency": "wrapped", "description": "backed up with its usage",
		"tags": map[string]interface{}{"purpose": "backup", "env": "qa"}})
	r.encryptAll(uw, uw+"/v1", 0)
	want := pick(r.must("read", "keys/"+uw, nil), "description", "tags", "usage")
	backup := str(r.must("read", "backup/"+uw, nil), "backup")
	ruw := "restored-" + uw
	r.add(check{ID: ruw + "/restore", Group: "restore", Key: ruw, Path: "restore/" + ruw, Data: map[string]interface{}{"backup": backup}})
	r.add(check{ID: ruw + "/read/tags-and-usage", Group: "restore", Key: ruw, Operation: "read", Path: "keys/" + ruw, Expect: want})
	id := uw + "/v1/encrypt/none"
	out := r.must("update", "encrypt/"+uw, map[string]interface{}{"plaintext": b64(r.plain(id + "/restored"))})
	r.add(check{ID: ruw + "/v1/decrypt", Group: "restore", Key: ruw, Path: "decrypt/" + ruw,
		Data: map[string]interface{}{"ciphertext": str(out, "ciphertext")}, Expect: map[string]interface{}{"plaintext": b64(r.plain(id + "/restored"))}})
}

// storedUsage records, once every value is made, the usage reads and
// LIST key_info show, and the keys by state: what the shutdown flushes to
// usage/<name> and the replay reads before any of its requests counts.
func storedUsage(r *recorder) {
	for _, k := range []string{"usage-aes256", "usage-ecdsa-p256", "usage-never-aes256", "pending-kept-ecdsa-p384", "tagged-aes256", "deleted-aes256"} {
		got := r.readCheck("usage", k, k+"/read/usage", "usage")
		u, _ := got["usage"].(map[string]interface{})
		ops, _ := u["operations"].(map[string]interface{})
		used := false
		for _, n := range ops {
			used = used || fmt.Sprint(n) != "0"
		}
		if used != (k != "usage-never-aes256") {
			log.Fatalf("%s: usage %v", k, u)
		}
	}
	if names := r.listCheck("usage", "keys/list/tag=purpose=usage", map[string]interface{}{"tag": "purpose=usage"}, "last_used"); len(names) != 3 {
		log.Fatalf("LIST tag=purpose=usage: %v", names)
	}
	// Unused for a century: only the key never used, if last_used is read.
	if names := r.listCheck("usage", "keys/list/unused_for", map[string]interface{}{"tag": "purpose=usage", "unused_for": "876000h"}, "last_used"); !sameNames(names, "usage-never-aes256") {
		log.Fatalf("LIST unused_for=876000h: %v", names)
	}
	st := r.must("read", "status", nil)
	keys, _ := st["keys"].(map[string]interface{})
	r.add(check{ID: "status/keys", Group: "status", Key: "status", Operation: "read", Path: "status",
		Expect: map[string]interface{}{"keys": pick(keys, "by_state", "by_residency", "total")}})
}
