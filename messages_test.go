package hsmkms

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

// mustFailWith asserts a 400 whose message is exactly want.
func (m *testMount) mustFailWith(op logical.Operation, path string, data map[string]interface{}, want string) {
	m.t.Helper()
	resp, err := m.do(op, path, data)
	if !errors.Is(err, logical.ErrInvalidRequest) || resp == nil || !resp.IsError() {
		m.t.Errorf("%s %s: err=%v (resp %v), want a 400", op, path, err, respError(resp))
		return
	}
	if msg := respError(resp); msg != want {
		m.t.Errorf("%s %s:\n got  %q\n want %q", op, path, msg, want)
	}
}

// The caller's mistakes are answered 400 with the message the paths have
// always given, whichever layer found them: the parsers of sign options,
// batch items, import sources, adopt selectors and export versions each
// say what to fix, and none quotes key material.
func TestCallerMistakesKeepTheirMessages(t *testing.T) {
	m, raw := rawMount(t)
	for name, typ := range map[string]string{"rsa": "rsa-2048", "ec": "ecdsa-p256", "aes": "aes256-gcm96"} {
		m.mustOK(logical.UpdateOperation, "keys/"+name, map[string]interface{}{"type": typ})
	}
	secret := func(n int) string {
		k := make([]byte, n)
		_, _ = rand.Read(k)
		return jwkOf(t, k)
	}
	m.mustOK(logical.UpdateOperation, "keys/imp/import", map[string]interface{}{"jwk": secret(32)})
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	in := base64.StdEncoding.EncodeToString([]byte("x"))
	with := func(base map[string]interface{}, k string, v interface{}) map[string]interface{} {
		out := map[string]interface{}{k: v}
		for bk, bv := range base {
			out[bk] = bv
		}
		return out
	}
	sign := map[string]interface{}{"input": in}
	item := map[string]interface{}{"plaintext": in}
	tooMany := make([]interface{}, maxBatchItems+1)
	for i := range tooMany {
		tooMany[i] = item
	}
	kt, _ := keyring.Type("aes256-gcm96")
	gs := "tiny-secret-" + hex.EncodeToString([]byte(t.Name()))[:12]
	raw.makeGenericSecret(t, gs, 8)
	small := "small-rsa-" + hex.EncodeToString([]byte(t.Name()))[:12]
	raw.makeRSAKeyPair(t, small, 1024)

	for _, tc := range []struct {
		path string
		data map[string]interface{}
		want string
	}{
		// sign options (readSignOptions, parseSaltLength)
		{"sign/rsa", with(sign, "alg", "XX256"), `alg "XX256" is not one of: ES256, ES384, ES512, PS256, PS384, PS512, RS256, RS384, RS512`},
		{"sign/ec", with(sign, "alg", "RS256"), "alg RS256 does not fit key type ecdsa-p256; it takes ES256"},
		{"sign/rsa", with(with(sign, "alg", "RS256"), "hash_algorithm", "sha2-384"), "alg RS256 implies hash_algorithm sha2-256, not sha2-384; give one of the two"},
		{"sign/rsa", with(with(sign, "alg", "PS256"), "signature_algorithm", "pkcs1v15"), "alg PS256 implies signature_algorithm pss, not pkcs1v15; give one of the two"},
		{"sign/rsa", with(sign, "hash_algorithm", "md5"), `hash_algorithm "md5" is not one of: ` + strings.Join(wire.HashNames(wire.UseVerify), ", ")},
		{"sign/rsa", with(sign, "signature_algorithm", "foo"), `signature_algorithm "foo" is not one of: pss, pkcs1v15`},
		{"sign/rsa", with(sign, "salt_length", "abc"), `salt_length "abc" is not 'auto', 'hash' or a number of bytes`},
		{"sign/rsa", with(sign, "marshaling_algorithm", "xml"), `marshaling_algorithm "xml" is not one of: asn1, jws`},
		{"verify/rsa", with(with(sign, "signature", "vault:v1:AA=="), "salt_length", "-1"), `salt_length "-1" is not 'auto', 'hash' or a number of bytes`},

		// batch items (readItems, itemFromMap, toInt)
		{"encrypt/aes", map[string]interface{}{"batch_input": []interface{}{}}, "batch_input is empty"},
		{"encrypt/aes", map[string]interface{}{"batch_input": tooMany}, "batch_input has 10001 items; at most 10000 allowed"},
		{"encrypt/aes", map[string]interface{}{"batch_input": []interface{}{"x"}}, "batch_input[0] is not an object"},
		{"encrypt/aes", map[string]interface{}{"batch_input": []interface{}{item, map[string]interface{}{"plaintext": 5}}}, "batch_input[1]: plaintext must be a string"},
		{"encrypt/aes", map[string]interface{}{"batch_input": []interface{}{with(item, "key_version", 1.5)}}, "batch_input[0]: key_version must be a whole number"},
		{"encrypt/aes", map[string]interface{}{"batch_input": []interface{}{with(item, "encryption_context", "x")}}, "batch_input[0]: encryption_context must be an object of strings"},
		{"encrypt/aes", map[string]interface{}{"batch_input": []interface{}{with(item, "encryption_context", map[string]interface{}{"a": 1})}}, `batch_input[0]: encryption_context["a"] must be a string`},

		// import sources (readImportRequest, importOperations, parseJWK,
		// octMaterial, parsePublicKeyPEM)
		{"keys/new/import", map[string]interface{}{}, "give exactly one of jwk, ciphertext (Transit's BYOK form) or public_key"},
		{"keys/new/import", map[string]interface{}{"jwk": "{"}, "jwk is not valid JSON"},
		{"keys/new/import", map[string]interface{}{"public_key": "nope"}, "public_key must be a PEM public key"},
		{"keys/new/import", map[string]interface{}{"ciphertext": "AAAA", "hash_function": "MD5"}, "hash_function must be SHA1, SHA224, SHA256, SHA384 or SHA512"},
		{"keys/new/import", map[string]interface{}{"ciphertext": "!!"}, "ciphertext must be base64 of Transit's BYOK form"},
		{"keys/new/import", map[string]interface{}{"ciphertext": "AAAA", "type": "foo"}, `unknown key type "foo"; available: ` + keyring.TypeNames() + " (or type=oct with size)"},
		{"keys/new/import", map[string]interface{}{"ciphertext": "AAAA", "type": "ed25519"}, "type ed25519 cannot be imported: such keys are generated in the HSM (keys/:name type=ed25519)"},
		{"keys/new/import", map[string]interface{}{"jwk": secret(32), "operations": "sign"}, `operation "sign" is not allowed for aes256-gcm96 keys; allowed: ` + strings.Join(kt.AllowedOps, ", ")},
		{"keys/new/import", map[string]interface{}{"public_key": ecPEM, "operations": "sign"}, "public_key: it is a public key, but sign needs the private key; give the private key, or operations=verify for a public key alone"},
		{"keys/new/import", map[string]interface{}{"jwk": jwkOf(t, &ecKey.PublicKey)}, "jwk: d is missing, but sign needs the private key; give the private key, or operations=verify for a public key alone"},
		{"keys/new/import", map[string]interface{}{"jwk": secret(10), "type": "hmac"}, fmt.Sprintf("jwk: k is 10 bytes; an HMAC key is %d to %d bytes", hsm.MinHMACImportBytes, hsm.MaxHMACImportBytes)},
		{"keys/new/import", map[string]interface{}{"jwk": secret(20)}, "jwk: k is 20 bytes; an AES key is 16, 24 or 32 bytes (give type=hmac for an HMAC key)"},
		{"keys/new/import", map[string]interface{}{"jwk": secret(32), "type": "aes128-gcm96"}, "type aes128-gcm96 does not match the jwk, which is a aes256-gcm96 key"},
		{"keys/new/import", map[string]interface{}{"public_key": ecPEM, "type": "rsa-2048"}, "type rsa-2048 does not match public_key, which is a ecdsa-p256 key"},
		{"keys/imp/import_version", map[string]interface{}{"jwk": secret(32), "type": "hmac"}, "type hmac does not match the key's type aes256-gcm96"},
		{"keys/imp/import_version", map[string]interface{}{"jwk": secret(16)}, "type aes256-gcm96 does not match the jwk, which is a aes128-gcm96 key"},
		{"keys/seeds", map[string]interface{}{"keys": []interface{}{"{"}}, "keys[0]: jwk is not valid JSON"},
		{"keys/seeds", map[string]interface{}{"keys": []interface{}{secret(32), secret(16)}}, "keys[1] is a aes128-gcm96 key; keys[0] is aes256-gcm96: all versions have one type"},
		{"keys/seeds", map[string]interface{}{"keys": []interface{}{secret(32)}, "operations": "sign"}, `operation "sign" is not allowed for aes256-gcm96 keys; allowed: ` + strings.Join(kt.AllowedOps, ", ")},
		{"keys/seeds", map[string]interface{}{"keys": []interface{}{jwkOf(t, ecKey), jwkOf(t, &ecKey.PublicKey)}}, "keys[1] has no private part, unlike keys[0]"},

		// adopt selectors and the object's type (adoptSelector,
		// adoptedKeyType)
		{"keys/a/adopt", map[string]interface{}{}, "give exactly one of label, id or hsm_ref"},
		{"keys/a/adopt", map[string]interface{}{"label": ""}, "label must not be empty"},
		{"keys/a/adopt", map[string]interface{}{"id": "zz"}, "id must be the object's CKA_ID in hex"},
		{"keys/a/adopt", map[string]interface{}{"hsm_ref": "x"}, "hsm_ref must have the form hsm::<slot>::<label>"},
		{"keys/a/adopt", map[string]interface{}{"hsm_ref": "hsm::x::l"}, "hsm_ref must have the form hsm::<slot>::<label>, the slot a number"},
		{"keys/a/adopt", map[string]interface{}{"hsm_ref": fmt.Sprintf("hsm::%d::l", raw.slot+1)}, fmt.Sprintf("hsm_ref names slot %d, but this mount's token is in slot %d", raw.slot+1, raw.slot)},
		{"keys/a/adopt", map[string]interface{}{"label": gs}, fmt.Sprintf("label: the object is a generic secret of 64 bits; an HMAC key is %d to %d bytes", hsm.MinHMACImportBytes, hsm.MaxHMACImportBytes)},
		{"keys/a/adopt", map[string]interface{}{"label": small}, "label: the object: an RSA key of 1024 bits; 2048, 3072 or 4096 supported"},

		// export versions (exportPublicKeys)
		{"export/public-key/rsa/abc", nil, `version "abc" is not a positive number, v<number> or 'latest'`},
		{"export/public-key/rsa/9", nil, `the request names key version 9, but the latest version of "rsa" is 1`},
	} {
		var op logical.Operation = logical.UpdateOperation
		if strings.HasPrefix(tc.path, "export/") {
			op = logical.ReadOperation
		}
		m.mustFailWith(op, tc.path, tc.data, tc.want)
	}
	for _, name := range []string{"new", "seeds", "a"} {
		if resp, err := m.do(logical.ReadOperation, "keys/"+name, nil); err != nil || resp != nil {
			t.Errorf("a refused request left key %s: %v %v", name, err, respError(resp))
		}
	}
}

// makeGenericSecret puts a generic secret of n bytes on the token, as the
// HSM's tools would.
func (r *rawToken) makeGenericSecret(t *testing.T, label string, n int) {
	t.Helper()
	id := []byte("test:" + label)
	r.session(t, func(sh pkcs11.SessionHandle) error {
		_, err := r.p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, n),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		return err
	})
	t.Cleanup(func() { r.destroyByID(t, id) })
}

// makeRSAKeyPair puts an RSA key pair of bits on the token.
func (r *rawToken) makeRSAKeyPair(t *testing.T, label string, bits int) {
	t.Helper()
	id := []byte("test:" + label)
	r.session(t, func(sh pkcs11.SessionHandle) error {
		_, _, err := r.p11.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits),
				pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
				pkcs11.NewAttribute(pkcs11.CKA_ID, id),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
				pkcs11.NewAttribute(pkcs11.CKA_ID, id),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			})
		return err
	})
	t.Cleanup(func() { r.destroyByID(t, id) })
}

func (r *rawToken) destroyByID(t *testing.T, id []byte) {
	t.Helper()
	r.session(t, func(sh pkcs11.SessionHandle) error {
		if err := r.p11.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
			return err
		}
		found, _, err := r.p11.FindObjects(sh, 4)
		_ = r.p11.FindObjectsFinal(sh)
		for _, h := range found {
			_ = r.p11.DestroyObject(sh, h)
		}
		return err
	})
}
