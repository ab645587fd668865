package hsmkms

import (
	"context"
	"encoding/base64"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// Wrapped keys of every type round-trip, survive a KEK rotation and a
// backup, delete and restore, on both tokens.
func TestWrappedKeysThroughTheBackend(t *testing.T) {
	for _, tok := range []string{"softhsm2", "nss"} {
		t.Run(tok, func(t *testing.T) {
			m := configuredMount(t, map[string]interface{}{"default_residency": "wrapped", "max_keys": 0, "deletion_window": "0s"})
			if tok == "nss" {
				m = nssMount(t)
				m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{"default_residency": "wrapped", "max_keys": 0, "deletion_window": "0s"})
			}
			encrypt := func(name string) (string, string) {
				t.Helper()
				pt := base64.StdEncoding.EncodeToString([]byte("wrapped " + name))
				return pt, m.mustOK(logical.UpdateOperation, "encrypt/"+name, map[string]interface{}{"plaintext": pt}).Data["ciphertext"].(string)
			}
			for _, typ := range []string{"aes128-gcm96", "aes256-gcm96", "rsa-2048", "ecdsa-p256", "ecdsa-p384", "hmac"} {
				resp := m.mustOK(logical.UpdateOperation, "keys/w-"+typ, map[string]interface{}{"type": typ})
				if resp.Data["residency"] != keyring.ResidencyWrapped {
					t.Fatalf("%s: residency %v", typ, resp.Data["residency"])
				}
				input := base64.StdEncoding.EncodeToString([]byte("data"))
				switch typ {
				case "hmac":
					m.mustOK(logical.UpdateOperation, "hmac/w-"+typ, map[string]interface{}{"input": input})
				case "rsa-2048", "ecdsa-p256", "ecdsa-p384":
					sig := m.mustOK(logical.UpdateOperation, "sign/w-"+typ, map[string]interface{}{"input": input}).Data["signature"]
					if m.mustOK(logical.UpdateOperation, "verify/w-"+typ, map[string]interface{}{"input": input, "signature": sig}).Data["valid"] != true {
						t.Fatalf("%s: signature does not verify", typ)
					}
				default:
					pt, ct := encrypt("w-" + typ)
					if got := m.mustOK(logical.UpdateOperation, "decrypt/w-"+typ, map[string]interface{}{"ciphertext": ct}).Data["plaintext"]; got != pt {
						t.Fatalf("%s: decrypted %v", typ, got)
					}
				}
			}
			pt, ct := encrypt("w-aes256-gcm96")
			// Another node changed the key: its unwrapped copy goes here.
			client, _, err := m.b.hsmClient(context.Background(), m.storage)
			if err != nil {
				t.Fatal(err)
			}
			before := client.UnwrappedCacheStats()
			m.b.invalidate(context.Background(), keyring.KeyStoragePrefix+"w-aes256-gcm96")
			if after := client.UnwrappedCacheStats(); after.Entries != before.Entries-1 || after.Evictions != before.Evictions+1 {
				t.Fatalf("HA invalidation left the unwrapped copy: before %+v, after %+v", before, after)
			}
			m.mustOK(logical.UpdateOperation, "config/kek/rotate", nil)
			// Version 1 is retired, not destroyed: backups made under it
			// still restore.
			kek := waitForRewrap(t, m)
			if versions, retired := dump(kek["versions"]), dump(kek["retired_versions"]); versions != "[1 2]" || retired != "[1]" {
				t.Fatalf("KEK versions after the rotation: %s, retired %s", versions, retired)
			}
			backup := m.mustOK(logical.ReadOperation, "backup/w-aes256-gcm96", nil).Data["backup"].(string)
			m.mustOK(logical.UpdateOperation, "keys/w-aes256-gcm96/deactivate", nil)
			m.mustOK(logical.DeleteOperation, "keys/w-aes256-gcm96", nil)
			m.mustOK(logical.UpdateOperation, "restore", map[string]interface{}{"backup": backup})
			if got := m.mustOK(logical.UpdateOperation, "decrypt/w-aes256-gcm96", map[string]interface{}{"ciphertext": ct}).Data["plaintext"]; got != pt {
				t.Fatalf("after KEK rotation and restore: decrypted %v", got)
			}
			m.mustFail(logical.UpdateOperation, "restore", map[string]interface{}{"backup": backup}, "force")
			m.mustFail(logical.ReadOperation, "backup/default", nil, "non-extractable")
		})
	}
}
