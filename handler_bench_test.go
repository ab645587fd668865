package hsmkms

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

// The handler benchmarks run the backend's request path in process against
// SoftHSM; each has a twin that makes only the hsm/ call the handler makes,
// so the plugin's own overhead is the difference.

func benchMount(b *testing.B) *testMount {
	b.Helper()
	allowed, err := libraryAllowList()
	if err != nil {
		b.Fatal(err)
	}
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	be := newBackend(allowed)
	if err := be.Setup(context.Background(), conf); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.clean(context.Background()) })
	m := &testMount{b: be, storage: conf.StorageView}
	m.benchDo(b, logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN, "max_keys": 0,
	})
	return m
}

func (m *testMount) benchDo(b *testing.B, op logical.Operation, path string, data map[string]interface{}) *logical.Response {
	resp, err := m.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op, Path: path, Data: data, Storage: m.storage, MountPoint: "kms/",
	})
	if err != nil || (resp != nil && resp.IsError()) {
		b.Fatalf("%s %s: %v %v", op, path, err, resp)
	}
	return resp
}

var plaintext64 = base64.StdEncoding.EncodeToString(make([]byte, 64))

func BenchmarkHandlerEncryptAES64(b *testing.B) {
	m := benchMount(b)
	m.benchDo(b, logical.UpdateOperation, "keys/bench-aes", nil)
	data := map[string]interface{}{"plaintext": plaintext64}
	b.ResetTimer()
	for b.Loop() {
		m.benchDo(b, logical.UpdateOperation, "encrypt/bench-aes", data)
	}
}

func BenchmarkHSMEncryptAES64(b *testing.B) {
	m := benchMount(b)
	m.benchDo(b, logical.UpdateOperation, "keys/bench-aes", nil)
	k, _ := keyring.Load(context.Background(), m.storage, "bench-aes")
	client, _, _ := m.b.hsmClient(context.Background(), m.storage)
	pt, aad := make([]byte, 64), wire.AAD(wire.DomainAEAD, nil, nil, nil)
	b.ResetTimer()
	for b.Loop() {
		if _, err := client.EncryptGCM(context.Background(), k.Versions[1].ObjectID, pt, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHandlerDecryptAES64(b *testing.B) {
	m := benchMount(b)
	m.benchDo(b, logical.UpdateOperation, "keys/bench-aes", nil)
	ct := m.benchDo(b, logical.UpdateOperation, "encrypt/bench-aes", map[string]interface{}{"plaintext": plaintext64}).Data["ciphertext"]
	data := map[string]interface{}{"ciphertext": ct}
	b.ResetTimer()
	for b.Loop() {
		m.benchDo(b, logical.UpdateOperation, "decrypt/bench-aes", data)
	}
}

func BenchmarkHandlerEncryptBatch100(b *testing.B) {
	m := benchMount(b)
	m.benchDo(b, logical.UpdateOperation, "keys/bench-aes", nil)
	items := make([]interface{}, 100)
	for i := range items {
		items[i] = map[string]interface{}{"plaintext": plaintext64}
	}
	data := map[string]interface{}{"batch_input": items}
	b.ResetTimer()
	for b.Loop() {
		m.benchDo(b, logical.UpdateOperation, "encrypt/bench-aes", data)
	}
}

func BenchmarkHandlerSignRSA2048(b *testing.B) {
	m := benchMount(b)
	m.benchDo(b, logical.UpdateOperation, "keys/bench-rsa", map[string]interface{}{"type": "rsa-2048"})
	data := map[string]interface{}{"input": plaintext64, "signature_algorithm": "pkcs1v15"}
	b.ResetTimer()
	for b.Loop() {
		m.benchDo(b, logical.UpdateOperation, "sign/bench-rsa", data)
	}
}

func BenchmarkHSMSignRSA2048(b *testing.B) {
	m := benchMount(b)
	m.benchDo(b, logical.UpdateOperation, "keys/bench-rsa", map[string]interface{}{"type": "rsa-2048"})
	k, _ := keyring.Load(context.Background(), m.storage, "bench-rsa")
	pub, _ := x509.ParsePKIXPublicKey(k.Versions[1].PublicKey)
	client, _, _ := m.b.hsmClient(context.Background(), m.storage)
	input := make([]byte, 64)
	b.ResetTimer()
	for b.Loop() {
		digest := sha256.Sum256(input)
		if _, err := client.SignRSAPKCS1v15(context.Background(), k.Versions[1].ObjectID, pub.(*rsa.PublicKey), crypto.SHA256, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHandlerSignECDSAP256(b *testing.B) {
	m := benchMount(b)
	m.benchDo(b, logical.UpdateOperation, "keys/bench-ec", map[string]interface{}{"type": "ecdsa-p256"})
	data := map[string]interface{}{"input": plaintext64}
	b.ResetTimer()
	for b.Loop() {
		m.benchDo(b, logical.UpdateOperation, "sign/bench-ec", data)
	}
}

func BenchmarkHandlerKeyRead(b *testing.B) {
	m := benchMount(b)
	m.benchDo(b, logical.UpdateOperation, "keys/bench-aes", nil)
	b.ResetTimer()
	for b.Loop() {
		m.benchDo(b, logical.ReadOperation, "keys/bench-aes", nil)
	}
}
