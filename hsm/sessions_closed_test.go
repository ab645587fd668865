package hsm_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// Network HSMs close idle sessions and lose them with a connection, so
// after a pause the first requests find their pooled sessions gone. Here
// 32 goroutines encrypt, decrypt, sign and draw random bytes while every
// pooled session is closed behind the client's back, once while they run
// and once while they pause (every session idle in the pool, as after a
// quiet night); every operation must succeed. It runs without delay and
// with 2 ms added to every PKCS#11 call (a network's round trip: a
// simulation knob, not a timing asserted).
func TestSessionsClosedBehindTheClientsBackUnderLoad(t *testing.T) {
	hsm.EachToken(t, func(t *testing.T, tokenA, _ *tokentest.Token) {
		for _, rtt := range []time.Duration{0, 2 * time.Millisecond} {
			t.Run(fmt.Sprintf("rtt_%v", rtt), func(t *testing.T) {
				testSessionsClosedUnderLoad(t, tokenA, rtt)
			})
		}
	})
}

func testSessionsClosedUnderLoad(t *testing.T, tok *tokentest.Token, rtt time.Duration) {
	const (
		workers  = 32
		poolSize = 8
		// Each drop comes once the workers made this many operations
		// since the start or the last drop.
		opsBetweenDrops = workers * 3
		opsAfterLast    = 4 // per worker, after the last drop
	)
	c, ft := openFaulty(t, tok, poolSize)
	ctx := context.Background()
	aesID := newKey(t, c)
	ecID := newID(t, c)
	pub, err := c.GenerateECKeyPair(ctx, ecID, "dropped", "P-256", hsm.Usage{Sign: true, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("dropped"))
	ft.SetLatency(rtt)

	op := func(w, i int) error {
		switch (w + i) % 3 {
		case 0:
			blob, err := c.EncryptGCM(ctx, aesID, []byte("payload"), []byte("aad"))
			if err != nil {
				return fmt.Errorf("encrypt: %w", err)
			}
			if _, err := c.DecryptGCM(ctx, aesID, blob, []byte("aad")); err != nil {
				return fmt.Errorf("decrypt: %w", err)
			}
		case 1:
			if _, err := c.SignECDSA(ctx, ecID, pub, digest[:]); err != nil {
				return fmt.Errorf("sign: %w", err)
			}
		default:
			if _, err := c.Random(ctx, 32); err != nil {
				return fmt.Errorf("random: %w", err)
			}
		}
		return nil
	}

	// progress signals next once opsBetweenDrops operations completed
	// since target was last set.
	var (
		mu        sync.Mutex
		done      int
		target    = opsBetweenDrops
		signalled bool
		next      = make(chan struct{}, 1)
	)
	progress := func() {
		mu.Lock()
		defer mu.Unlock()
		if done++; !signalled && done >= target {
			signalled = true
			next <- struct{}{}
		}
	}
	rearm := func() {
		mu.Lock()
		defer mu.Unlock()
		target, signalled = done+opsBetweenDrops, false
	}

	var (
		wg       sync.WaitGroup
		parked   sync.WaitGroup
		pause    = make(chan struct{})
		resume   = make(chan struct{})
		errs     = make(chan error, workers)
		finished = make(chan struct{})
	)
	parked.Add(workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paused, after := false, 0
			defer func() {
				if !paused {
					parked.Done()
				}
			}()
			for i := 0; ; i++ {
				if err := op(w, i); err != nil {
					errs <- fmt.Errorf("worker %d, operation %d (paused: %v): %w", w, i, paused, err)
					return
				}
				progress()
				if paused {
					if after++; after >= opsAfterLast {
						return
					}
					continue
				}
				select {
				case <-pause:
					paused = true
					parked.Done()
					<-resume
				default:
				}
			}
		}()
	}
	go func() { wg.Wait(); close(finished) }()
	waitNext := func(what string) {
		select {
		case <-next:
		case <-finished:
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			t.Fatalf("every worker stopped before %s", what)
		}
	}

	replacedBefore := c.Stats().Replaced
	waitNext("the first drop")
	running := ft.DropSessions()
	rearm()
	waitNext("the pause")
	close(pause)
	parked.Wait()
	idle := c.Stats().Idle
	paused := ft.DropSessions()
	// A session the first drop closed may have sat idle since, and is not
	// closed twice: what counts is that none in the pool is left alive.
	open, dead := ft.Sessions()
	close(resume)
	<-finished
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	replaced := c.Stats().Replaced - replacedBefore
	t.Logf("%s, rtt %v: %d operations; %d sessions dropped while running, %d while paused (%d idle); %d replaced; pool %+v",
		tok.Kind, rtt, done, running, paused, idle, replaced, c.Stats())
	if running == 0 {
		t.Error("no pooled session was open to drop while the workers ran")
	}
	if paused == 0 || open != idle || dead != idle {
		t.Errorf("during the pause: %d sessions dropped, %d of %d open left alive, with %d idle in the pool", paused, open-dead, open, idle)
	}
	if replaced < int64(paused) {
		t.Errorf("%d sessions replaced, fewer than the %d dropped during the pause, which the workers all used after it", replaced, paused)
	}
}
