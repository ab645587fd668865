package hsmkms

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// A delete schedules the key's deletion: pending, it serves nothing and
// says until when and how to cancel; reads and LIST still show it; its
// name cannot be reused. Cancelled and activated, every old ciphertext and
// signature works again.
func TestDeletionIsScheduledAndCanBeCancelled(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	m.mustOK(logical.UpdateOperation, "keys/aes", map[string]interface{}{"deletion_allowed": true})
	m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p256", "deletion_allowed": true})
	ct := encrypt(t, m, "aes", "kept through a cancelled deletion", nil)
	sig := m.mustOK(logical.UpdateOperation, "sign/ec", map[string]interface{}{"input": b64("signed")}).Data["signature"]

	before := m.b.ring.Now()
	for _, name := range []string{"aes", "ec"} {
		resp := m.mustOK(logical.DeleteOperation, "keys/"+name, nil)
		if resp.Data["state"] != keyring.StatePendingDeletion || len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[len(resp.Warnings)-1], "cancel_deletion") {
			t.Fatalf("delete of %s answered %v, warnings %v", name, resp.Data["state"], resp.Warnings)
		}
		date, err := time.Parse(time.RFC3339, resp.Data["deletion_date"].(string))
		if err != nil || date.Before(before.Add(defaultDeletionWindow-time.Minute)) || date.After(before.Add(defaultDeletionWindow+time.Minute)) {
			t.Fatalf("deletion_date %v (%v), want 7 days from now", resp.Data["deletion_date"], err)
		}
	}
	date := m.mustOK(logical.ReadOperation, "keys/aes", nil).Data["deletion_date"].(string)
	for path, data := range map[string]map[string]interface{}{
		"encrypt/aes": {"plaintext": b64("x")}, "decrypt/aes": {"ciphertext": ct},
		"datakey/plaintext/aes": nil, "rewrap/aes": {"ciphertext": ct}, "hmac/aes": {"input": b64("x")},
		"sign/ec": {"input": b64("x")}, "verify/ec": {"input": b64("signed"), "signature": sig},
		"keys/aes/rotate": nil, "keys/aes/activate": nil,
	} {
		m.mustFail(logical.UpdateOperation, path, data, date)
	}
	m.mustFail(logical.UpdateOperation, "keys/aes", map[string]interface{}{"type": "aes256-gcm96"}, "scheduled for deletion on "+date+"; its name cannot be reused")
	m.mustFail(logical.UpdateOperation, "keys/aes/import", map[string]interface{}{"jwk": `{"kty":"oct","k":"` + strings.Repeat("A", 43) + `"}`}, "cannot be reused")
	list := m.mustOK(logical.ListOperation, "keys/", nil)
	if info := list.Data["key_info"].(map[string]interface{})["aes"].(map[string]interface{}); info["state"] != keyring.StatePendingDeletion || info["deletion_date"] != date {
		t.Fatalf("LIST key_info of a pending key: %v", info)
	}
	again := m.mustOK(logical.DeleteOperation, "keys/aes", nil)
	if again.Data["deletion_date"] != date {
		t.Fatalf("a second delete moved the date: %v", again.Data["deletion_date"])
	}

	for _, name := range []string{"aes", "ec"} {
		resp := m.mustOK(logical.UpdateOperation, "keys/"+name+"/cancel_deletion", nil)
		if resp.Data["state"] != keyring.StateDeactivated || resp.Data["deletion_date"] != nil {
			t.Fatalf("cancel_deletion of %s: %v", name, resp.Data)
		}
		m.mustOK(logical.UpdateOperation, "keys/"+name+"/activate", nil)
	}
	if got := decrypt(t, m, "aes", ct, nil); got != "kept through a cancelled deletion" {
		t.Fatalf("after the cancelled deletion: decrypted %q", got)
	}
	if v := m.mustOK(logical.UpdateOperation, "verify/ec", map[string]interface{}{"input": b64("signed"), "signature": sig}).Data["valid"]; v != true {
		t.Fatal("an old signature no longer verifies after the cancelled deletion")
	}
	m.mustFail(logical.UpdateOperation, "keys/aes/cancel_deletion", nil, "not scheduled for deletion")
	m.mustFail(logical.DeleteOperation, "keys/default", nil, "can never be deleted")
}

// When the window has passed, the periodic job on the active node destroys
// the key's objects and then its metadata, and the name is free again. A
// restart in the middle of the window keeps the key pending.
func TestPendingKeyIsPurgedAfterItsWindowAcrossARestart(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0, "deletion_window": "1h"})
	m.mustOK(logical.UpdateOperation, "keys/doomed", map[string]interface{}{"deletion_allowed": true})
	m.mustOK(logical.UpdateOperation, "keys/doomed/rotate", nil)
	m.mustOK(logical.UpdateOperation, "keys/kept", nil)
	labels := []string{
		keyring.ObjectLabel(m.b.owner, "doomed", 1), keyring.ObjectLabel(m.b.owner, "doomed", 1) + "/hmac",
		keyring.ObjectLabel(m.b.owner, "doomed", 2), keyring.ObjectLabel(m.b.owner, "doomed", 2) + "/hmac",
	}
	m.mustOK(logical.DeleteOperation, "keys/doomed", nil)
	ctx := context.Background()
	clock := time.Now()
	m.b.ring.Now = func() time.Time { return clock.Add(30 * time.Minute) }
	if err := m.b.periodic(ctx, &logical.Request{Storage: m.storage}); err != nil {
		t.Fatal(err)
	}
	for _, l := range labels {
		if !labelOnToken(t, m, l) {
			t.Fatalf("%s destroyed inside the window", l)
		}
	}

	// A restart: a new backend on the same storage and token.
	restarted := m.restart(t)
	if resp := restarted.mustOK(logical.ReadOperation, "keys/doomed", nil); resp.Data["state"] != keyring.StatePendingDeletion {
		t.Fatalf("after a restart the key is %v", resp.Data["state"])
	}
	restarted.b.ring.Now = func() time.Time { return clock.Add(61 * time.Minute) }
	if err := restarted.b.periodic(ctx, &logical.Request{Storage: restarted.storage}); err != nil {
		t.Fatal(err)
	}
	for _, l := range labels {
		if labelOnToken(t, restarted, l) {
			t.Fatalf("%s still on the token after the window", l)
		}
	}
	if resp, err := restarted.do(logical.ReadOperation, "keys/doomed", nil); err != nil || resp != nil {
		t.Fatalf("the purged key's metadata: %v %v", resp, err)
	}
	if ids, _ := restarted.storage.List(ctx, keyring.DeletionIndexPrefix); len(ids) != 0 {
		t.Fatalf("deletion index left: %v", ids)
	}
	if got := decrypt(t, restarted, "kept", encrypt(t, restarted, "kept", "untouched", nil), nil); got != "untouched" {
		t.Fatal("the purge touched another key")
	}
	restarted.mustOK(logical.UpdateOperation, "keys/doomed", nil) // the name is free
}

// purge ends the window early, unless the mount has purge_protection, which
// cannot be turned off.
func TestPurgeAndPurgeProtection(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	m.mustOK(logical.UpdateOperation, "keys/p", map[string]interface{}{"deletion_allowed": true})
	m.mustFail(logical.UpdateOperation, "purge/p", nil, "only a key scheduled for deletion")
	m.mustOK(logical.DeleteOperation, "keys/p", nil)
	label := keyring.ObjectLabel(m.b.owner, "p", 1)
	m.mustOK(logical.UpdateOperation, "purge/p", nil)
	if labelOnToken(t, m, label) {
		t.Fatal("purge left the key's object")
	}
	if resp, _ := m.do(logical.ReadOperation, "keys/p", nil); resp != nil {
		t.Fatal("purge left the key's metadata")
	}

	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{"purge_protection": true})
	m.mustFail(logical.UpdateOperation, "config", map[string]interface{}{"purge_protection": false}, "cannot be turned off")
	m.mustOK(logical.UpdateOperation, "keys/q", map[string]interface{}{"deletion_allowed": true})
	m.mustOK(logical.DeleteOperation, "keys/q", nil)
	m.mustFail(logical.UpdateOperation, "purge/q", nil, "purge_protection")
	if !labelOnToken(t, m, keyring.ObjectLabel(m.b.owner, "q", 1)) {
		t.Fatal("a refused purge destroyed the key")
	}
	if m.mustOK(logical.ReadOperation, "config", nil).Data["purge_protection"] != true {
		t.Fatal("purge_protection is not shown on")
	}
}

// deletion_window=0s is Transit's delete: the key goes at once.
func TestZeroDeletionWindowDeletesAtOnce(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0, "deletion_window": "0s"})
	m.mustOK(logical.UpdateOperation, "keys/now", map[string]interface{}{"deletion_allowed": true})
	m.mustOK(logical.DeleteOperation, "keys/now", nil)
	if labelOnToken(t, m, keyring.ObjectLabel(m.b.owner, "now", 1)) {
		t.Fatal("a delete with deletion_window=0s left the object")
	}
	m.mustOK(logical.UpdateOperation, "keys/now", nil)
}
