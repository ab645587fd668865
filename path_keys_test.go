package hsmkms

import (
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func TestCreateEveryAESSizeBothForms(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	for _, tc := range []struct {
		name string
		data map[string]interface{}
		typ  string
	}{
		{"t128", map[string]interface{}{"type": "aes128-gcm96"}, "aes128-gcm96"},
		{"t192", map[string]interface{}{"type": "aes192-gcm96"}, "aes192-gcm96"},
		{"t256", map[string]interface{}{"type": "aes256-gcm96"}, "aes256-gcm96"},
		{"default-type", nil, "aes256-gcm96"},
		{"jwk128", map[string]interface{}{"type": "oct", "size": 128}, "aes128-gcm96"},
		{"jwk192", map[string]interface{}{"type": "oct", "size": 192}, "aes192-gcm96"},
		{"jwk256", map[string]interface{}{"type": "oct", "size": 256}, "aes256-gcm96"},
	} {
		resp := m.mustOK(logical.UpdateOperation, "keys/"+tc.name, tc.data)
		if resp.Data["type"] != tc.typ || resp.Data["state"] != keyring.StateActive || resp.Data["latest_version"] != 1 {
			t.Fatalf("%s: %v", tc.name, resp.Data)
		}
		if got := decrypt(t, m, tc.name, encrypt(t, m, tc.name, "hello "+tc.name, nil), nil); got != "hello "+tc.name {
			t.Fatalf("%s: round trip gave %q", tc.name, got)
		}
	}
	list := m.mustOK(logical.ListOperation, "keys/", nil)
	if keys := list.Data["keys"].([]string); len(keys) != 8 { // 7 + default
		t.Fatalf("list: %v", keys)
	}
}

// As in Transit, creating an existing key answers the key as it is; other
// parameters change nothing and are named in a warning.
func TestCreateIsIdempotentAndWarnsOnConflicts(t *testing.T) {
	m := configuredMount(t, nil)
	first := m.mustOK(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "aes128-gcm96"})
	again := m.mustOK(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "oct", "size": 128})
	if dump(first.Data["keys"]) != dump(again.Data["keys"]) {
		t.Fatalf("second create changed the key: %v -> %v", first.Data["keys"], again.Data["keys"])
	}
	if len(again.Warnings) != 0 {
		t.Fatalf("the same parameters gave warnings: %v", again.Warnings)
	}
	for _, other := range []map[string]interface{}{{"type": "aes256-gcm96"}, {"type": "aes128-gcm96", "operations": "encrypt"}} {
		resp := m.mustOK(logical.UpdateOperation, "keys/k", other)
		if resp.Data["type"] != "aes128-gcm96" || len(resp.Data["operations"].([]string)) != 4 || dump(resp.Data["keys"]) != dump(first.Data["keys"]) {
			t.Fatalf("create with %v changed the key: %v", other, resp.Data)
		}
		if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "already exists") {
			t.Fatalf("create with %v: warnings %v", other, resp.Warnings)
		}
	}
}

func TestCreateRejectsBadParameters(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "des"}, "unknown key type")
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "oct", "size": 100}, "not an AES key size")
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "oct"}, "needs size")
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "hmac", "size": 100}, "HMAC key size 100")
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "RSA", "size": 1024}, "needs size 2048")
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "EC", "curve": "P-224"}, "needs curve")
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"type": "ecdsa-p256", "operations": "encrypt"}, "not allowed")
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"operations": "encrypt,sign"}, `operation "sign" is not allowed`)
	m.mustFail(logical.UpdateOperation, "keys/k", map[string]interface{}{"residency": "cloud"}, "residency")
	if resp, _ := m.do(logical.ReadOperation, "keys/k", nil); resp != nil {
		t.Fatal("a refused create left a key")
	}
}

func TestBadKeyNames(t *testing.T) {
	m := configuredMount(t, nil)
	long := strings.Repeat("a", 1024)
	for name, want := range map[string]string{
		"..":      "must not contain '..'",
		"a..b":    "must not contain '..'",
		".hidden": "must start with a letter or digit",
		"a b":     "may hold only",
		long:      "1024 characters long",
	} {
		m.mustFail(logical.UpdateOperation, "keys/"+name, nil, want)
		m.mustFail(logical.UpdateOperation, "encrypt/"+name, map[string]interface{}{"plaintext": "aGk="}, want)
		m.mustFail(logical.UpdateOperation, "decrypt/"+name, map[string]interface{}{"ciphertext": "vault:v1:aGk="}, want)
	}
}

func TestQuotaCountsTheDefaultKey(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 3, "deletion_window": "0s"})
	m.mustOK(logical.UpdateOperation, "keys/a", nil)
	m.mustOK(logical.UpdateOperation, "keys/b", nil)
	m.mustFail(logical.UpdateOperation, "keys/c", nil, "quota of 3 keys")
	// An existing key can still be "created" again past the quota.
	m.mustOK(logical.UpdateOperation, "keys/a", nil)
	m.mustOK(logical.UpdateOperation, "keys/b/deactivate", nil)
	m.mustOK(logical.DeleteOperation, "keys/b", nil)
	m.mustOK(logical.UpdateOperation, "keys/c", nil)
}

func TestDeleteRules(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"deletion_window": "0s"}) // Transit's delete
	m.mustFail(logical.DeleteOperation, "keys/default", nil, "default key and can never be deleted")
	m.mustOK(logical.UpdateOperation, "keys/default/deactivate", nil)
	m.mustFail(logical.DeleteOperation, "keys/default", nil, "default key and can never be deleted")
	m.mustOK(logical.UpdateOperation, "keys/default/activate", nil)

	resp := m.mustOK(logical.UpdateOperation, "keys/gone", nil)
	m.mustFail(logical.DeleteOperation, "keys/gone", nil, "is active and its deletion_allowed is false")
	id := m.objectID("gone", 1)
	m.mustOK(logical.UpdateOperation, "keys/gone/deactivate", nil)
	m.mustOK(logical.DeleteOperation, "keys/gone", nil)
	if r, _ := m.do(logical.ReadOperation, "keys/gone", nil); r != nil {
		t.Fatal("key still readable after delete")
	}
	client, _, _ := m.b.hsmClient(context.Background(), m.storage)
	if ok, err := client.ObjectExists(context.Background(), id); err != nil || ok {
		t.Fatalf("HSM object survived delete: %v %v (%v)", ok, err, resp.Data)
	}
	m.mustFail(logical.UpdateOperation, "keys/gone/activate", nil, `no key named "gone"`)

	// Transit's way, as the Terraform provider destroys keys: set
	// deletion_allowed, then delete the active key.
	m.mustOK(logical.UpdateOperation, "keys/tf", nil)
	m.mustOK(logical.UpdateOperation, "keys/tf/config", map[string]interface{}{"deletion_allowed": true})
	m.mustOK(logical.DeleteOperation, "keys/tf", nil)
	if r, _ := m.do(logical.ReadOperation, "keys/tf", nil); r != nil {
		t.Fatal("a key with deletion_allowed survived delete")
	}
	m.mustOK(logical.UpdateOperation, "keys/default/config", map[string]interface{}{"deletion_allowed": true})
	m.mustFail(logical.DeleteOperation, "keys/default", nil, "default key and can never be deleted")
}

func TestDeactivatedKeyRefusesCrypto(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	ct := encrypt(t, m, "k", "data", nil)
	m.mustOK(logical.UpdateOperation, "keys/k/deactivate", nil)
	m.mustFail(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"plaintext": "ZGF0YQ=="}, "is deactivated")
	m.mustFail(logical.UpdateOperation, "decrypt/k", map[string]interface{}{"ciphertext": ct}, "is deactivated")
	resp := m.mustOK(logical.ReadOperation, "keys/k", nil)
	if resp.Data["state"] != keyring.StateDeactivated {
		t.Fatalf("state %v", resp.Data["state"])
	}
	m.mustOK(logical.UpdateOperation, "keys/k/activate", nil)
	if decrypt(t, m, "k", ct, nil) != "data" {
		t.Fatal("reactivated key does not decrypt")
	}
}

func TestOperationsAreEnforced(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/enc-only", map[string]interface{}{"operations": "encrypt"})
	ct := encrypt(t, m, "enc-only", "x", nil)
	m.mustFail(logical.UpdateOperation, "decrypt/enc-only", map[string]interface{}{"ciphertext": ct}, "does not allow the decrypt operation")
}

func TestKeyReadHasTransitFields(t *testing.T) {
	m := configuredMount(t, nil)
	resp := m.mustOK(logical.UpdateOperation, "keys/k", map[string]interface{}{"description": "for app1"})
	for _, field := range []string{"name", "type", "keys", "latest_version", "min_available_version", "min_decryption_version",
		"min_encryption_version", "deletion_allowed", "supports_encryption", "supports_decryption", "supports_signing",
		"state", "operations", "description", "residency"} {
		if _, ok := resp.Data[field]; !ok {
			t.Errorf("key read lacks %q", field)
		}
	}
	if _, ok := resp.Data["keys"].(map[string]interface{})["1"].(int64); !ok {
		t.Errorf("keys map: %v", resp.Data["keys"])
	}
	if resp.Data["description"] != "for app1" || resp.Data["supports_encryption"] != true {
		t.Errorf("read: %v", resp.Data)
	}
}

// walEntry is the stored form of the keyring's WAL entries, which the
// rollback must keep reading.
type walEntry struct {
	Name     string `json:"name"`
	ObjectID string `json:"object_id"`
	Label    string `json:"label,omitempty"`
}

// A crash between creating the HSM object and storing the key leaves a WAL
// entry; the rollback destroys the orphan and leaves complete keys alone.
func TestWALRollbackDestroysOrphanObjects(t *testing.T) {
	m := configuredMount(t, nil)
	ctx := context.Background()
	client, _, err := m.b.hsmClient(ctx, m.storage)
	if err != nil {
		t.Fatal(err)
	}
	// An orphan the WAL entry names with its label; one an older release
	// recorded without a label (this mount's label decides); and an object
	// of another application whose CKA_ID a WAL entry names: never ours.
	made := func(owner, label string, withLabel bool) []byte {
		t.Helper()
		id, err := client.NewObjectID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		entry := &walEntry{Name: owner, ObjectID: hex.EncodeToString(id)}
		if withLabel {
			entry.Label = label
		}
		if _, err := framework.PutWAL(ctx, m.storage, keyring.WALKindObject, entry); err != nil {
			t.Fatal(err)
		}
		if err := client.GenerateAESKey(ctx, id, label, 256, hsm.Usage{Encrypt: true}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	orphan := made("crashed", keyring.ObjectLabel(m.b.owner, "crashed", 1), true)
	legacyOrphan := made("crashed-earlier", keyring.ObjectLabel(m.b.owner, "crashed-earlier", 1), false)
	foreign := made("crashed-foreign", "another application's key", false)
	t.Cleanup(func() { _ = client.DestroyObjects(ctx, foreign, anyLabel) })
	// A finished key whose WAL entry was not deleted.
	m.mustOK(logical.UpdateOperation, "keys/finished", nil)
	finished := m.objectID("finished", 1)
	if _, err := framework.PutWAL(ctx, m.storage, keyring.WALKindObject, &walEntry{Name: "finished", ObjectID: hex.EncodeToString(finished)}); err != nil {
		t.Fatal(err)
	}

	if _, err := m.do(logical.RollbackOperation, "", map[string]interface{}{"immediate": true}); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	for _, id := range [][]byte{orphan, legacyOrphan} {
		if ok, err := client.ObjectExists(ctx, id); err != nil || ok {
			t.Fatalf("orphan object survived the rollback: %v %v", ok, err)
		}
	}
	if ok, err := client.ObjectExists(ctx, foreign); err != nil || !ok {
		t.Fatalf("the rollback destroyed an object the mount did not make: %v %v", ok, err)
	}
	if ok, err := client.ObjectExists(ctx, finished); err != nil || !ok {
		t.Fatalf("the rollback destroyed a live key: %v %v", ok, err)
	}
	if ids, _ := framework.ListWAL(ctx, m.storage); len(ids) != 0 {
		t.Fatalf("WAL entries left: %v", ids)
	}
	encrypt(t, m, "finished", "still works", nil)
}

func (m *testMount) objectID(name string, version int) []byte {
	m.t.Helper()
	k, err := keyring.Load(context.Background(), m.storage, name)
	if err != nil || k == nil {
		m.t.Fatalf("load %s: %v", name, err)
	}
	return k.Versions[version].ObjectID
}

// Another node's change reaches this one through Invalidate.
func TestInvalidateDropsCachedKeys(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	encrypt(t, m, "k", "x", nil) // cached now
	k, _ := keyring.Load(context.Background(), m.storage, "k")
	k.State = keyring.StateDeactivated
	entry, err := logical.StorageEntryJSON(keyring.KeyStoragePrefix+"k", k)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.storage.Put(context.Background(), entry); err != nil { // another node's write
		t.Fatal(err)
	}
	encrypt(t, m, "k", "still cached", nil)
	m.b.invalidate(context.Background(), keyring.KeyStoragePrefix+"k")
	m.mustFail(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"plaintext": b64("x")}, "deactivated")
}

// ambiguousStorage writes key entries and then reports failure, once: a
// storage error does not say whether the write landed.
type ambiguousStorage struct {
	logical.Storage
	failed atomic.Bool
}

func (s *ambiguousStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if err := s.Storage.Put(ctx, e); err != nil {
		return err
	}
	if strings.HasPrefix(e.Key, keyring.KeyStoragePrefix) && s.failed.CompareAndSwap(false, true) {
		return errors.New("storage timed out (the write may have landed)")
	}
	return nil
}

// After an ambiguous storage error the HSM object stays: storage may point
// at it. The WAL rollback, which looks in storage, keeps it too.
func TestAmbiguousStorageErrorKeepsTheHSMObject(t *testing.T) {
	m := configuredMount(t, nil)
	ctx := context.Background()
	amb := &ambiguousStorage{Storage: m.storage}
	m.storage = amb
	if _, err := m.do(logical.UpdateOperation, "keys/ambiguous", nil); err == nil {
		t.Fatal("the storage error was not reported")
	}
	k, err := keyring.Load(ctx, m.storage, "ambiguous")
	if err != nil || k == nil {
		t.Fatalf("the write landed, yet the key is not in storage: %v", err)
	}
	client, _, err := m.b.hsmClient(ctx, m.storage)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := client.ObjectExists(ctx, k.Versions[1].ObjectID); err != nil || !ok {
		t.Fatalf("the HSM object of a stored key was destroyed: %v %v", ok, err)
	}
	if _, err := m.do(logical.RollbackOperation, "", map[string]interface{}{"immediate": true}); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if got := decrypt(t, m, "ambiguous", encrypt(t, m, "ambiguous", "still here", nil), nil); got != "still here" {
		t.Fatalf("the key does not work: %q", got)
	}
}
