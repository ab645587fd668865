package hsmkms

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Many goroutines mix encrypt, decrypt, sign, verify, data keys and
// rotations on shared keys, as Transit's own test does; every round trip
// must come back intact and every error is collected and checked after Wait.
func TestConcurrentMixedOperations(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"pool_size": 4})
	m.mustOK(logical.UpdateOperation, "keys/shared", nil)
	m.mustOK(logical.UpdateOperation, "keys/signer", map[string]interface{}{"type": "ecdsa-p256"})
	do := func(op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
		resp, err := m.b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Data: data, Storage: m.storage, MountPoint: "kms/"})
		if err == nil && resp != nil && resp.IsError() {
			err = fmt.Errorf("%s: %v", path, resp.Data["error"])
		}
		return resp, err
	}
	const workers, rounds = 64, 12
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				msg := fmt.Sprintf("worker %d round %d", w, r)
				switch (w + r) % 5 {
				case 0, 1:
					resp, err := do(logical.UpdateOperation, "encrypt/shared", map[string]interface{}{"plaintext": b64(msg)})
					if err != nil {
						fail(err)
						continue
					}
					resp, err = do(logical.UpdateOperation, "decrypt/shared", map[string]interface{}{"ciphertext": resp.Data["ciphertext"]})
					if err != nil {
						fail(err)
					} else if got, _ := base64.StdEncoding.DecodeString(resp.Data["plaintext"].(string)); string(got) != msg {
						fail(fmt.Errorf("round trip of %q gave %q", msg, got))
					}
				case 2:
					resp, err := do(logical.UpdateOperation, "sign/signer", map[string]interface{}{"input": b64(msg)})
					if err != nil {
						fail(err)
						continue
					}
					resp, err = do(logical.UpdateOperation, "verify/signer", map[string]interface{}{"input": b64(msg), "signature": resp.Data["signature"]})
					if err != nil || resp.Data["valid"] != true {
						fail(fmt.Errorf("verify %q: %v %v", msg, err, resp))
					}
				case 3:
					if _, err := do(logical.UpdateOperation, "datakey/wrapped/shared", nil); err != nil {
						fail(err)
					}
				case 4:
					if w%16 == 0 {
						if _, err := do(logical.UpdateOperation, "keys/shared/rotate", nil); err != nil {
							fail(err)
						}
					} else if _, err := do(logical.ReadOperation, "keys/shared", nil); err != nil {
						fail(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	resp := m.mustOK(logical.ReadOperation, "keys/shared", nil)
	if v := resp.Data["latest_version"].(int); v < 2 {
		t.Fatalf("no rotation happened: v%d", v)
	}
	if st := m.mustOK(logical.ReadOperation, "status", nil).Data["pool"].(map[string]interface{}); st["open"].(int) > 4 {
		t.Fatalf("pool: %v", st)
	}
}

// Transit's own stress shape (TestPolicyFuzzing): 1,000 goroutines for
// 10 s mix encrypt, decrypt, rotate and min_decryption_version changes on
// one key. Every plaintext comes back exact; the only errors allowed are
// "below min_decryption_version".
func TestTransitStressShape(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/stress", nil)
	do := func(op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
		resp, err := m.b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Data: data, Storage: m.storage, MountPoint: "kms/"})
		if resp != nil && resp.IsError() {
			err = fmt.Errorf("%s: %v", path, resp.Data["error"])
		}
		return resp, err
	}
	const goroutines = 1000
	deadline := time.Now().Add(10 * time.Second)
	var (
		wg                      sync.WaitGroup
		mu                      sync.Mutex
		errs                    []error
		ops, belowMin, rotation atomic.Int64
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			var mine []struct{ ct, pt string }
			for i := 0; time.Now().Before(deadline); i++ {
				ops.Add(1)
				switch n := rng.IntN(1000); {
				case n < 2: // rotate
					if _, err := do(logical.UpdateOperation, "keys/stress/rotate", nil); err != nil {
						fail(err)
					}
					rotation.Add(1)
				case n < 4: // move min_decryption_version within the versions that exist
					resp, err := do(logical.ReadOperation, "keys/stress", nil)
					if err != nil {
						fail(err)
						continue
					}
					latest := resp.Data["latest_version"].(int)
					if _, err := do(logical.UpdateOperation, "keys/stress/config", map[string]interface{}{"min_decryption_version": 1 + rng.IntN(latest)}); err != nil {
						fail(err)
					}
				case n < 500 || len(mine) == 0:
					pt := fmt.Sprintf("g%d-%d", g, i)
					resp, err := do(logical.UpdateOperation, "encrypt/stress", map[string]interface{}{"plaintext": b64(pt)})
					if err != nil {
						fail(err)
						continue
					}
					mine = append(mine, struct{ ct, pt string }{resp.Data["ciphertext"].(string), pt})
				default:
					c := mine[rng.IntN(len(mine))]
					resp, err := do(logical.UpdateOperation, "decrypt/stress", map[string]interface{}{"ciphertext": c.ct})
					if err != nil {
						if strings.Contains(err.Error(), "below min_decryption_version") {
							belowMin.Add(1)
							continue
						}
						fail(err)
						continue
					}
					if got, _ := base64.StdEncoding.DecodeString(resp.Data["plaintext"].(string)); string(got) != c.pt {
						fail(fmt.Errorf("decrypt of %q gave %q", c.pt, got))
					}
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d operations, %d rotations, %d refused as below min_decryption_version", ops.Load(), rotation.Load(), belowMin.Load())
	kinds := map[string]int{}
	for _, e := range errs {
		kinds[e.Error()]++
	}
	for k, n := range kinds {
		t.Logf("%d x %s", n, k)
	}
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	if ops.Load() < goroutines || rotation.Load() == 0 {
		t.Fatalf("too little happened: %d operations, %d rotations", ops.Load(), rotation.Load())
	}
}
