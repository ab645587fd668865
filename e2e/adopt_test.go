package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// ceremonyKey is one key object the test put on the token itself, as an HSM
// key ceremony would, apart from the plugin.
type ceremonyKey struct {
	label  string
	id     []byte
	class  uint // the object adopt binds: CKO_SECRET_KEY or CKO_PRIVATE_KEY
	secret uint // the attribute that holds its secret
}

func (k ceremonyKey) hexID() string { return hex.EncodeToString(k.id) }

// ceremony is what the test knows of the objects it made: their labels and
// CKA_IDs, the public halves and a MAC computed by the token, to hold the
// plugin's answers against.
type ceremony struct {
	tok             *tokentest.Token
	slot, otherSlot uint // this token's slot and the other token's, as C_GetSlotList gives them

	aes, aesByID, aesByRef ceremonyKey // AES-256, one per way of naming an object
	spare                  ceremonyKey // AES-256 the refusals point at
	loose                  ceremonyKey // AES-256, extractable and not sensitive
	twin1, twin2           ceremonyKey // AES-256, one label for both
	kept, doomed           ceremonyKey // AES-256, adopted to be deleted
	v1, v2                 ceremonyKey // AES-256, two versions of one key
	hmac                   ceremonyKey // generic secret, 32 bytes
	rsa, ec, ecLone        ceremonyKey // private halves; ecLone has no public object
	tool                   ceremonyKey // AES-256 made by pkcs11-tool (SoftHSM2 only)

	rsaPub           *rsa.PublicKey
	ecPub, ecLonePub *ecdsa.PublicKey
	hmacInput        []byte
	hmacByToken      []byte // HMAC-SHA-256 of hmacInput, computed by the token

	ids [][]byte // every CKA_ID made, cleared from the token when the test ends
}

// TestAdoptKeysFromACeremony makes key objects on the token from this
// process before the mount is configured, binds them to kms/ keys with
// keys/:name/adopt by label, CKA_ID and hsm::<slot>::<label>, uses them
// through Vault and checks on the token that adoption left them as they
// were.
func TestAdoptKeysFromACeremony(t *testing.T) {
	eachToken(t, testAdoptKeysFromACeremony)
}

func testAdoptKeysFromACeremony(t *testing.T, tok *tokentest.Token) {
	c := holdCeremony(t, tok)
	// The objects exist before the plugin's C_Initialize: SoftHSM2 and NSS
	// read a token's objects when the module is initialised.
	v := startDevVault(t, tok)
	v.configure("kms")

	status, resp := v.raw("GET", "kms/config", v.token, nil)
	data, _ := resp["data"].(map[string]interface{})
	token, _ := data["token"].(map[string]interface{})
	if status != 200 || fmt.Sprint(token["slot"]) != fmt.Sprint(c.slot) {
		t.Fatalf("kms/config: %d, token %v; want slot %d, the one C_GetSlotList gives this process", status, token, c.slot)
	}

	checks := []struct {
		name string
		run  func(t *testing.T, v *vaultServer, c *ceremony)
	}{
		{"AESByLabelIDAndRef", testAdoptAESByLabelIDAndRef},
		{"RSAByLabel", testAdoptRSAByLabel},
		{"ECByID", testAdoptECByID},
		{"ECWithoutPublicObject", testAdoptECWithoutPublicObject},
		{"HMACByRef", testAdoptHMACByRef},
		{"Refusals", testAdoptRefusals},
		{"ExtractableOnlyWithConsent", testAdoptExtractableOnlyWithConsent},
		{"AdoptAddsAVersion", testAdoptAddsAVersion},
		{"DeleteForgetsOrDestroys", testAdoptDeleteForgetsOrDestroys},
		{"PKCS11ToolKey", testAdoptPKCS11ToolKey},
	}
	for _, check := range checks {
		t.Run(check.name, func(t *testing.T) { check.run(t, v.forTest(t), c) })
	}
	// Last: it reads the token after every adoption and deletion.
	t.Run("ObjectsStaySensitiveOnTheToken", func(t *testing.T) { testAdoptedObjectsOnTheToken(t, c) })
}

func testAdoptAESByLabelIDAndRef(t *testing.T, v *vaultServer, c *ceremony) {
	for _, tc := range []struct {
		name string
		body map[string]interface{}
		obj  ceremonyKey
	}{
		{"aes-label", map[string]interface{}{"label": c.aes.label}, c.aes},
		{"aes-id", map[string]interface{}{"id": c.aesByID.hexID()}, c.aesByID},
		{"aes-ref", map[string]interface{}{"hsm_ref": fmt.Sprintf("hsm::%d::%s", c.slot, c.aesByRef.label)}, c.aesByRef},
	} {
		data := adoptKey(t, v, tc.name, tc.body)
		checkAdopted(t, tc.name, data, "1", "aes256-gcm96", tc.obj, false, false)
		adoptRoundTrip(t, v, tc.name, "secret for "+tc.name, "1")
	}
}

func testAdoptRSAByLabel(t *testing.T, v *vaultServer, c *ceremony) {
	// The label is on both halves of the pair: the private one is the key.
	data := adoptKey(t, v, "rsa", map[string]interface{}{"label": c.rsa.label})
	checkAdopted(t, "rsa", data, "1", "rsa-2048", c.rsa, false, false)
	if pub := adoptedPublicKey(t, "rsa", data, "1"); !c.rsaPub.Equal(pub) {
		t.Errorf("rsa: kms/keys shows public key %v, the token's is %v", pub, c.rsaPub)
	}
	msg := []byte("signed by a ceremony key")
	digest := sha256.Sum256(msg)
	for _, scheme := range []string{"pss", "pkcs1v15"} {
		sig := adoptSignature(t, v.sign(t, "rsa", map[string]interface{}{"input": base64.StdEncoding.EncodeToString(msg), "signature_algorithm": scheme}))
		var err error
		if scheme == "pss" {
			err = rsa.VerifyPSS(c.rsaPub, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		} else {
			err = rsa.VerifyPKCS1v15(c.rsaPub, crypto.SHA256, digest[:], sig)
		}
		if err != nil {
			t.Errorf("rsa %s signature does not verify with the public key read from the token: %v", scheme, err)
		}
	}
}

func testAdoptECByID(t *testing.T, v *vaultServer, c *ceremony) {
	// The CKA_ID is on both halves of the pair: the private one is the key.
	data := adoptKey(t, v, "ec", map[string]interface{}{"id": c.ec.hexID()})
	checkAdopted(t, "ec", data, "1", "ecdsa-p256", c.ec, false, false)
	if pub := adoptedPublicKey(t, "ec", data, "1"); !c.ecPub.Equal(pub) {
		t.Errorf("ec: kms/keys shows public key %v, the token's is %v", pub, c.ecPub)
	}
	adoptCheckECSignature(t, v, "ec", c.ecPub)
}

func testAdoptECWithoutPublicObject(t *testing.T, v *vaultServer, c *ceremony) {
	data := adoptKey(t, v, "ec-lone", map[string]interface{}{"label": c.ecLone.label})
	checkAdopted(t, "ec-lone", data, "1", "ecdsa-p256", c.ecLone, false, false)
	if pub := adoptedPublicKey(t, "ec-lone", data, "1"); !c.ecLonePub.Equal(pub) {
		t.Errorf("ec-lone: the plugin recovered public key %v, the ceremony made %v", pub, c.ecLonePub)
	}
	adoptCheckECSignature(t, v, "ec-lone", c.ecLonePub)
}

func adoptCheckECSignature(t *testing.T, v *vaultServer, key string, pub *ecdsa.PublicKey) {
	t.Helper()
	msg := []byte("signed by " + key)
	digest := sha256.Sum256(msg)
	sig := adoptSignature(t, v.sign(t, key, map[string]interface{}{"input": base64.StdEncoding.EncodeToString(msg)}))
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Errorf("%s: signature %x does not verify with the ceremony's public key", key, sig)
	}
}

func testAdoptHMACByRef(t *testing.T, v *vaultServer, c *ceremony) {
	data := adoptKey(t, v, "hmac", map[string]interface{}{"hsm_ref": fmt.Sprintf("hsm::%d::%s", c.slot, c.hmac.label)})
	checkAdopted(t, "hmac", data, "1", "hmac", c.hmac, false, false)
	status, resp := v.raw("POST", "kms/hmac/hmac", v.token, map[string]interface{}{"input": base64.StdEncoding.EncodeToString(c.hmacInput)})
	out, _ := resp["data"].(map[string]interface{})
	if status != 200 {
		t.Fatalf("kms/hmac/hmac: %d %v", status, resp)
	}
	mac := adoptSignature(t, fmt.Sprint(out["hmac"]))
	if !strings.HasPrefix(fmt.Sprint(out["hmac"]), "vault:v1:") || string(mac) != string(c.hmacByToken) {
		t.Errorf("kms/hmac gave %v (%x), the token's own CKM_SHA256_HMAC gave %x", out["hmac"], mac, c.hmacByToken)
	}
}

func testAdoptRefusals(t *testing.T, v *vaultServer, c *ceremony) {
	status, resp := v.raw("GET", "kms/keys/default", v.token, nil)
	data, _ := resp["data"].(map[string]interface{})
	objects, _ := data["hsm_objects"].(map[string]interface{})
	first, _ := objects["1"].(map[string]interface{})
	pluginMade, _ := first["id"].(string)
	if status != 200 || pluginMade == "" {
		t.Fatalf("kms/keys/default: %d %v", status, resp)
	}
	absent := make([]byte, 16)
	if _, err := rand.Read(absent); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		body   map[string]interface{}
		fields []string // each must be named in the message
	}{
		{"label of two objects", map[string]interface{}{"label": c.twin1.label}, []string{"label"}},
		{"hsm_ref to the other token's slot", map[string]interface{}{"hsm_ref": fmt.Sprintf("hsm::%d::%s", c.otherSlot, c.spare.label)}, []string{"hsm_ref"}},
		{"hsm_ref to no slot", map[string]interface{}{"hsm_ref": fmt.Sprintf("hsm::%d::%s", c.slot+c.otherSlot+1000, c.spare.label)}, []string{"hsm_ref"}},
		{"hsm_ref not of the form", map[string]interface{}{"hsm_ref": "hsm:" + c.spare.label}, []string{"hsm_ref"}},
		{"hsm_ref slot not a number", map[string]interface{}{"hsm_ref": "hsm::first::" + c.spare.label}, []string{"hsm_ref"}},
		{"label of no object", map[string]interface{}{"label": c.spare.label + "-absent"}, []string{"label"}},
		{"id of no object", map[string]interface{}{"id": hex.EncodeToString(absent)}, []string{"id"}},
		{"id not hex", map[string]interface{}{"id": "not-hex!"}, []string{"id"}},
		{"label and id", map[string]interface{}{"label": c.spare.label, "id": c.spare.hexID()}, []string{"label", "id"}},
		{"label and hsm_ref", map[string]interface{}{"label": c.spare.label, "hsm_ref": fmt.Sprintf("hsm::%d::%s", c.slot, c.spare.label)}, []string{"label", "hsm_ref"}},
		{"no object named", map[string]interface{}{}, []string{"label"}},
		{"type rsa-2048 on an AES object", map[string]interface{}{"label": c.spare.label, "type": "rsa-2048"}, []string{"type"}},
		{"type aes128-gcm96 on an AES-256 object", map[string]interface{}{"label": c.spare.label, "type": "aes128-gcm96"}, []string{"type"}},
		{"type hmac on an AES object", map[string]interface{}{"label": c.spare.label, "type": "hmac"}, []string{"type"}},
		{"object the plugin made", map[string]interface{}{"id": pluginMade}, []string{"id"}},
	} {
		refuseAdopt(t, v, tc.name, "refused", tc.body, tc.fields...)
	}

	// A type that agrees with the object is taken.
	data = adoptKey(t, v, "spare", map[string]interface{}{"label": c.spare.label, "type": "aes256-gcm96"})
	checkAdopted(t, "spare", data, "1", "aes256-gcm96", c.spare, false, false)
}

func testAdoptExtractableOnlyWithConsent(t *testing.T, v *vaultServer, c *ceremony) {
	refuseAdopt(t, v, "extractable object", "loose", map[string]interface{}{"label": c.loose.label}, "allow_extractable")
	refuseAdopt(t, v, "extractable object, allow_extractable=false", "loose",
		map[string]interface{}{"label": c.loose.label, "allow_extractable": false}, "allow_extractable")
	data := adoptKey(t, v, "loose", map[string]interface{}{"label": c.loose.label, "allow_extractable": true})
	checkAdopted(t, "loose", data, "1", "aes256-gcm96", c.loose, true, false)
	adoptRoundTrip(t, v, "loose", "secret under a loose key", "1")
}

func testAdoptAddsAVersion(t *testing.T, v *vaultServer, c *ceremony) {
	adoptKey(t, v, "versions", map[string]interface{}{"label": c.v1.label})
	first := adoptRoundTrip(t, v, "versions", "made under version 1", "1")
	data := adoptKey(t, v, "versions", map[string]interface{}{"id": c.v2.hexID()})
	if fmt.Sprint(data["latest_version"]) != "2" {
		t.Fatalf("versions after a second adopt: latest_version %v, want 2", data["latest_version"])
	}
	checkAdopted(t, "versions", data, "1", "aes256-gcm96", c.v1, false, false)
	checkAdopted(t, "versions", data, "2", "aes256-gcm96", c.v2, false, false)
	adoptRoundTrip(t, v, "versions", "made under version 2", "2")
	status, resp := v.raw("POST", "kms/decrypt/versions", v.token, map[string]interface{}{"ciphertext": first})
	out, _ := resp["data"].(map[string]interface{})
	if status != 200 || out["plaintext"] != b64("made under version 1") {
		t.Errorf("decrypt of a version-1 ciphertext after adopting version 2: %d %v", status, resp)
	}
}

func testAdoptDeleteForgetsOrDestroys(t *testing.T, v *vaultServer, c *ceremony) {
	data := adoptKey(t, v, "kept", map[string]interface{}{"label": c.kept.label})
	checkAdopted(t, "kept", data, "1", "aes256-gcm96", c.kept, false, false)
	data = adoptKey(t, v, "doomed", map[string]interface{}{"label": c.doomed.label, "destroy_on_delete": true})
	checkAdopted(t, "doomed", data, "1", "aes256-gcm96", c.doomed, false, true)
	// What Transit's immediate delete does to adopted objects: the mount
	// deletes at once for this check (deletion_window=0s), then goes back to
	// the default window for the checks after it. The scheduled deletion has
	// its own tests (deletion_test.go).
	v.cli("write", "kms/config", "deletion_window=0s")
	defer v.cli("write", "kms/config", "deletion_window=168h")
	for _, name := range []string{"kept", "doomed"} {
		adoptRoundTrip(t, v, name, "before deletion", "1")
		v.cli("write", "-f", "kms/keys/"+name+"/deactivate")
		if status, resp := v.raw("DELETE", "kms/keys/"+name, v.token, nil); status/100 != 2 {
			t.Fatalf("delete %s: %d %v", name, status, resp)
		}
		if status, resp := v.raw("GET", "kms/keys/"+name, v.token, nil); status != 404 {
			t.Errorf("read of deleted key %s: %d %v, want 404", name, status, resp)
		}
	}

	p11, sh, done := ceremonySession(t, c.tok)
	defer done()
	if n := ceremonyCount(t, p11, sh, c.kept.id, c.kept.class); n != 1 {
		t.Errorf("deleting kept (adopted without destroy_on_delete) left %d objects with its CKA_ID %x, want 1", n, c.kept.id)
	}
	if n := ceremonyCount(t, p11, sh, c.doomed.id, c.doomed.class); n != 0 {
		t.Errorf("deleting doomed (adopted with destroy_on_delete) left %d objects with its CKA_ID %x, want 0", n, c.doomed.id)
	}
}

// A key pkcs11-tool made, another process writing the token, is adopted
// like the ceremony's own.
func testAdoptPKCS11ToolKey(t *testing.T, v *vaultServer, c *ceremony) {
	if c.tok.Kind != tokentest.SoftHSM2 {
		t.Skipf("on %s: pkcs11-tool cannot pass NSS's C_Initialize parameter string, so the ceremony made no key with it", c.tok.Kind)
	}
	data := adoptKey(t, v, "tool", map[string]interface{}{"label": c.tool.label})
	checkAdopted(t, "tool", data, "1", "aes256-gcm96", c.tool, false, false)
	adoptRoundTrip(t, v, "tool", "secret under pkcs11-tool's key", "1")
}

// testAdoptedObjectsOnTheToken opens the token as an auditor would and
// checks that adoption kept every bound object sensitive and unextractable.
func testAdoptedObjectsOnTheToken(t *testing.T, c *ceremony) {
	adopted := []ceremonyKey{c.aes, c.aesByID, c.aesByRef, c.spare, c.kept, c.v1, c.v2, c.hmac, c.rsa, c.ec, c.ecLone}
	if c.tok.Kind == tokentest.SoftHSM2 {
		adopted = append(adopted, c.tool)
	}
	p11, sh, done := ceremonySession(t, c.tok)
	defer done()
	for _, k := range adopted {
		h := findObject(t, p11, sh, k.id, k.class)
		attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		})
		if err != nil {
			t.Fatalf("%s: %v", k.label, err)
		}
		if !adoptBool(attrs[0]) || adoptBool(attrs[1]) {
			t.Errorf("%s: CKA_SENSITIVE %v CKA_EXTRACTABLE %v, want true and false", k.label, attrs[0].Value, attrs[1].Value)
		}
		_, err = p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(k.secret, nil)})
		if code, ok := err.(pkcs11.Error); !ok || code != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("%s: reading its secret gave %v, want CKR_ATTRIBUTE_SENSITIVE", k.label, err)
		}
	}
}

// adoptKey posts body to kms/keys/name/adopt, wants it taken, and returns
// the key's read.
func adoptKey(t *testing.T, v *vaultServer, name string, body map[string]interface{}) map[string]interface{} {
	t.Helper()
	if status, resp := v.raw("POST", "kms/keys/"+name+"/adopt", v.token, body); status/100 != 2 {
		t.Fatalf("adopt %s %v: %d %v", name, body, status, resp)
	}
	status, resp := v.raw("GET", "kms/keys/"+name, v.token, nil)
	data, _ := resp["data"].(map[string]interface{})
	if status != 200 || data == nil {
		t.Fatalf("read of adopted key %s: %d %v", name, status, resp)
	}
	return data
}

// refuseAdopt wants a 400 naming each field for adopting body as name, and
// no key left behind by it.
func refuseAdopt(t *testing.T, v *vaultServer, what, name string, body map[string]interface{}, fields ...string) {
	t.Helper()
	status, resp := v.raw("POST", "kms/keys/"+name+"/adopt", v.token, body)
	msg := fmt.Sprint(resp["errors"])
	t.Logf("%s: %d %s", what, status, msg)
	if status != 400 {
		t.Errorf("%s: adopt %v answered %d %v, want 400", what, body, status, resp)
	}
	for _, f := range fields {
		if !strings.Contains(msg, f) {
			t.Errorf("%s: message %q does not name %s", what, msg, f)
		}
	}
	if status, resp := v.raw("GET", "kms/keys/"+name, v.token, nil); status != 404 {
		t.Errorf("%s: a refused adopt left key %s: %d %v", what, name, status, resp)
	}
}

// checkAdopted holds version ver of a key read against the object it
// binds.
func checkAdopted(t *testing.T, name string, data map[string]interface{}, ver, typ string, k ceremonyKey, extractable, destroyOnDelete bool) {
	t.Helper()
	if data["type"] != typ || data["imported_key"] != true {
		t.Errorf("%s: type %v imported_key %v, want %s and true", name, data["type"], data["imported_key"], typ)
	}
	objects, _ := data["hsm_objects"].(map[string]interface{})
	obj, _ := objects[ver].(map[string]interface{})
	want := map[string]interface{}{
		"id": k.hexID(), "label": k.label, "origin": "adopted",
		"extractable": extractable, "destroy_on_delete": destroyOnDelete, "public_only": false,
	}
	for field, w := range want {
		if obj[field] != w {
			t.Errorf("%s: hsm_objects[%s].%s is %v, want %v (hsm_objects %v)", name, ver, field, obj[field], w, objects)
		}
	}
}

// adoptedPublicKey is the public key of version ver in a key read.
func adoptedPublicKey(t *testing.T, name string, data map[string]interface{}, ver string) crypto.PublicKey {
	t.Helper()
	keys, _ := data["keys"].(map[string]interface{})
	entry, _ := keys[ver].(map[string]interface{})
	pemText, _ := entry["public_key"].(string)
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		t.Fatalf("%s: keys[%s] has no PEM public key: %v", name, ver, keys)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatalf("%s: keys[%s].public_key: %v", name, ver, err)
	}
	return pub
}

// adoptRoundTrip encrypts plaintext with key, wants version ver to do it
// and the ciphertext to decrypt back, and returns the ciphertext.
func adoptRoundTrip(t *testing.T, v *vaultServer, key, plaintext, ver string) string {
	t.Helper()
	status, resp := v.raw("POST", "kms/encrypt/"+key, v.token, map[string]interface{}{"plaintext": b64(plaintext)})
	out, _ := resp["data"].(map[string]interface{})
	ct, _ := out["ciphertext"].(string)
	if status != 200 || !strings.HasPrefix(ct, "vault:v"+ver+":") {
		t.Fatalf("encrypt with %s: %d %v, want a vault:v%s: ciphertext", key, status, resp, ver)
	}
	status, resp = v.raw("POST", "kms/decrypt/"+key, v.token, map[string]interface{}{"ciphertext": ct})
	out, _ = resp["data"].(map[string]interface{})
	if status != 200 || out["plaintext"] != b64(plaintext) {
		t.Fatalf("decrypt with %s: %d %v", key, status, resp)
	}
	return ct
}

// adoptSignature decodes a vault:v<N>:<base64> signature or HMAC.
func adoptSignature(t *testing.T, s string) []byte {
	t.Helper()
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 || parts[0] != "vault" {
		t.Fatalf("not a vault:v<N>: value: %q", s)
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return raw
}

func adoptBool(a *pkcs11.Attribute) bool { return len(a.Value) == 1 && a.Value[0] == 1 }

// holdCeremony makes the ceremony's objects on tok from this process and
// arranges for every one left to be destroyed when t ends, after the Vault
// servers t starts later have stopped: the token is shared with the
// package's other tests.
func holdCeremony(t *testing.T, tok *tokentest.Token) *ceremony {
	t.Helper()
	tag := make([]byte, 4)
	if _, err := rand.Read(tag); err != nil {
		t.Fatal(err)
	}
	// A tag per run keeps the labels apart from any other test's objects.
	sfx := "-" + hex.EncodeToString(tag)
	c := &ceremony{tok: tok, hmacInput: []byte("a message the token and kms/hmac both MAC")}
	t.Cleanup(func() { c.clearToken(t) })

	c.makeObjects(t, sfx)
	if tok.Kind == tokentest.SoftHSM2 {
		// After this process has let go of the token: pkcs11-tool is
		// another process writing the same token files.
		c.tool = c.keyByPKCS11Tool(t, "ceremony-tool"+sfx)
	}
	return c
}

// makeObjects makes the ceremony's objects through miekg/pkcs11.
func (c *ceremony) makeObjects(t *testing.T, sfx string) {
	t.Helper()
	tok := c.tok
	p11, sh, done := ceremonySession(t, tok)
	defer done()
	c.slot = findSlot(t, p11, tok.Label)
	c.otherSlot = findSlot(t, p11, tokens[tok.Kind][1].Label)

	aes := func(label string, usage ...uint) ceremonyKey {
		return c.secretKey(t, p11, sh, label, pkcs11.CKM_AES_KEY_GEN, pkcs11.CKK_AES, true, usage...)
	}
	encDec := []uint{pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT}
	c.aes = aes("ceremony-aes"+sfx, encDec...)
	c.aesByID = aes("ceremony-aes-id"+sfx, encDec...)
	c.aesByRef = aes("ceremony-aes-ref"+sfx, encDec...)
	c.spare = aes("ceremony-spare"+sfx, encDec...)
	c.twin1 = aes("ceremony-twin"+sfx, encDec...)
	c.twin2 = aes("ceremony-twin"+sfx, encDec...)
	c.kept = aes("ceremony-kept"+sfx, encDec...)
	c.doomed = aes("ceremony-doomed"+sfx, encDec...)
	c.v1 = aes("ceremony-v1"+sfx, encDec...)
	c.v2 = aes("ceremony-v2"+sfx, encDec...)
	c.loose = c.secretKey(t, p11, sh, "ceremony-loose"+sfx, pkcs11.CKM_AES_KEY_GEN, pkcs11.CKK_AES, false, encDec...)
	c.hmac = c.secretKey(t, p11, sh, "ceremony-hmac"+sfx, pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKK_GENERIC_SECRET, true,
		pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY)
	hmacObj := findObject(t, p11, sh, c.hmac.id, pkcs11.CKO_SECRET_KEY)
	if err := p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, hmacObj); err != nil {
		t.Fatalf("C_SignInit(CKM_SHA256_HMAC): %v", err)
	}
	mac, err := p11.Sign(sh, c.hmacInput)
	if err != nil || len(mac) != sha256.Size {
		t.Fatalf("token HMAC: %x %v", mac, err)
	}
	c.hmacByToken = mac

	var pub pkcs11.ObjectHandle
	c.rsa, pub = c.keyPair(t, p11, sh, "ceremony-rsa"+sfx, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.CKA_PRIVATE_EXPONENT, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
	}, pkcs11.CKK_RSA)
	attrs, err := p11.GetAttributeValue(sh, pub, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
	})
	if err != nil {
		t.Fatalf("reading the RSA public key: %v", err)
	}
	e := new(big.Int).SetBytes(attrs[1].Value)
	c.rsaPub = &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: int(e.Int64())}
	if c.rsaPub.N.BitLen() != 2048 || c.rsaPub.E != 65537 {
		t.Fatalf("the token made an RSA key of %d bits, e=%d", c.rsaPub.N.BitLen(), c.rsaPub.E)
	}

	c.ec, pub = c.ecPair(t, p11, sh, "ceremony-ec"+sfx)
	c.ecPub = ceremonyECPoint(t, p11, sh, pub)
	c.ecLone, pub = c.ecPair(t, p11, sh, "ceremony-ec-lone"+sfx)
	c.ecLonePub = ceremonyECPoint(t, p11, sh, pub)
	// The plugin must find the public key without the public object.
	if err := p11.DestroyObject(sh, pub); err != nil {
		t.Fatalf("destroying the lone EC key's public object: %v", err)
	}
	if n := ceremonyCount(t, p11, sh, c.ecLone.id, pkcs11.CKO_PUBLIC_KEY); n != 0 {
		t.Fatalf("the lone EC key still has %d public objects", n)
	}
}

func (c *ceremony) newID(t *testing.T) []byte {
	t.Helper()
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		t.Fatal(err)
	}
	c.ids = append(c.ids, id)
	return id
}

// secretKey generates a 32-byte token secret key: sensitive and never
// extractable, or (sensitive false) neither, as a careless ceremony leaves
// one.
func (c *ceremony) secretKey(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, label string, mech, keyType uint, sensitive bool, usage ...uint) ceremonyKey {
	t.Helper()
	k := ceremonyKey{label: label, id: c.newID(t), class: pkcs11.CKO_SECRET_KEY, secret: pkcs11.CKA_VALUE}
	template := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, sensitive),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, !sensitive),
		pkcs11.NewAttribute(pkcs11.CKA_ID, k.id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	for _, u := range usage {
		template = append(template, pkcs11.NewAttribute(u, true))
	}
	if _, err := p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, template); err != nil {
		t.Fatalf("generating %s: %v", label, err)
	}
	return k
}

// keyPair generates a token key pair, both halves with one label and
// CKA_ID, the private half sensitive, never extractable and for signing,
// the public half for verifying (NSS refuses a public half with no use).
func (c *ceremony) keyPair(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, label string, mech, secret uint, public []*pkcs11.Attribute, keyType uint) (ceremonyKey, pkcs11.ObjectHandle) {
	t.Helper()
	k := ceremonyKey{label: label, id: c.newID(t), class: pkcs11.CKO_PRIVATE_KEY, secret: secret}
	public = append(public,
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, k.id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	)
	private := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, k.id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	pub, _, err := p11.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, public, private)
	if err != nil {
		t.Fatalf("generating %s: %v", label, err)
	}
	return k, pub
}

// ceremonyP256Params is CKA_EC_PARAMS for P-256: the DER of its named-curve OID.
var ceremonyP256Params = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

func (c *ceremony) ecPair(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, label string) (ceremonyKey, pkcs11.ObjectHandle) {
	t.Helper()
	return c.keyPair(t, p11, sh, label, pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKA_VALUE, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ceremonyP256Params),
	}, pkcs11.CKK_EC)
}

// ceremonyECPoint reads a P-256 public object's CKA_EC_POINT, which tokens give
// DER-wrapped in an OCTET STRING (PKCS#11 v2.40) or, some, bare.
func ceremonyECPoint(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, pub pkcs11.ObjectHandle) *ecdsa.PublicKey {
	t.Helper()
	attrs, err := p11.GetAttributeValue(sh, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		t.Fatalf("reading CKA_EC_POINT: %v", err)
	}
	point := attrs[0].Value
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
		point = inner
	}
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		t.Fatalf("CKA_EC_POINT %x: %v", attrs[0].Value, err)
	}
	return key
}

// keyByPKCS11Tool makes an AES-256 key with OpenSC's pkcs11-tool, the tool
// a real ceremony would use. Its keys are never extractable unless
// --extractable is given.
func (c *ceremony) keyByPKCS11Tool(t *testing.T, label string) ceremonyKey {
	t.Helper()
	k := ceremonyKey{label: label, id: c.newID(t), class: pkcs11.CKO_SECRET_KEY, secret: pkcs11.CKA_VALUE}
	// --slot, not --token-label: pkcs11-tool takes a label as a prefix,
	// and "e2e" is one of "e2e-b".
	cmd := exec.Command("pkcs11-tool", "--module", c.tok.Library, "--slot", fmt.Sprint(c.slot),
		"--login", "--pin", c.tok.PIN, "--keygen", "--key-type", "AES:32",
		"--label", label, "--id", k.hexID(), "--sensitive", "--usage-decrypt")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+c.tok.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pkcs11-tool (package opensc, installed by scripts/deps.sh): %v\n%s", err, out)
	}
	return k
}

// clearToken destroys every object the ceremony made that is still there.
func (c *ceremony) clearToken(t *testing.T) {
	if len(c.ids) == 0 {
		return
	}
	p11, sh, done := ceremonySession(t, c.tok)
	defer done()
	for _, id := range c.ids {
		if err := p11.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
			t.Errorf("clearing the ceremony's objects: %v", err)
			return
		}
		handles, _, err := p11.FindObjects(sh, 8)
		_ = p11.FindObjectsFinal(sh)
		if err != nil {
			t.Errorf("clearing the ceremony's objects: %v", err)
			return
		}
		for _, h := range handles {
			if err := p11.DestroyObject(sh, h); err != nil {
				t.Errorf("destroying ceremony object %x: %v", id, err)
			}
		}
	}
}

func ceremonyCount(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, id []byte, class uint) int {
	t.Helper()
	if err := p11.FindObjectsInit(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
	}); err != nil {
		t.Fatal(err)
	}
	handles, _, err := p11.FindObjects(sh, 8)
	_ = p11.FindObjectsFinal(sh)
	if err != nil {
		t.Fatal(err)
	}
	return len(handles)
}

// ceremonySession initialises tok's module in this process, as
// openTokenSession does, and opens a read-write session logged in as the
// user. done logs out and finalises: a module is initialised once per
// process, so the test opens it only for as long as it needs it.
func ceremonySession(t *testing.T, tok *tokentest.Token) (*pkcs11.Ctx, pkcs11.SessionHandle, func()) {
	t.Helper()
	p11 := pkcs11.New(tok.Library)
	if p11 == nil {
		t.Fatalf("loading %s", tok.Library)
	}
	var opts []pkcs11.InitializeOption
	cargs := append([]byte(tok.InitArgs), 0)
	if tok.InitArgs != "" {
		opts = append(opts, pkcs11.InitializeWithReserved(unsafe.Pointer(&cargs[0])))
	}
	err := p11.Initialize(opts...)
	runtime.KeepAlive(cargs)
	if err != nil {
		p11.Destroy()
		t.Fatalf("C_Initialize of %s: %v", tok.Kind, err)
	}
	var sh pkcs11.SessionHandle
	opened := false
	done := func() {
		if opened {
			_ = p11.Logout(sh)
			_ = p11.CloseSession(sh)
		}
		_ = p11.Finalize()
		p11.Destroy()
	}
	ok := false
	defer func() {
		if !ok {
			done()
		}
	}()
	slot := findSlot(t, p11, tok.Label)
	if sh, err = p11.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
		t.Fatalf("C_OpenSession: %v", err)
	}
	opened = true
	if err := p11.Login(sh, pkcs11.CKU_USER, tok.PIN); err != nil {
		t.Fatalf("C_Login: %v", err)
	}
	ok = true
	return p11, sh, done
}
