// Command compatgen writes the compatibility fixture of commit 877b1fb,
// the first release: every key type it has (AES, RSA, ECDSA, HMAC; all
// with residency hsm), rotations, and the values made with them. That
// release has no wrapped keys, KEK, import, adopt or Ed25519.
//
// It is built inside a `git archive 877b1fb` as cmd/compatgen; run it
// through testdata/compat/regen.sh 877b1fb.
package main

import (
	"crypto"
	_ "crypto/sha256" // registers SHA-256 for crypto.Hash.New
	_ "crypto/sha512" // registers SHA-384 and SHA-512 for crypto.Hash.New
	"fmt"
)

func main() {
	run(spec{
		Commit:      "877b1fb",
		BackendUUID: "5e0c0a7f-877b-41fb-8000-000000000001",
		Populate:    populate,
	})
}

// The hashes sign and verify take at this commit.
var signHashes = []string{"sha2-256", "sha2-384", "sha2-512"}

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
		{name: "prehashed-sha2-512", fields: map[string]interface{}{"prehashed": true, "hash_algorithm": "sha2-512"}, digest: digest(crypto.SHA512)},
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

var (
	aesBits   = []int{128, 192, 256}
	rsaBits   = []int{2048, 3072, 4096}
	ecCurves  = []int{256, 384, 521}
	hmacAlgos = []string{"sha2-256", "sha2-384", "sha2-512"}
)

func populate(r *recorder) {
	r.encryptAll("default", "default/v1", 0)
	r.datakeys("default", "default/v1")

	for _, bits := range aesBits {
		k := fmt.Sprintf("aes%d", bits)
		r.create(k, map[string]interface{}{"type": k + "-gcm96"})
		r.encryptAll(k, k+"/v1", 0)
		r.batchEncrypt(k, k+"/v1/batch")
		r.datakeys(k, k+"/v1")
	}
	// A 4096-byte plaintext: max_plaintext_bytes.
	big := make([]byte, 4096)
	for i := range big {
		big[i] = byte(i)
	}
	r.encrypt("aes256", "aes256/v1/encrypt/4096-bytes", 0, big, binding{})
	v1 := r.encrypt("aes256", "aes256/v1/encrypt/to-rewrap", 0, r.plain("aes256/v1/encrypt/to-rewrap"), binding{Context: "rw"})
	dk := r.datakey("aes256", "aes256/v1/datakey/to-rewrap", "plaintext", 256, binding{})
	dkPlain := str(r.must("update", "decrypt/aes256", map[string]interface{}{"ciphertext": dk}), "plaintext")
	r.rotate("aes256")
	r.encryptAll("aes256", "aes256/v2", 0)
	r.encrypt("aes256", "aes256/v1/encrypt/key_version-1", 1, r.plain("aes256/v1/encrypt/key_version-1"), binding{})
	r.rewrap("aes256", "aes256/v2/rewrapped-from-v1", v1, r.plain("aes256/v1/encrypt/to-rewrap"), binding{Context: "rw"})
	r.datakeys("aes256", "aes256/v2")
	rw := str(r.must("update", "rewrap/aes256", map[string]interface{}{"ciphertext": dk}), "ciphertext")
	r.add(check{ID: "aes256/v2/datakey/rewrapped-from-v1/via-decrypt", Group: "datakey-via-decrypt", Key: "aes256", Path: "decrypt/aes256",
		Data: map[string]interface{}{"ciphertext": rw}, Expect: map[string]interface{}{"plaintext": dkPlain}})
	r.add(check{ID: "aes256/v2/datakey/rewrapped-from-v1/via-datakey-decrypt", Group: "datakey-decrypt", Key: "aes256", Path: "datakey/decrypt/aes256",
		Data: map[string]interface{}{"ciphertext": rw}, Expect: map[string]interface{}{"plaintext": dkPlain}})

	// Transit's names default to sign and verify at this commit; RSA
	// encryption must be asked for.
	rsaOps := "sign,verify,encrypt,decrypt"
	for _, bits := range rsaBits {
		k := fmt.Sprintf("rsa-%d", bits)
		r.create(k, map[string]interface{}{"type": k, "operations": rsaOps})
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
	// The seeds' JWK form: an RSA key that only signs.
	r.create("rsa-2048-jwk-form", map[string]interface{}{"type": "RSA", "size": 2048})
	r.signAll("rsa-2048-jwk-form", "rsa-2048-jwk-form/v1", 0, rsaVariants()[:2])

	for _, c := range ecCurves {
		k := fmt.Sprintf("ecdsa-p%d", c)
		r.create(k, map[string]interface{}{"type": k})
		r.signAll(k, k+"/v1", 0, ecVariants(c))
		r.batchSign(k, k+"/v1/sign/batch", map[string]interface{}{"marshaling_algorithm": "jws"})
	}
	r.rotate("ecdsa-p256")
	r.signAll("ecdsa-p256", "ecdsa-p256/v2", 0, ecVariants(256)[:2])
	r.sign("ecdsa-p256", "ecdsa-p256/v1/sign/key_version-1", 1, ecVariants(256)[0])

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

	r.stateKeys()

	for _, k := range []string{"rsa-2048", "rsa-3072", "rsa-4096", "rsa-2048-jwk-form", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"} {
		r.publicKeys(k)
	}
}
