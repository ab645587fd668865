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
// when a writer publishes. The random pause is jitter that widens the race
// window under test; nothing waits on it.
type slowStorage struct{ logical.Storage }

func (s slowStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
	return s.Storage.Get(ctx, key)
}

// checksPerRound is how many reads started after a round's deactivation
// must have been checked before the next round starts.
const checksPerRound = 64

// Readers that missed the cache must never overwrite what a writer
// published meanwhile: once a deactivation is published, no read that
// starts after it sees the key active again. Run with -race.
func TestKeyCacheNeverGoesBack(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	slow := slowStorage{m.storage}
	type round struct {
		name        string
		deactivated atomic.Bool
		checked     atomic.Int64
		enough      chan struct{} // closed at checksPerRound checks
	}
	var current atomic.Pointer[round]
	var stop atomic.Bool
	var wentBack, failed atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < 16; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				// Jitter, not synchronisation: readers start their reads
				// at varied points of a round.
				time.Sleep(100 * time.Microsecond)
				cur := current.Load()
				if cur == nil {
					continue
				}
				after := cur.deactivated.Load()
				k, err := m.b.ring.Get(context.Background(), slow, cur.name)
				switch {
				case err != nil || k == nil:
					failed.Add(1)
				case after && k.State == keyring.StateActive:
					wentBack.Add(1)
				}
				if after && cur.checked.Add(1) == checksPerRound {
					close(cur.enough)
				}
			}
		}()
	}
	for i := 0; i < 40; i++ {
		name := fmt.Sprintf("race-%d", i)
		m.mustOK(logical.UpdateOperation, "keys/"+name, nil)
		m.b.invalidate(context.Background(), keyring.KeyStoragePrefix+name) // as a standby, or a plugin reload, would
		r := &round{name: name, enough: make(chan struct{})}
		current.Store(r)
		// Jitter, not synchronisation: the deactivation lands at a
		// varied point of the readers' cache misses.
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
		m.mustOK(logical.UpdateOperation, "keys/"+name+"/deactivate", nil)
		r.deactivated.Store(true)
		<-r.enough
	}
	stop.Store(true)
	wg.Wait()
	if n := wentBack.Load(); n > 0 {
		t.Fatalf("%d reads started after a deactivation saw the key active again", n)
	}
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d reads of an existing key failed or found nothing", n)
	}
}
