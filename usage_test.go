package hsmkms

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// writeCountingStorage counts the writes that reach storage, by key prefix.
type writeCountingStorage struct {
	logical.Storage
	mu     sync.Mutex
	writes map[string]int
}

func (c *writeCountingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	c.mu.Lock()
	if c.writes == nil {
		c.writes = map[string]int{}
	}
	prefix, _, _ := strings.Cut(e.Key, "/")
	c.writes[prefix]++
	c.mu.Unlock()
	return c.Storage.Put(ctx, e)
}

func (c *writeCountingStorage) count(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes[prefix]
}

// Usage is counted in memory, never written per request: 1,000 encrypts
// write nothing, and the flush writes each key at most once per interval.
func TestUsageIsNeverAStorageWritePerRequest(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	m.mustOK(logical.UpdateOperation, "keys/other", nil)
	counting := &writeCountingStorage{Storage: m.storage}
	m.storage = counting
	clock := time.Now()
	m.b.ring.Now = func() time.Time { return clock }
	for i := range 1000 {
		key := []string{"default", "other"}[i%2]
		encrypt(t, m, key, fmt.Sprint(i), nil)
	}
	if n := counting.count("keys") + counting.count("usage"); n != 0 {
		t.Fatalf("1,000 encrypts wrote storage %d times", n)
	}
	periodic := func() {
		t.Helper()
		if err := m.b.periodic(context.Background(), &logical.Request{Storage: counting}); err != nil {
			t.Fatal(err)
		}
	}
	periodic()
	if n := counting.count("usage"); n != 2 {
		t.Fatalf("the first flush wrote %d usage entries for 2 keys", n)
	}
	for i := range 100 {
		encrypt(t, m, "default", fmt.Sprint(i), nil)
	}
	clock = clock.Add(59 * time.Second)
	periodic()
	if n := counting.count("usage"); n != 2 {
		t.Fatalf("a second flush within the interval wrote: %d usage writes", n)
	}
	clock = clock.Add(time.Second)
	periodic()
	if n := counting.count("usage"); n != 3 {
		t.Fatalf("after the interval: %d usage writes, want 3 (one key had new uses)", n)
	}
	if got := usageOf(t, m, "default")["encrypt"]; got != 600 {
		t.Fatalf("default's encrypt count %d, want 600", got)
	}
}

// Counters are exact after 1,000 mixed requests and a clean reload, per
// key and per version, with the last use.
func TestUsageIsExactAcrossACleanReload(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	m.mustOK(logical.UpdateOperation, "keys/s", map[string]interface{}{"type": "ecdsa-p256"})
	m.mustOK(logical.UpdateOperation, "keys/mac", map[string]interface{}{"type": "hmac"})
	want := map[string]map[string]uint64{"default": {}, "s": {}, "mac": {}}
	var cts []string
	for i := range 1000 {
		switch i % 5 {
		case 0:
			cts = append(cts, encrypt(t, m, "default", fmt.Sprint(i), nil))
			want["default"]["encrypt"]++
		case 1:
			decrypt(t, m, "default", cts[len(cts)-1], nil)
			want["default"]["decrypt"]++
		case 2:
			sig := m.mustOK(logical.UpdateOperation, "sign/s", map[string]interface{}{"input": b64("x")}).Data["signature"]
			m.mustOK(logical.UpdateOperation, "verify/s", map[string]interface{}{"input": b64("x"), "signature": sig})
			want["s"]["sign"]++
			want["s"]["verify"]++
		case 3:
			m.mustOK(logical.UpdateOperation, "hmac/mac", map[string]interface{}{"input": b64("x")})
			want["mac"]["hmac"]++
		case 4:
			m.mustOK(logical.UpdateOperation, "datakey/wrapped/default", nil)
			m.mustOK(logical.UpdateOperation, "rewrap/default", map[string]interface{}{"ciphertext": cts[len(cts)-1]})
			want["default"]["datakey"]++
			want["default"]["rewrap"]++
		}
		if i == 500 {
			m.mustOK(logical.UpdateOperation, "keys/default/rotate", nil)
		}
	}
	restarted := m.restart(t) // a clean shutdown flushes what was counted
	for key, ops := range want {
		got := usageOf(t, restarted, key)
		for _, op := range usageOps {
			if got[op] != ops[op] {
				t.Errorf("%s: %s counted %d, want %d", key, op, got[op], ops[op])
			}
		}
	}
	usage := restarted.mustOK(logical.ReadOperation, "keys/default", nil).Data["usage"].(map[string]interface{})
	versions := usage["versions"].(map[string]interface{})
	v1 := versions["1"].(map[string]interface{})["operations"].(map[string]uint64)
	v2 := versions["2"].(map[string]interface{})["operations"].(map[string]uint64)
	if v1["encrypt"]+v2["encrypt"] != want["default"]["encrypt"] || v1["encrypt"] == 0 || v2["encrypt"] == 0 {
		t.Errorf("per-version encrypt counts v1 %d + v2 %d, want %d in all, both used", v1["encrypt"], v2["encrypt"], want["default"]["encrypt"])
	}
	if usage["last_used"] == "" {
		t.Error("no last_used after 1,000 uses")
	}
}

// A delete of a key used recently warns, naming its last use; LIST can
// find the keys unused for a while.
func TestDeleteWarnsOfRecentUseAndListFindsUnusedKeys(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	m.mustOK(logical.UpdateOperation, "keys/busy", map[string]interface{}{"deletion_allowed": true})
	m.mustOK(logical.UpdateOperation, "keys/idle", nil)
	encrypt(t, m, "busy", "used", nil)
	list := m.mustOK(logical.ListOperation, "keys/", map[string]interface{}{"unused_for": "24h"})
	if keys := fmt.Sprint(list.Data["keys"]); keys != "[default idle]" {
		t.Fatalf("keys unused for a day: %s", keys)
	}
	resp := m.mustOK(logical.DeleteOperation, "keys/busy", nil)
	if len(resp.Warnings) < 2 || !strings.Contains(resp.Warnings[0], "was last used") {
		t.Fatalf("delete of a key used just now: warnings %v", resp.Warnings)
	}
}

func usageOf(t *testing.T, m *testMount, key string) map[string]uint64 {
	t.Helper()
	return m.mustOK(logical.ReadOperation, "keys/"+key, nil).Data["usage"].(map[string]interface{})["operations"].(map[string]uint64)
}
