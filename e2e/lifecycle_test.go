package e2e

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

func TestVersionsRotationAndRewrap(t *testing.T) {
	eachToken(t, testVersionsRotationAndRewrap)
}

func testVersionsRotationAndRewrap(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/k", "type=aes256-gcm96")
	encrypt := func(text string, extra ...string) string {
		return strings.TrimSpace(v.cli(append([]string{"write", "-field=ciphertext", "kms/encrypt/k", "plaintext=" + b64(text)}, extra...)...))
	}
	decrypt := func(ct string) (string, int) {
		status, resp := v.raw("POST", "kms/decrypt/k", v.token, map[string]interface{}{"ciphertext": ct})
		if status != 200 {
			return fmt.Sprint(resp["errors"]), status
		}
		raw, _ := base64.StdEncoding.DecodeString(resp["data"].(map[string]interface{})["plaintext"].(string))
		return string(raw), status
	}
	ctV1 := encrypt("one")
	v.cli("write", "-f", "kms/keys/k/rotate")
	v.cli("write", "-f", "kms/keys/k/rotate")
	if got, _ := decrypt(ctV1); got != "one" {
		t.Fatalf("v1 after two rotations: %q", got)
	}
	ctV2 := encrypt("two", "key_version=2")
	ctV3 := encrypt("three")
	if !strings.HasPrefix(ctV2, "vault:v2:") || !strings.HasPrefix(ctV3, "vault:v3:") {
		t.Fatalf("versions: %s %s", ctV2, ctV3)
	}
	secret, err := v.client.Logical().Read("kms/keys/k")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := secret.Data["latest_version"].(json.Number).Int64(); n != 3 || len(secret.Data["keys"].(map[string]interface{})) != 3 {
		t.Fatalf("key read: %v", secret.Data)
	}

	v.cli("write", "kms/keys/k/config", "min_decryption_version=2")
	if msg, status := decrypt(ctV1); status != 400 || !strings.Contains(msg, "min_decryption_version 2") {
		t.Fatalf("v1 below min_decryption_version: %d %s", status, msg)
	}
	for ct, want := range map[string]string{ctV2: "two", ctV3: "three"} {
		if got, status := decrypt(ct); status != 200 || got != want {
			t.Fatalf("%s: %d %q", ct[:9], status, got)
		}
	}
	rewrapped := strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms/rewrap/k", "ciphertext="+ctV2))
	if !strings.HasPrefix(rewrapped, "vault:v3:") {
		t.Fatalf("rewrap gave %s", rewrapped)
	}
	if got, _ := decrypt(rewrapped); got != "two" {
		t.Fatalf("rewrapped decrypts to %q", got)
	}
}

// Envelope encryption as a user does it: a data key from the KMS encrypts a
// 10 MiB file locally; only the wrapped key is kept; later it is unwrapped
// and the file decrypts byte for byte.
func TestEnvelopeEncryptionOfALargeFile(t *testing.T) {
	eachToken(t, testEnvelopeEncryptionOfALargeFile)
}

func testEnvelopeEncryptionOfALargeFile(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/files", "type=aes256-gcm96")
	dir := t.TempDir()
	original := make([]byte, 10<<20)
	if _, err := rand.Read(original); err != nil {
		t.Fatal(err)
	}

	secret, err := v.client.Logical().Write("kms/datakey/plaintext/files", map[string]interface{}{
		"bits": 256, "encryption_context": map[string]string{"file": "report.bin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	dataKey, _ := base64.StdEncoding.DecodeString(secret.Data["plaintext"].(string))
	wrapped := secret.Data["ciphertext"].(string)
	sealed := sealFile(t, dataKey, original)
	clear(dataKey)
	if err := os.WriteFile(filepath.Join(dir, "report.bin.enc"), sealed, 0o600); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "report.bin.key"), wrapped)

	// Later: only the wrapped key and the encrypted file are left.
	wrappedAgain, _ := os.ReadFile(filepath.Join(dir, "report.bin.key"))
	secret, err = v.client.Logical().Write("kms/datakey/decrypt/files", map[string]interface{}{
		"ciphertext": string(wrappedAgain), "encryption_context": map[string]string{"file": "report.bin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	unwrapped, _ := base64.StdEncoding.DecodeString(secret.Data["plaintext"].(string))
	encrypted, _ := os.ReadFile(filepath.Join(dir, "report.bin.enc"))
	if !bytes.Equal(openFile(t, unwrapped, encrypted), original) {
		t.Fatal("the file did not decrypt byte for byte")
	}

	secret, err = v.client.Logical().Write("kms/datakey/wrapped/files", nil)
	if err != nil || secret.Data["plaintext"] != nil || secret.Data["ciphertext"] == nil {
		t.Fatalf("wrapped form: %v %v", secret, err)
	}
	for _, bits := range []int{63, 4104} {
		status, resp := v.raw("POST", "kms/datakey/plaintext/files", v.token, map[string]interface{}{"bits": bits})
		if status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp["errors"]), "multiple of 8") {
			t.Errorf("bits=%d: %d %v", bits, status, resp)
		}
	}
}

func newGCM(t *testing.T, key []byte) cipher.AEAD {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return gcm
}

func sealFile(t *testing.T, key, plaintext []byte) []byte {
	t.Helper()
	gcm := newGCM(t, key)
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	return gcm.Seal(nonce, nonce, plaintext, nil)
}

func openFile(t *testing.T, key, sealed []byte) []byte {
	t.Helper()
	gcm := newGCM(t, key)
	out, err := gcm.Open(nil, sealed[:gcm.NonceSize()], sealed[gcm.NonceSize():], nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
