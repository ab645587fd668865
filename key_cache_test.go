package hsmkms

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// slowStorage makes reads take a little while, as a plugin's storage round
// trip to Vault does, so a reader that missed the cache is still reading
// when a writer publishes.
type slowStorage struct{ logical.Storage }

func (s slowStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
	return s.Storage.Get(ctx, key)
}

// Readers that missed the cache must never overwrite what a writer
// published meanwhile: once a deactivation is published, no read that
// starts after it sees the key active again. Run with -race.
func TestKeyCacheNeverGoesBack(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	slow := slowStorage{m.storage}
	type round struct {
		name        string
		deactivated atomic.Bool
	}
	var current atomic.Pointer[round]
	var stop atomic.Bool
	var wentBack atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < 16; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				time.Sleep(100 * time.Microsecond)
				cur := current.Load()
				if cur == nil {
					continue
				}
				after := cur.deactivated.Load()
				k, err := m.b.ring.Get(context.Background(), slow, cur.name)
				if err != nil || k == nil {
					continue
				}
				if after && k.State == keyring.StateActive {
					wentBack.Add(1)
				}
			}
		}()
	}
	for i := 0; i < 40; i++ {
		name := fmt.Sprintf("race-%d", i)
		m.mustOK(logical.UpdateOperation, "keys/"+name, nil)
		m.b.invalidate(context.Background(), keyring.KeyStoragePrefix+name) // as a standby, or a plugin reload, would
		r := &round{name: name}
		current.Store(r)
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
		m.mustOK(logical.UpdateOperation, "keys/"+name+"/deactivate", nil)
		r.deactivated.Store(true)
		time.Sleep(5 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if n := wentBack.Load(); n > 0 {
		t.Fatalf("%d reads started after a deactivation saw the key active again", n)
	}
}
