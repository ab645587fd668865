// Helpers that make one value through Transit's grammar (encrypt, datakey,
// sign, hmac, export) and record the request that checks it. Shared by the
// generators of every commit that speaks this grammar; copy it with
// record.go.
package main

import (
	"encoding/base64"
	"log"
	"strconv"
)

// binding is the context a ciphertext is bound to.
type binding struct {
	Context           string // plain text; sent base64
	AssociatedData    string // plain text; sent base64
	EncryptionContext map[string]string
}

func (b binding) fields() map[string]interface{} {
	f := map[string]interface{}{}
	if b.Context != "" {
		f["context"] = b64([]byte(b.Context))
	}
	if b.AssociatedData != "" {
		f["associated_data"] = b64([]byte(b.AssociatedData))
	}
	if len(b.EncryptionContext) > 0 {
		ec := map[string]interface{}{}
		for k, v := range b.EncryptionContext {
			ec[k] = v
		}
		f["encryption_context"] = ec
	}
	return f
}

// bindings are the ways a ciphertext can be bound, each named for check ids.
var bindings = []struct {
	name string
	b    binding
}{
	{"none", binding{}},
	{"context", binding{Context: "tenant-7"}},
	{"associated_data", binding{AssociatedData: "record 42 header"}},
	{"encryption_context", binding{EncryptionContext: map[string]string{"tenant": "acme", "purpose": "compat"}}},
	{"all", binding{Context: "ctx", AssociatedData: "ad", EncryptionContext: map[string]string{"z": "last", "a": "first"}}},
}

func with(base map[string]interface{}, more map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range more {
		out[k] = v
	}
	return out
}

func str(m map[string]interface{}, field string) string {
	s, ok := m[field].(string)
	if !ok || s == "" {
		log.Fatalf("answer has no %s: %v", field, m)
	}
	return s
}

// encrypt makes a ciphertext of key (version 0: the latest) and records
// the decrypt that opens it.
func (r *recorder) encrypt(key, id string, version int, plaintext []byte, b binding) string {
	data := with(b.fields(), map[string]interface{}{"plaintext": b64(plaintext)})
	if version != 0 {
		data["key_version"] = version
	}
	ct := str(r.must("update", "encrypt/"+key, data), "ciphertext")
	r.add(check{ID: id, Group: "decrypt", Key: key, Path: "decrypt/" + key,
		Data:   with(b.fields(), map[string]interface{}{"ciphertext": ct}),
		Expect: map[string]interface{}{"plaintext": b64(plaintext)}})
	return ct
}

// encryptAll records one ciphertext per binding.
func (r *recorder) encryptAll(key, prefix string, version int) {
	for _, bd := range bindings {
		id := prefix + "/encrypt/" + bd.name
		r.encrypt(key, id, version, r.plain(id), bd.b)
	}
}

// batchEncrypt encrypts one item per binding in one request and records
// one batch decrypt of them all.
func (r *recorder) batchEncrypt(key, id string) {
	var in, dec, want []interface{}
	for i, bd := range bindings {
		p := r.plain(id + "/" + strconv.Itoa(i))
		in = append(in, with(bd.b.fields(), map[string]interface{}{"plaintext": b64(p), "reference": bd.name}))
		want = append(want, map[string]interface{}{"plaintext": b64(p)})
	}
	res, ok := r.must("update", "encrypt/"+key, map[string]interface{}{"batch_input": in})["batch_results"].([]interface{})
	if !ok || len(res) != len(in) {
		log.Fatalf("%s: batch encrypt answered %v", id, res)
	}
	for i, bd := range bindings {
		ct := str(res[i].(map[string]interface{}), "ciphertext")
		dec = append(dec, with(bd.b.fields(), map[string]interface{}{"ciphertext": ct, "reference": bd.name}))
	}
	r.add(check{ID: id, Group: "decrypt", Key: key, Path: "decrypt/" + key,
		Data: map[string]interface{}{"batch_input": dec}, Expect: map[string]interface{}{"batch_results": want}})
}

// rewrap moves a ciphertext to the key's latest version and records it.
func (r *recorder) rewrap(key, id string, ciphertext string, plaintext []byte, b binding) {
	ct := str(r.must("update", "rewrap/"+key, with(b.fields(), map[string]interface{}{"ciphertext": ciphertext})), "ciphertext")
	r.add(check{ID: id, Group: "decrypt", Key: key, Path: "decrypt/" + key,
		Data:   with(b.fields(), map[string]interface{}{"ciphertext": ct}),
		Expect: map[string]interface{}{"plaintext": b64(plaintext)}})
}

// datakey makes a data key (kind plaintext or wrapped) and records that
// both decrypt/:name and datakey/decrypt/:name return its plaintext. A
// wrapped data key's plaintext is learnt from decrypt.
func (r *recorder) datakey(key, id, kind string, bits int, b binding) string {
	out := r.must("update", "datakey/"+kind+"/"+key, with(b.fields(), map[string]interface{}{"bits": bits}))
	ct := str(out, "ciphertext")
	var plain string
	if kind == "plaintext" {
		plain = str(out, "plaintext")
	} else {
		plain = str(r.must("update", "decrypt/"+key, with(b.fields(), map[string]interface{}{"ciphertext": ct})), "plaintext")
	}
	if raw, err := base64.StdEncoding.DecodeString(plain); err != nil || len(raw)*8 != bits {
		log.Fatalf("%s: data key of %d bytes, want %d bits", id, len(raw), bits)
	}
	data := with(b.fields(), map[string]interface{}{"ciphertext": ct})
	want := map[string]interface{}{"plaintext": plain}
	r.add(check{ID: id + "/via-decrypt", Group: "datakey-via-decrypt", Key: key, Path: "decrypt/" + key, Data: data, Expect: want})
	r.add(check{ID: id + "/via-datakey-decrypt", Group: "datakey-decrypt", Key: key, Path: "datakey/decrypt/" + key, Data: data, Expect: want})
	return ct
}

// datakeys records the usual spread of data keys for an AES key.
func (r *recorder) datakeys(key, prefix string) {
	r.datakey(key, prefix+"/datakey/plaintext-256", "plaintext", 256, binding{})
	r.datakey(key, prefix+"/datakey/plaintext-128-context", "plaintext", 128, binding{Context: "dk-context"})
	r.datakey(key, prefix+"/datakey/wrapped-256-encryption_context", "wrapped", 256, binding{EncryptionContext: map[string]string{"app": "compat"}})
	r.datakey(key, prefix+"/datakey/wrapped-512-associated_data", "wrapped", 512, binding{AssociatedData: "dk-ad"})
}

// rsaEncrypt makes an RSA ciphertext with padding (oaep or pkcs1v15) and
// records its decrypt.
func (r *recorder) rsaEncrypt(key, id string, version int, padding string) string {
	p := r.plain(id)
	data := map[string]interface{}{"plaintext": b64(p), "padding_scheme": padding}
	if version != 0 {
		data["key_version"] = version
	}
	ct := str(r.must("update", "encrypt/"+key, data), "ciphertext")
	r.add(check{ID: id, Group: "rsa-decrypt", Key: key, Path: "decrypt/" + key,
		Data:   map[string]interface{}{"ciphertext": ct, "padding_scheme": padding},
		Expect: map[string]interface{}{"plaintext": b64(p)}})
	return ct
}

// signVariant is one way of signing: request fields, an optional hash in
// the URL, and the digest to sign instead of the input when prehashed.
type signVariant struct {
	name    string
	fields  map[string]interface{}
	urlHash string
	digest  func([]byte) []byte // prehashed: the input becomes digest(message)
}

// sign signs with one variant (version 0: the latest) and records the
// verify, with the same options, that says valid.
func (r *recorder) sign(key, id string, version int, v signVariant) {
	input := r.plain(id)
	if v.digest != nil {
		input = v.digest(input)
	}
	suffix := ""
	if v.urlHash != "" {
		suffix = "/" + v.urlHash
	}
	data := with(v.fields, map[string]interface{}{"input": b64(input)})
	if version != 0 {
		data["key_version"] = version
	}
	sig := str(r.must("update", "sign/"+key+suffix, data), "signature")
	r.add(check{ID: id, Group: "verify", Key: key, Path: "verify/" + key + suffix,
		Data:   with(v.fields, map[string]interface{}{"input": b64(input), "signature": sig}),
		Expect: map[string]interface{}{"valid": true}})
}

// batchSign signs three inputs in one request and records one batch
// verify.
func (r *recorder) batchSign(key, id string, fields map[string]interface{}) {
	var in, ver, want []interface{}
	for i := 0; i < 3; i++ {
		in = append(in, map[string]interface{}{"input": b64(r.plain(id + "/" + strconv.Itoa(i)))})
	}
	res, ok := r.must("update", "sign/"+key, with(fields, map[string]interface{}{"batch_input": in}))["batch_results"].([]interface{})
	if !ok || len(res) != len(in) {
		log.Fatalf("%s: batch sign answered %v", id, res)
	}
	for i := range in {
		sig := str(res[i].(map[string]interface{}), "signature")
		ver = append(ver, map[string]interface{}{"input": b64(r.plain(id + "/" + strconv.Itoa(i))), "signature": sig})
		want = append(want, map[string]interface{}{"valid": true})
	}
	r.add(check{ID: id, Group: "verify", Key: key, Path: "verify/" + key,
		Data: with(fields, map[string]interface{}{"batch_input": ver}), Expect: map[string]interface{}{"batch_results": want}})
}

// hmac computes an HMAC with an explicit version and records two checks:
// the same request gives the same HMAC, and verify says it is valid.
func (r *recorder) hmac(key, id string, version int, algorithm string) {
	input := b64(r.plain(id))
	data := map[string]interface{}{"input": input, "key_version": version}
	mac := str(r.must("update", "hmac/"+key+"/"+algorithm, data), "hmac")
	r.add(check{ID: id, Group: "hmac", Key: key, Path: "hmac/" + key + "/" + algorithm, Data: data,
		Expect: map[string]interface{}{"hmac": mac}})
	r.add(check{ID: id + "/verify", Group: "hmac-verify", Key: key, Path: "verify/" + key + "/" + algorithm,
		Data: map[string]interface{}{"input": input, "hmac": mac}, Expect: map[string]interface{}{"valid": true}})
}

// batchHMAC computes three HMACs in one request (latest version, default
// algorithm) and records the batch recomputation and batch verify.
func (r *recorder) batchHMAC(key, id string, version int) {
	var in, ver, macs, valid []interface{}
	for i := 0; i < 3; i++ {
		in = append(in, map[string]interface{}{"input": b64(r.plain(id + "/" + strconv.Itoa(i))), "key_version": version})
	}
	res, ok := r.must("update", "hmac/"+key, map[string]interface{}{"batch_input": in})["batch_results"].([]interface{})
	if !ok || len(res) != len(in) {
		log.Fatalf("%s: batch hmac answered %v", id, res)
	}
	for i := range in {
		mac := str(res[i].(map[string]interface{}), "hmac")
		ver = append(ver, map[string]interface{}{"input": in[i].(map[string]interface{})["input"], "hmac": mac})
		macs = append(macs, map[string]interface{}{"hmac": mac})
		valid = append(valid, map[string]interface{}{"valid": true})
	}
	r.add(check{ID: id, Group: "hmac", Key: key, Path: "hmac/" + key,
		Data: map[string]interface{}{"batch_input": in}, Expect: map[string]interface{}{"batch_results": macs}})
	r.add(check{ID: id + "/verify", Group: "hmac-verify", Key: key, Path: "verify/" + key,
		Data: map[string]interface{}{"batch_input": ver}, Expect: map[string]interface{}{"batch_results": valid}})
}

// publicKeys records the key's exported public keys (Transit's map of
// version to PEM).
func (r *recorder) publicKeys(key string) {
	out := r.must("read", "export/public-key/"+key, nil)
	keys, ok := out["keys"].(map[string]interface{})
	if !ok || len(keys) == 0 {
		log.Fatalf("export/public-key/%s answered %v", key, out)
	}
	r.add(check{ID: key + "/export/public-key", Group: "public-key", Key: key, Operation: "read",
		Path: "export/public-key/" + key, Expect: map[string]interface{}{"keys": keys}})
}

// create makes a key and fails the generator if it cannot.
func (r *recorder) create(name string, fields map[string]interface{}) {
	r.must("update", "keys/"+name, fields)
}

func (r *recorder) rotate(name string) {
	r.must("update", "keys/"+name+"/rotate", nil)
}

// refused records a request the plugin must refuse with a 400 (checked
// now, with the plugin that made the fixture).
func (r *recorder) refused(group, key, id, path string, data map[string]interface{}) {
	if _, status, msg := r.do("update", path, data); status != 400 {
		log.Fatalf("%s: %s answered HTTP %d (%s), want 400", id, path, status, msg)
	}
	r.add(check{ID: id, Group: group, Key: key, Path: path, Data: data, ExpectStatus: 400})
}

// stateKeys records that the key state in storage is honoured: a version
// below min_decryption_version is refused while the next one decrypts,
// and a deactivated key refuses until activated, then decrypts.
func (r *recorder) stateKeys() {
	const k = "min-decryption-version"
	r.create(k, map[string]interface{}{"type": "aes256-gcm96"})
	old := str(r.must("update", "encrypt/"+k, map[string]interface{}{"plaintext": b64(r.plain(k + "/v1"))}), "ciphertext")
	r.rotate(k)
	r.encrypt(k, k+"/v2/encrypt/none", 0, r.plain(k+"/v2/encrypt/none"), binding{})
	r.must("update", "keys/"+k+"/config", map[string]interface{}{"min_decryption_version": 2})
	r.refused("key-state", k, k+"/v1/below-min_decryption_version", "decrypt/"+k, map[string]interface{}{"ciphertext": old})

	const d = "deactivated"
	r.create(d, map[string]interface{}{"type": "aes256-gcm96"})
	p := r.plain(d + "/v1")
	ct := str(r.must("update", "encrypt/"+d, map[string]interface{}{"plaintext": b64(p)}), "ciphertext")
	r.must("update", "keys/"+d+"/deactivate", nil)
	r.refused("key-state", d, d+"/v1/while-deactivated", "decrypt/"+d, map[string]interface{}{"ciphertext": ct})
	r.add(check{ID: d + "/activate", Group: "key-state", Key: d, Path: "keys/" + d + "/activate"})
	r.add(check{ID: d + "/v1/after-activate", Group: "key-state", Key: d, Path: "decrypt/" + d,
		Data: map[string]interface{}{"ciphertext": ct}, Expect: map[string]interface{}{"plaintext": b64(p)}})
}
