package hsmkms

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func TestRotateMinVersionsAndRewrap(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	v1 := encrypt(t, m, "k", "first", map[string]interface{}{"context": b64("c")})
	m.mustOK(logical.UpdateOperation, "keys/k/rotate", nil)
	resp := m.mustOK(logical.UpdateOperation, "keys/k/rotate", nil)
	if resp.Data["latest_version"] != 3 || len(resp.Data["keys"].(map[string]interface{})) != 3 {
		t.Fatalf("after two rotations: %v", resp.Data)
	}
	if !strings.HasPrefix(encrypt(t, m, "k", "x", nil), "vault:v3:") {
		t.Fatal("encrypt does not use the latest version")
	}
	v2 := encrypt(t, m, "k", "second", map[string]interface{}{"key_version": 2, "context": b64("c")})
	if !strings.HasPrefix(v2, "vault:v2:") {
		t.Fatalf("key_version 2 gave %s", v2)
	}
	if decrypt(t, m, "k", v1, map[string]interface{}{"context": b64("c")}) != "first" {
		t.Fatal("v1 no longer decrypts after rotation")
	}
	// Each version is its own HSM object.
	if string(m.objectID("k", 1)) == string(m.objectID("k", 2)) {
		t.Fatal("rotation reused the HSM object")
	}

	m.mustOK(logical.UpdateOperation, "keys/k/config", map[string]interface{}{"min_decryption_version": 2})
	m.mustFail(logical.UpdateOperation, "decrypt/k", map[string]interface{}{"ciphertext": v1, "context": b64("c")}, "below min_decryption_version 2")
	if decrypt(t, m, "k", v2, map[string]interface{}{"context": b64("c")}) != "second" {
		t.Fatal("v2 does not decrypt")
	}

	resp = m.mustOK(logical.UpdateOperation, "rewrap/k", map[string]interface{}{"ciphertext": v2, "context": b64("c")})
	v3 := resp.Data["ciphertext"].(string)
	if !strings.HasPrefix(v3, "vault:v3:") || resp.Data["plaintext"] != nil {
		t.Fatalf("rewrap: %v", resp.Data)
	}
	if decrypt(t, m, "k", v3, map[string]interface{}{"context": b64("c")}) != "second" {
		t.Fatal("rewrapped ciphertext does not decrypt to the same plaintext")
	}
	m.mustFail(logical.UpdateOperation, "rewrap/k", map[string]interface{}{"ciphertext": v2}, "could not be decrypted")

	m.mustOK(logical.UpdateOperation, "keys/k/config", map[string]interface{}{"min_encryption_version": 3})
	m.mustFail(logical.UpdateOperation, "encrypt/k", map[string]interface{}{"plaintext": b64("x"), "key_version": 2}, "below min_encryption_version 3")
	for want, data := range map[string]map[string]interface{}{
		"min_decryption_version must be between 1": {"min_decryption_version": 4},
		"must be 0 or at least min_decryption":     {"min_decryption_version": 3, "min_encryption_version": 2},
		"at least 1h0m0s":                          {"auto_rotate_period": 60},
	} {
		m.mustFail(logical.UpdateOperation, "keys/k/config", data, want)
	}
	m.mustFail(logical.UpdateOperation, "keys/missing/rotate", nil, "no key named")
}

func TestRotateAsymmetricKeys(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p256"})
	sig1 := m.mustOK(logical.UpdateOperation, "sign/ec", map[string]interface{}{"input": b64("x")}).Data["signature"].(string)
	m.mustOK(logical.UpdateOperation, "keys/ec/rotate", nil)
	sig2 := m.mustOK(logical.UpdateOperation, "sign/ec", map[string]interface{}{"input": b64("x")}).Data["signature"].(string)
	if !strings.HasPrefix(sig2, "vault:v2:") {
		t.Fatalf("signature after rotation: %s", sig2)
	}
	for _, sig := range []string{sig1, sig2} {
		if m.mustOK(logical.UpdateOperation, "verify/ec", map[string]interface{}{"input": b64("x"), "signature": sig}).Data["valid"] != true {
			t.Fatalf("%s does not verify", sig)
		}
	}
	exp := m.mustOK(logical.ReadOperation, "export/public-key/ec", nil).Data["keys"].(map[string]string)
	if len(exp) != 2 || exp["1"] == exp["2"] {
		t.Fatalf("export after rotation: %v", exp)
	}
}

// Automatic rotation runs from the periodic function, judged by a clock the
// test moves; the schedule lives in storage, so a new backend on the same
// storage (a restart) keeps it.
func TestAutoRotationWithATestClock(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/auto", map[string]interface{}{"auto_rotate_period": "1h"})
	m.mustOK(logical.UpdateOperation, "keys/manual", nil)
	clock := time.Now()
	m.b.ring.Now = func() time.Time { return clock }
	periodic := func(b *backend) {
		t.Helper()
		if err := b.PeriodicFunc(context.Background(), &logical.Request{Storage: m.storage}); err != nil {
			t.Fatal(err)
		}
	}
	reader := m
	latest := func(name string) int {
		return reader.mustOK(logical.ReadOperation, "keys/"+name, nil).Data["latest_version"].(int)
	}
	clock = clock.Add(59 * time.Minute)
	periodic(m.b)
	if latest("auto") != 1 {
		t.Fatal("rotated before the period ran out")
	}
	// Checks run once an hour, as Transit's: the next is an hour after
	// the first, and rotates what ran out meanwhile.
	clock = clock.Add(2 * time.Minute)
	periodic(m.b)
	if latest("auto") != 1 {
		t.Fatal("checked again within the hour")
	}
	clock = clock.Add(58 * time.Minute)
	periodic(m.b)
	if latest("auto") != 2 || latest("manual") != 1 {
		t.Fatalf("after the period: auto v%d, manual v%d", latest("auto"), latest("manual"))
	}
	periodic(m.b)
	if latest("auto") != 2 {
		t.Fatal("rotated twice in one period")
	}

	// A restarted backend on the same storage picks up the schedule.
	restarted := newMount(t)
	restarted.storage = m.storage
	restarted.b.ring.Now = func() time.Time { return clock.Add(2 * time.Hour) }
	periodic(restarted.b)
	reader = restarted // the old backend is gone after a restart, and its cache with it
	if latest("auto") != 3 {
		t.Fatalf("after a restart and another period: v%d", latest("auto"))
	}
	if decrypt(t, restarted, "auto", encrypt(t, restarted, "auto", "x", nil), nil) != "x" {
		t.Fatal("automatically rotated key does not work")
	}
}

// On a performance standby (and replication secondaries) the periodic
// function must neither write storage nor touch the HSM.
func TestNoAutoRotationOnAPerformanceStandby(t *testing.T) {
	allowed, err := libraryAllowList()
	if err != nil {
		t.Fatal(err)
	}
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	view := &logical.StaticSystemView{}
	conf.System = view
	b := newBackend(allowed)
	ft := faulttoken.New(nil)
	b.intercept = ft.Intercept
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.clean(context.Background()) })
	m := &testMount{t: t, b: b, storage: conf.StorageView}
	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN,
	})
	m.mustOK(logical.UpdateOperation, "keys/standby-auto", map[string]interface{}{"auto_rotate_period": "1h"})
	b.ring.Now = func() time.Time { return time.Now().Add(3 * time.Hour) }

	view.ReplicationStateVal = consts.ReplicationPerformanceStandby
	before := ft.TotalCalls()
	if err := b.PeriodicFunc(context.Background(), &logical.Request{Storage: m.storage}); err != nil {
		t.Fatal(err)
	}
	if n := ft.TotalCalls() - before; n != 0 {
		t.Fatalf("the periodic function made %d HSM calls on a performance standby", n)
	}
	if v := m.mustOK(logical.ReadOperation, "keys/standby-auto", nil).Data["latest_version"]; v != 1 {
		t.Fatalf("rotated on a performance standby: v%v", v)
	}
	// The same backend as an active node rotates.
	view.ReplicationStateVal = consts.ReplicationPerformancePrimary
	if err := b.PeriodicFunc(context.Background(), &logical.Request{Storage: m.storage}); err != nil {
		t.Fatal(err)
	}
	if v := m.mustOK(logical.ReadOperation, "keys/standby-auto", nil).Data["latest_version"]; v != 2 {
		t.Fatalf("the active node did not rotate: v%v", v)
	}
}

// countingStorage counts the reads of key entries and lists of keys.
type countingStorage struct {
	logical.Storage
	keyGets, keyLists int
}

func (c *countingStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if strings.HasPrefix(key, keyring.KeyStoragePrefix) {
		c.keyGets++
	}
	return c.Storage.Get(ctx, key)
}

func (c *countingStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if prefix == keyring.KeyStoragePrefix {
		c.keyLists++
	}
	return c.Storage.List(ctx, prefix)
}

// The periodic check reads the keys that rotate, not every key: a mount
// may hold 100,000. Keys stored before the index existed are indexed once.
func TestAutoRotationReadsOnlyKeysThatRotate(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	for i := range 30 {
		m.mustOK(logical.UpdateOperation, fmt.Sprintf("keys/still-%d", i), nil)
	}
	m.mustOK(logical.UpdateOperation, "keys/auto", map[string]interface{}{"auto_rotate_period": "1h"})
	// As if stored by an earlier version: no index yet.
	if err := m.storage.Delete(context.Background(), keyring.RotationIndexPrefix+"auto"); err != nil {
		t.Fatal(err)
	}
	clock := time.Now().Add(2 * time.Hour)
	restarted := newMount(t) // an empty key cache, as after a restart
	restarted.storage = m.storage
	restarted.b.ring.Now = func() time.Time { return clock }
	counting := &countingStorage{Storage: m.storage}
	run := func() {
		t.Helper()
		if err := restarted.b.PeriodicFunc(context.Background(), &logical.Request{Storage: counting}); err != nil {
			t.Fatal(err)
		}
	}
	run()
	if counting.keyLists != 1 {
		t.Fatalf("building the index listed the keys %d times", counting.keyLists)
	}
	if v := restarted.mustOK(logical.ReadOperation, "keys/auto", nil).Data["latest_version"]; v != 2 {
		t.Fatalf("the unindexed key was not rotated: v%v", v)
	}
	clock = clock.Add(2 * time.Hour)
	counting.keyGets, counting.keyLists = 0, 0
	restarted.b.ring.ForgetAll() // every read goes to storage
	run()
	if counting.keyLists != 0 || counting.keyGets > 2 {
		t.Fatalf("the check listed keys %d times and read %d key entries; want 0 and at most 2 (the rotating key)", counting.keyLists, counting.keyGets)
	}
	if v := restarted.mustOK(logical.ReadOperation, "keys/auto", nil).Data["latest_version"]; v != 3 {
		t.Fatalf("not rotated on the second check: v%v", v)
	}
}
