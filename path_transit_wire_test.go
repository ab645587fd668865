package hsmkms

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"

	"github.com/hashicorp/vault/sdk/logical"
)

// Transit encrypts an empty plaintext, and decrypts it back to "" (its
// batch items carry plaintext even when empty); a missing one is a 400.
func TestEmptyPlaintextAsInTransit(t *testing.T) {
	for _, tok := range []string{"softhsm2", "nss"} {
		t.Run(tok, func(t *testing.T) {
			m := configuredMount(t, nil)
			if tok == "nss" {
				m = nssMount(t)
			}
			m.mustOK(logical.UpdateOperation, "keys/rsa", map[string]interface{}{"type": "rsa-2048"})
			for _, key := range []string{"default", "rsa"} {
				ct := m.mustOK(logical.UpdateOperation, "encrypt/"+key, map[string]interface{}{"plaintext": ""}).Data["ciphertext"].(string)
				if got := m.mustOK(logical.UpdateOperation, "decrypt/"+key, map[string]interface{}{"ciphertext": ct}).Data["plaintext"]; got != "" {
					t.Fatalf("%s: decrypted %q", key, got)
				}
				batch := m.mustOK(logical.UpdateOperation, "decrypt/"+key, map[string]interface{}{"batch_input": []interface{}{map[string]interface{}{"ciphertext": ct}}})
				item := batch.Data["batch_results"].([]map[string]interface{})[0]
				if p, ok := item["plaintext"]; !ok || p != "" {
					t.Fatalf("%s: batch item %v has no empty plaintext", key, item)
				}
				m.mustFail(logical.UpdateOperation, "encrypt/"+key, map[string]interface{}{"key_version": 1}, "missing plaintext")
			}
		})
	}
}

// Keys made with Transit's RSA type names get Transit's operations, so that
// Transit clients (vault-benchmark) can encrypt with them; the seeds' form
// keeps the seeds' defaults.
func TestTransitRSATypeNamesGetTransitOperations(t *testing.T) {
	m := configuredMount(t, nil)
	transit := m.mustOK(logical.UpdateOperation, "keys/transit-rsa", map[string]interface{}{"type": "rsa-2048"})
	if ops := dump(transit.Data["operations"]); ops != "[sign verify encrypt decrypt]" {
		t.Fatalf("rsa-2048: operations %s", ops)
	}
	m.mustOK(logical.UpdateOperation, "encrypt/transit-rsa", map[string]interface{}{"plaintext": "aGk="})
	seeds := m.mustOK(logical.UpdateOperation, "keys/seeds-rsa", map[string]interface{}{"type": "RSA", "size": 2048})
	if ops := dump(seeds.Data["operations"]); ops != "[sign verify]" {
		t.Fatalf("type=RSA: operations %s", ops)
	}
}

// Transit answers a rewrap batch 200, each failure in its item.
func TestBatchRewrapAnswers200WithItemErrors(t *testing.T) {
	m := configuredMount(t, nil)
	ct := m.mustOK(logical.UpdateOperation, "encrypt/default", map[string]interface{}{"plaintext": "aGk="}).Data["ciphertext"]
	resp, err := m.do(logical.UpdateOperation, "rewrap/default", map[string]interface{}{"batch_input": []interface{}{
		map[string]interface{}{"ciphertext": ct}, map[string]interface{}{"ciphertext": "vault:v1:AAAA"},
	}})
	if err != nil || resp == nil || resp.IsError() {
		t.Fatalf("rewrap batch: %v %v", err, resp)
	}
	if _, raw := resp.Data[logical.HTTPStatusCode]; raw {
		t.Fatalf("rewrap batch carries a status code: %v", resp.Data)
	}
	results := batchResultsOf(t, resp)
	if results[0].Error != "" || results[0].Ciphertext == "" || results[1].Error == "" {
		t.Fatalf("results: %+v", results)
	}
}

// The Terraform provider writes min_decryption_version=0 for "unset";
// Transit takes it as 1 and says so.
func TestMinDecryptionVersionZeroIsOne(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	m.mustOK(logical.UpdateOperation, "keys/k/rotate", nil)
	resp := m.mustOK(logical.UpdateOperation, "keys/k/config", map[string]interface{}{"min_decryption_version": 0})
	if resp.Data["min_decryption_version"] != 1 || len(resp.Warnings) != 1 {
		t.Fatalf("min_decryption_version 0: %v, warnings %v", resp.Data["min_decryption_version"], resp.Warnings)
	}
}

// Encrypt on a missing key is a create (Vault asks the existence check),
// which makes the key unless config/keys disables upsert.
func TestEncryptUpsertsAsTransit(t *testing.T) {
	m := configuredMount(t, nil)
	exists, err := m.b.keyExists(context.Background(), &logical.Request{Storage: m.storage}, &framework.FieldData{
		Raw: map[string]interface{}{"name": "fresh"}, Schema: map[string]*framework.FieldSchema{"name": nameField}})
	if err != nil || exists {
		t.Fatalf("existence check of a missing key: %v %v", exists, err)
	}
	resp := m.mustOK(logical.CreateOperation, "encrypt/fresh", map[string]interface{}{"plaintext": "aGk="})
	if resp.Data["ciphertext"] == nil {
		t.Fatalf("upsert encrypt: %v", resp.Data)
	}
	if typ := m.mustOK(logical.ReadOperation, "keys/fresh", nil).Data["type"]; typ != keyring.DefaultType {
		t.Fatalf("upserted key type %v", typ)
	}
	m.mustOK(logical.CreateOperation, "encrypt/fresh128", map[string]interface{}{"plaintext": "aGk=", "type": "aes128-gcm96"})
	if typ := m.mustOK(logical.ReadOperation, "keys/fresh128", nil).Data["type"]; typ != "aes128-gcm96" {
		t.Fatalf("upserted key type %v", typ)
	}
	m.mustOK(logical.UpdateOperation, "config/keys", map[string]interface{}{"disable_upsert": true})
	m.mustFail(logical.CreateOperation, "encrypt/other", map[string]interface{}{"plaintext": "aGk="}, "upsert is disabled")
	if r, _ := m.do(logical.ReadOperation, "keys/other", nil); r != nil {
		t.Fatal("a refused upsert made a key")
	}
}

// Transit's flags the plugin cannot honour are refused, never ignored.
func TestTransitFlagsThatCannotBeHonouredAreRefused(t *testing.T) {
	m := configuredMount(t, nil)
	for _, flag := range []string{"exportable", "derived", "convergent_encryption", "allow_plaintext_backup"} {
		m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{flag: true}, flag+"=true is not supported")
		m.mustOK(logical.UpdateOperation, "keys/k", map[string]interface{}{flag: false})
	}
	for _, flag := range []string{"exportable", "allow_plaintext_backup"} {
		m.mustFail(logical.UpdateOperation, "keys/k/config", map[string]interface{}{flag: true}, flag+"=true is not supported")
		m.mustOK(logical.UpdateOperation, "keys/k/config", map[string]interface{}{flag: false})
	}
	m.mustOK(logical.UpdateOperation, "keys/mac", map[string]interface{}{"type": "hmac", "key_size": 64})
	if bits := m.b.mustKey(t, m.storage, "mac").KeyType().Bits; bits != 512 {
		t.Fatalf("key_size 64 bytes gave %d bits", bits)
	}
}

func (b *backend) mustKey(t *testing.T, s logical.Storage, name string) *keyring.Entry {
	t.Helper()
	k, err := keyring.Load(context.Background(), s, name)
	if err != nil || k == nil {
		t.Fatalf("key %q: %v", name, err)
	}
	return k
}

// Transit's other hash_algorithm values: hashed by the plugin, signed over
// the digest by the HSM; sha1 verifies only.
func TestSignWithEveryTransitHash(t *testing.T) {
	for _, tok := range []string{"softhsm2", "nss"} {
		t.Run(tok, func(t *testing.T) {
			m := configuredMount(t, nil)
			if tok == "nss" {
				m = nssMount(t)
			}
			m.mustOK(logical.UpdateOperation, "keys/rsa", map[string]interface{}{"type": "rsa-2048"})
			m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p256"})
			input := "aGVsbG8="
			for _, h := range []string{"sha2-224", "sha3-224", "sha3-256", "sha3-384", "sha3-512"} {
				for _, c := range []struct{ key, scheme string }{{"ec", ""}, {"rsa", "pkcs1v15"}, {"rsa", "pss"}} {
					data := map[string]interface{}{"input": input, "hash_algorithm": h}
					if c.scheme != "" {
						data["signature_algorithm"] = c.scheme
					}
					resp, err := m.do(logical.UpdateOperation, "sign/"+c.key, data)
					if err != nil || resp == nil || resp.IsError() {
						t.Fatalf("sign %s %s %s: %v %v", c.key, h, c.scheme, err, respError(resp))
					}
					data["signature"] = resp.Data["signature"]
					if v := m.mustOK(logical.UpdateOperation, "verify/"+c.key, data).Data["valid"]; v != true {
						t.Fatalf("verify %s %s %s: %v", c.key, h, c.scheme, v)
					}
				}
			}
			m.mustFail(logical.UpdateOperation, "sign/ec", map[string]interface{}{"input": input, "hash_algorithm": "sha1"}, "verifies old signatures only")
		})
	}
}

func TestHashTrimAndCacheConfig(t *testing.T) {
	m := configuredMount(t, nil)
	sum := m.mustOK(logical.UpdateOperation, "hash/sha3-256", map[string]interface{}{"input": "ZGF0YQ=="}).Data["sum"]
	// sha3-256("data"), as openssl dgst -sha3-256 gives it.
	if sum != "efda893aa850b0c0e61f33325615b9d93bcf6b42d60d8f5d37ebc720fd4e3daf" {
		t.Fatalf("sum %v", sum)
	}
	m.mustFail(logical.UpdateOperation, "hash/md5", map[string]interface{}{"input": "ZGF0YQ=="}, "algorithm")

	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	old := m.mustOK(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"plaintext": "aGk="}).Data["ciphertext"]
	m.mustOK(logical.UpdateOperation, "keys/k/rotate", nil)
	m.mustOK(logical.UpdateOperation, "keys/k/rotate", nil)
	m.mustFail(logical.UpdateOperation, "keys/k/trim", map[string]interface{}{"min_available_version": 2}, "min_decryption_version")
	id := m.objectID("k", 1)
	m.mustOK(logical.UpdateOperation, "keys/k/config", map[string]interface{}{"min_decryption_version": 2})
	resp := m.mustOK(logical.UpdateOperation, "keys/k/trim", map[string]interface{}{"min_available_version": 2})
	if resp.Data["min_available_version"] != 2 || len(resp.Data["keys"].(map[string]interface{})) != 2 {
		t.Fatalf("after trim: %v", resp.Data)
	}
	client, _, _ := m.b.hsmClient(context.Background(), m.storage)
	if ok, err := client.ObjectExists(context.Background(), id); err != nil || ok {
		t.Fatalf("trimmed version's object: exists=%v %v", ok, err)
	}
	m.mustFail(logical.UpdateOperation, "decrypt/k", map[string]interface{}{"ciphertext": old}, "min_decryption_version")
	m.mustFail(logical.UpdateOperation, "keys/k/trim", map[string]interface{}{"min_available_version": 1}, "below the current")

	m.mustOK(logical.UpdateOperation, "cache-config", map[string]interface{}{"size": 500})
	if size := m.mustOK(logical.ReadOperation, "cache-config", nil).Data["size"]; size != 500 {
		t.Fatalf("cache-config size %v", size)
	}
	m.mustFail(logical.UpdateOperation, "cache-config", map[string]interface{}{"size": 3}, "at least 10")
}

// hmac with an AES key, as Transit allows: each version has a companion
// generic secret in the HSM, made with the version, destroyed with it.
func TestHMACWithAESKeys(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"deletion_window": "0s"})
	m.mustOK(logical.UpdateOperation, "keys/aes", nil)
	input := map[string]interface{}{"input": "aGk="}
	mac1 := m.mustOK(logical.UpdateOperation, "hmac/aes", input).Data["hmac"].(string)
	if again := m.mustOK(logical.UpdateOperation, "hmac/aes", input).Data["hmac"]; again != mac1 {
		t.Fatal("hmac is not stable")
	}
	m.mustOK(logical.UpdateOperation, "keys/aes/rotate", nil)
	mac2 := m.mustOK(logical.UpdateOperation, "hmac/aes/sha2-512", input).Data["hmac"].(string)
	if mac2[:9] != "vault:v2:" {
		t.Fatalf("hmac after rotation: %s", mac2)
	}
	for _, mac := range []string{mac1, mac2} {
		data := map[string]interface{}{"input": "aGk=", "hmac": mac}
		if mac == mac2 {
			data["algorithm"] = "sha2-512"
		}
		if v := m.mustOK(logical.UpdateOperation, "verify/aes", data).Data["valid"]; v != true {
			t.Fatalf("verify %s: %v", mac, v)
		}
	}
	k := m.b.mustKey(t, m.storage, "aes")
	companion := k.Versions[1].HMACObjectID
	if companion == nil {
		t.Fatal("version 1 has no HMAC companion")
	}
	m.mustOK(logical.UpdateOperation, "keys/aes/config", map[string]interface{}{"deletion_allowed": true})
	m.mustOK(logical.DeleteOperation, "keys/aes", nil)
	client, _, _ := m.b.hsmClient(context.Background(), m.storage)
	if ok, err := client.ObjectExists(context.Background(), companion); err != nil || ok {
		t.Fatalf("the HMAC companion survived the key: %v %v", ok, err)
	}
	m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p256"})
	m.mustFail(logical.UpdateOperation, "hmac/ec", input, "hmac needs a key of type hmac or an AES key")
}

// Ed25519 keys where the token has them (SoftHSM 2.6), as Transit shows
// them; a 400 that says so where it has not (NSS).
func TestEd25519Keys(t *testing.T) {
	m := configuredMount(t, nil)
	resp := m.mustOK(logical.UpdateOperation, "keys/ed", map[string]interface{}{"type": "ed25519"})
	v1 := resp.Data["keys"].(map[string]interface{})["1"].(map[string]interface{})
	raw, err := base64.StdEncoding.DecodeString(v1["public_key"].(string))
	if err != nil || len(raw) != ed25519.PublicKeySize || v1["name"] != "ed25519" {
		t.Fatalf("keys.1: %v", v1)
	}
	msg := []byte("message")
	sig := m.mustOK(logical.UpdateOperation, "sign/ed", map[string]interface{}{"input": base64.StdEncoding.EncodeToString(msg)}).Data["signature"].(string)
	sigRaw, _ := base64.StdEncoding.DecodeString(sig[len("vault:v1:"):])
	if !ed25519.Verify(ed25519.PublicKey(raw), msg, sigRaw) {
		t.Fatal("the Ed25519 signature does not verify with the key read back")
	}
	if v := m.mustOK(logical.UpdateOperation, "verify/ed", map[string]interface{}{"input": base64.StdEncoding.EncodeToString(msg), "signature": sig}).Data["valid"]; v != true {
		t.Fatalf("verify: %v", v)
	}
	m.mustFail(logical.UpdateOperation, "keys/edw", map[string]interface{}{"type": "ed25519", "residency": "wrapped"}, "residency 'hsm' only")
	nss := nssMount(t)
	nss.mustFail(logical.UpdateOperation, "keys/ed", map[string]interface{}{"type": "ed25519"}, "has no Ed25519")
}

// Vault asks encrypt's existence check (upsert) before the request; a
// plaintext of the wrong type must not come back in its error.
func TestExistenceCheckNeverEchoesTheValue(t *testing.T) {
	m := configuredMount(t, nil)
	for _, bad := range []interface{}{[]interface{}{"s3cret-value"}, map[string]interface{}{"x": "s3cret-value"}} {
		_, _, err := m.b.HandleExistenceCheck(context.Background(), &logical.Request{
			Operation: logical.UpdateOperation, Path: "encrypt/default", Storage: m.storage,
			Data: map[string]interface{}{"plaintext": bad},
		})
		if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "plaintext") {
			t.Fatalf("existence check with a %T plaintext: %v", bad, err)
		}
	}
}

// What the Terraform provider reads: an HMAC key's key_size, and only the
// versions that still decrypt in keys, as in Transit.
func TestKeyReadAsTheTerraformProviderNeedsIt(t *testing.T) {
	m := configuredMount(t, nil)
	if size := m.mustOK(logical.UpdateOperation, "keys/mac", map[string]interface{}{"type": "hmac", "key_size": 32}).Data["key_size"]; size != 32 {
		t.Fatalf("hmac key_size %v", size)
	}
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	m.mustOK(logical.UpdateOperation, "keys/k/rotate", nil)
	keys := m.mustOK(logical.UpdateOperation, "keys/k/config", map[string]interface{}{"min_decryption_version": 2}).Data["keys"].(map[string]interface{})
	if _, old := keys["1"]; old || len(keys) != 1 {
		t.Fatalf("keys after min_decryption_version=2: %v", keys)
	}
}
