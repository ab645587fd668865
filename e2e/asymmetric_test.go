package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/go-jose/go-jose/v4"
	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

var jwaCases = []struct {
	alg, key, opensslDigest string
	hash                    crypto.Hash
}{
	{"RS256", "rsa", "-sha256", crypto.SHA256},
	{"RS384", "rsa", "-sha384", crypto.SHA384},
	{"RS512", "rsa", "-sha512", crypto.SHA512},
	{"PS256", "rsa", "-sha256", crypto.SHA256},
	{"PS384", "rsa", "-sha384", crypto.SHA384},
	{"PS512", "rsa", "-sha512", crypto.SHA512},
	{"ES256", "ec256", "-sha256", crypto.SHA256},
	{"ES384", "ec384", "-sha384", crypto.SHA384},
	{"ES512", "ec521", "-sha512", crypto.SHA512},
}

// TestAsymmetricKeysThroughVault starts one dev Vault per token kind with
// the keys of asymmetricVault and runs the asymmetric checks on it, each a
// subtest named after the token kind and the check.
func TestAsymmetricKeysThroughVault(t *testing.T) {
	eachToken(t, func(t *testing.T, tok *tokentest.Token) {
		v := asymmetricVault(t, tok)
		for _, check := range []struct {
			name string
			run  func(t *testing.T, v *vaultServer, tok *tokentest.Token)
		}{
			{"SignaturesOfEveryJWAAlgorithmVerifyEverywhere", testSignaturesOfEveryJWAAlgorithmVerifyEverywhere},
			{"ECDSAJWSSignaturesVerifyAsJWS", testECDSAJWSSignaturesVerifyAsJWS},
			{"RSAEncryptionInteroperates", testRSAEncryptionInteroperates},
			{"BatchDeactivationAndBadInput", testAsymmetricBatchDeactivationAndBadInput}, // last: it deactivates keys
		} {
			t.Run(check.name, func(t *testing.T) { check.run(t, v.forTest(t), tok) })
		}
	})
}

// asymmetricVault is one dev Vault with an RSA key (signing and encryption),
// an EC key per curve and a second RSA key.
func asymmetricVault(t *testing.T, tok *tokentest.Token) *vaultServer {
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/rsa", "type=rsa-2048", "operations=sign,verify,encrypt,decrypt")
	v.cli("write", "kms/keys/rsa-other", "type=RSA", "size=2048")
	v.cli("write", "kms/keys/ec256", "type=ecdsa-p256")
	v.cli("write", "kms/keys/ec384", "type=EC", "curve=P-384")
	v.cli("write", "kms/keys/ec521", "type=ecdsa-p521")
	return v
}

func (v *vaultServer) exportPEM(t *testing.T, key string) (string, crypto.PublicKey) {
	t.Helper()
	secret, err := v.client.Logical().Read("kms/export/public-key/" + key + "/1")
	if err != nil {
		t.Fatal(err)
	}
	pemText := secret.Data["keys"].(map[string]interface{})["1"].(string)
	block, _ := pem.Decode([]byte(pemText))
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("export of %s is not a PUBLIC KEY PEM: %q", key, pemText)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), key+".pem")
	writeFile(t, path, pemText)
	return path, pub
}

func (v *vaultServer) sign(t *testing.T, key string, body map[string]interface{}) string {
	t.Helper()
	secret, err := v.client.Logical().Write("kms/sign/"+key, body)
	if err != nil {
		t.Fatalf("sign %s %v: %v", key, body, err)
	}
	return secret.Data["signature"].(string)
}

func (v *vaultServer) verify(t *testing.T, key string, body map[string]interface{}) bool {
	t.Helper()
	secret, err := v.client.Logical().Write("kms/verify/"+key, body)
	if err != nil {
		t.Fatalf("verify %s: %v", key, err)
	}
	return secret.Data["valid"].(bool)
}

func openssl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

func testSignaturesOfEveryJWAAlgorithmVerifyEverywhere(t *testing.T, v *vaultServer, tok *tokentest.Token) {
	dir := t.TempDir()
	message := []byte("the quarterly numbers, signed by the HSM")
	msgFile := filepath.Join(dir, "msg")
	writeFile(t, msgFile, string(message))

	for _, tc := range jwaCases {
		t.Run(tc.alg, func(t *testing.T) {
			pemPath, pub := v.exportPEM(t, tc.key)
			h := tc.hash.New()
			h.Write(message)
			digest := h.Sum(nil)

			for _, prehashed := range []bool{false, true} {
				input := base64.StdEncoding.EncodeToString(message)
				if prehashed {
					input = base64.StdEncoding.EncodeToString(digest)
				}
				sig := v.sign(t, tc.key, map[string]interface{}{"input": input, "alg": tc.alg, "isdigest": prehashed})
				raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sig, "vault:v1:"))
				if err != nil {
					t.Fatalf("signature %q: %v", sig, err)
				}

				// 1. Through kms/verify, over the original message.
				body := map[string]interface{}{"input": base64.StdEncoding.EncodeToString(message), "signature": sig, "alg": tc.alg}
				if !v.verify(t, tc.key, body) {
					t.Fatalf("prehashed=%v: kms/verify says invalid", prehashed)
				}
				body["input"] = base64.StdEncoding.EncodeToString([]byte("another message"))
				if v.verify(t, tc.key, body) {
					t.Fatal("kms/verify accepts the signature over other input")
				}
				if tc.key == "rsa" {
					body["input"] = base64.StdEncoding.EncodeToString(message)
					if v.verify(t, "rsa-other", body) {
						t.Fatal("kms/verify accepts the signature with another key")
					}
				}

				// 2. With openssl and the exported PEM.
				sigFile := filepath.Join(dir, tc.alg+".sig")
				if err := os.WriteFile(sigFile, raw, 0o600); err != nil {
					t.Fatal(err)
				}
				args := []string{"dgst", tc.opensslDigest, "-verify", pemPath, "-signature", sigFile}
				if strings.HasPrefix(tc.alg, "PS") {
					args = append(args, "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1")
				}
				if out, err := openssl(t, append(args, msgFile)...); err != nil || !strings.Contains(out, "Verified OK") {
					t.Fatalf("prehashed=%v: openssl: %v %s", prehashed, err, out)
				}

				// 3. With Go's standard library.
				var ok bool
				switch pub := pub.(type) {
				case *rsa.PublicKey:
					if strings.HasPrefix(tc.alg, "PS") {
						ok = rsa.VerifyPSS(pub, tc.hash, digest, raw, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
					} else {
						ok = rsa.VerifyPKCS1v15(pub, tc.hash, digest, raw) == nil
					}
				case *ecdsa.PublicKey:
					ok = ecdsa.VerifyASN1(pub, digest, raw)
				}
				if !ok {
					t.Fatalf("prehashed=%v: Go's standard library rejects the signature", prehashed)
				}
			}
		})
	}
}

// ECDSA jws signatures are r||s of the curve's size and verify as JWS.
func testECDSAJWSSignaturesVerifyAsJWS(t *testing.T, v *vaultServer, tok *tokentest.Token) {
	for _, tc := range []struct {
		alg, key string
		size     int
		jose     jose.SignatureAlgorithm
	}{
		{"ES256", "ec256", 32, jose.ES256}, {"ES384", "ec384", 48, jose.ES384}, {"ES512", "ec521", 66, jose.ES512},
	} {
		_, pub := v.exportPEM(t, tc.key)
		header := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"alg":%q,"typ":"JWT"}`, tc.alg)))
		payload := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"hsmkms","iat":1700000000}`))
		signingInput := header + "." + payload
		sig := v.sign(t, tc.key, map[string]interface{}{
			"input": base64.StdEncoding.EncodeToString([]byte(signingInput)), "alg": tc.alg, "marshaling_algorithm": "jws",
		})
		part := strings.TrimPrefix(sig, "vault:v1:")
		raw, err := base64.RawURLEncoding.DecodeString(part)
		if err != nil || len(raw) != 2*tc.size {
			t.Fatalf("%s: jws signature is %d bytes (%v), want %d", tc.alg, len(raw), err, 2*tc.size)
		}
		jws, err := jose.ParseSigned(signingInput+"."+part, []jose.SignatureAlgorithm{tc.jose})
		if err != nil {
			t.Fatalf("%s: parse: %v", tc.alg, err)
		}
		got, err := jws.Verify(pub)
		if err != nil || !strings.Contains(string(got), "hsmkms") {
			t.Fatalf("%s: JWS verify: %v", tc.alg, err)
		}
		if !v.verify(t, tc.key, map[string]interface{}{
			"input": base64.StdEncoding.EncodeToString([]byte(signingInput)), "signature": sig, "alg": tc.alg, "marshaling_algorithm": "jws",
		}) {
			t.Fatalf("%s: kms/verify rejects its jws signature", tc.alg)
		}
	}
}

func testRSAEncryptionInteroperates(t *testing.T, v *vaultServer, tok *tokentest.Token) {
	pemPath, pub := v.exportPEM(t, "rsa")
	dir := t.TempDir()
	msg := "a data key, 32 bytes long......."
	msgFile := filepath.Join(dir, "msg")
	writeFile(t, msgFile, msg)

	// openssl encrypts with the exported key; kms/decrypt decrypts.
	for padding, opts := range map[string][]string{
		"oaep":     {"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"},
		"pkcs1v15": {"-pkeyopt", "rsa_padding_mode:pkcs1"},
	} {
		ctFile := filepath.Join(dir, padding+".ct")
		args := append([]string{"pkeyutl", "-encrypt", "-pubin", "-inkey", pemPath, "-in", msgFile, "-out", ctFile}, opts...)
		if out, err := openssl(t, args...); err != nil {
			t.Fatalf("openssl %s: %v %s", padding, err, out)
		}
		ct, _ := os.ReadFile(ctFile)
		secret, err := v.client.Logical().Write("kms/decrypt/rsa", map[string]interface{}{
			"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(ct), "padding_scheme": padding,
		})
		if err != nil {
			t.Fatalf("kms/decrypt of openssl's %s ciphertext: %v", padding, err)
		}
		if secret.Data["plaintext"] != base64.StdEncoding.EncodeToString([]byte(msg)) {
			t.Fatalf("%s: plaintext %v", padding, secret.Data["plaintext"])
		}
	}

	// kms/encrypt encrypts; the token, opened independently by this test,
	// decrypts with the private key.
	secret, err := v.client.Logical().Read("kms/keys/rsa")
	if err != nil {
		t.Fatal(err)
	}
	id, _ := hex.DecodeString(secret.Data["hsm_objects"].(map[string]interface{})["1"].(map[string]interface{})["id"].(string))
	p11, sh := openTokenSession(t, tok)
	priv := findObject(t, p11, sh, id, pkcs11.CKO_PRIVATE_KEY)
	k := (pub.(*rsa.PublicKey).N.BitLen() + 7) / 8
	for _, padding := range []string{"oaep", "pkcs1v15"} {
		secret, err := v.client.Logical().Write("kms/encrypt/rsa", map[string]interface{}{
			"plaintext": base64.StdEncoding.EncodeToString([]byte(msg)), "padding_scheme": padding,
		})
		if err != nil {
			t.Fatal(err)
		}
		ct, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret.Data["ciphertext"].(string), "vault:v1:"))
		// SoftHSM has no OAEP with SHA-256: the test removes the padding of
		// a raw RSA decryption. NSS does it in the token.
		mech := pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)
		unpad := false
		if padding == "oaep" {
			switch tok.Kind {
			case tokentest.SoftHSM2:
				mech, unpad = pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil), true
			case tokentest.NSS:
				mech = pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP,
					pkcs11.NewOAEPParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, pkcs11.CKZ_DATA_SPECIFIED, nil))
			default:
				t.Fatalf("no OAEP decryption for token kind %q", tok.Kind)
			}
		}
		if err := p11.DecryptInit(sh, []*pkcs11.Mechanism{mech}, priv); err != nil {
			t.Fatal(err)
		}
		out, err := p11.Decrypt(sh, ct)
		if err != nil {
			t.Fatalf("token decrypt of kms/encrypt's %s: %v", padding, err)
		}
		if unpad {
			em := append(make([]byte, k-len(out)), out...)
			if out, err = hsm.UnpadOAEP(sha256.New(), em, nil); err != nil {
				t.Fatalf("kms/encrypt's OAEP ciphertext has bad padding: %v", err)
			}
		}
		if string(out) != msg {
			t.Fatalf("%s: token decrypted %q", padding, out)
		}
	}
}

func testAsymmetricBatchDeactivationAndBadInput(t *testing.T, v *vaultServer, tok *tokentest.Token) {
	items := make([]map[string]interface{}, 100)
	for i := range items {
		items[i] = map[string]interface{}{"input": base64.StdEncoding.EncodeToString([]byte(fmt.Sprint("doc ", i))), "reference": fmt.Sprint(i)}
	}
	items[7]["input"] = "%%% not base64"
	secret, err := v.client.Logical().Write("kms/sign/ec256", map[string]interface{}{"batch_input": items})
	if err != nil {
		t.Fatal(err)
	}
	results := secret.Data["batch_results"].([]interface{})
	if len(results) != 100 {
		t.Fatalf("%d results", len(results))
	}
	for i, r := range results {
		item := r.(map[string]interface{})
		if item["reference"] != fmt.Sprint(i) || (i == 7) != (item["error"] != nil) || (i != 7 && item["signature"] == nil) {
			t.Fatalf("item %d: %v", i, item)
		}
	}

	sig := v.sign(t, "ec256", map[string]interface{}{"input": base64.StdEncoding.EncodeToString([]byte("x"))})
	digest512 := sha512.Sum512([]byte("x"))
	for name, tc := range map[string]struct {
		path string
		body map[string]interface{}
	}{
		"wrong digest length": {"kms/sign/ec256", map[string]interface{}{"input": base64.StdEncoding.EncodeToString(digest512[:]), "prehashed": true}},
		"unknown alg":         {"kms/sign/rsa", map[string]interface{}{"input": "eA==", "alg": "XS256"}},
		"ES256 on RSA":        {"kms/sign/rsa", map[string]interface{}{"input": "eA==", "alg": "ES256"}},
		"malformed signature": {"kms/verify/ec256", map[string]interface{}{"input": "eA==", "signature": "vault:1:abc"}},
		"signature not b64":   {"kms/verify/ec256", map[string]interface{}{"input": "eA==", "signature": "vault:v1:@@@"}},
		"no signature":        {"kms/verify/ec256", map[string]interface{}{"input": "eA=="}},
		"private export":      {"kms/export/signing-key/ec256", nil},
	} {
		method := "POST"
		if strings.HasPrefix(tc.path, "kms/export") {
			method = "GET"
		}
		status, resp := v.raw(method, tc.path, v.token, tc.body)
		if status != http.StatusBadRequest {
			t.Errorf("%s: %d %v, want 400", name, status, resp)
		}
	}

	v.cli("write", "-f", "kms/keys/ec256/deactivate")
	v.cli("write", "-f", "kms/keys/rsa/deactivate")
	for path, body := range map[string]map[string]interface{}{
		"kms/sign/ec256":   {"input": "eA=="},
		"kms/verify/ec256": {"input": "eA==", "signature": sig},
		"kms/decrypt/rsa":  {"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(make([]byte, 256))},
	} {
		status, resp := v.raw("POST", path, v.token, body)
		if status != 400 || !strings.Contains(fmt.Sprint(resp["errors"]), "deactivated") {
			t.Errorf("%s on a deactivated key: %d %v", path, status, resp)
		}
	}
}

// openTokenSession opens tok from this process, apart from Vault, and logs
// in. NSS softokn takes its whole configuration as the C_Initialize
// parameter string (a NUL-terminated C string in pReserved) and shares the
// sql: database with the plugin's process.
func openTokenSession(t *testing.T, tok *tokentest.Token) (*pkcs11.Ctx, pkcs11.SessionHandle) {
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
	slot := findSlot(t, p11, tok.Label)
	sh, err := p11.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p11.Login(sh, pkcs11.CKU_USER, tok.PIN); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p11.Logout(sh)
		_ = p11.CloseSession(sh)
		_ = p11.Finalize()
		p11.Destroy()
	})
	return p11, sh
}

func findObject(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, id []byte, class uint) pkcs11.ObjectHandle {
	t.Helper()
	if err := p11.FindObjectsInit(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
	}); err != nil {
		t.Fatal(err)
	}
	handles, _, err := p11.FindObjects(sh, 4)
	_ = p11.FindObjectsFinal(sh)
	if err != nil || len(handles) != 1 {
		t.Fatalf("object %x class %d: %d found, %v", id, class, len(handles), err)
	}
	return handles[0]
}
