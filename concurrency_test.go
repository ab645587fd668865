package hsmkms

import (
	"context"
	"encoding/base64"
	"fmt"
	"sync"
	"testing"

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
