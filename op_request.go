package hsmkms

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// opRequest is what every operation on a key needs: the HSM, the mount's
// config, the key, and the request's items (batch_input, or the top-level
// fields as one item). It replaces a loader per operation.
type opRequest struct {
	client *hsm.Client
	conf   *mountConfig
	key    *keyring.Entry
	items  []cryptoItem
	batch  bool
}

// newOpRequest reads a request for op on the key its path names; fields
// are the item fields the operation takes at the top level.
func (b *backend) newOpRequest(ctx context.Context, req *logical.Request, d *framework.FieldData, op string, fields []string) (*opRequest, error) {
	name := d.Get("name").(string)
	if err := keyring.CheckName(name); err != nil {
		return nil, err
	}
	items, batch, err := readItems(d, fields)
	if err != nil {
		return nil, err
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	k, err := b.ring.Resolve(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if err := k.Usable(op); err != nil {
		return nil, err
	}
	return &opRequest{client: client, conf: conf, key: k, items: items, batch: batch}, nil
}

// each runs the items through do, up to batch_concurrency at a time, each
// on a session of its own (a network HSM answers them in parallel), and
// returns their results in input order; an item's error becomes its
// result's. stat names the operation in status.
func (b *backend) each(r *opRequest, stat string, do func(item cryptoItem) (batchResult, error)) []batchResult {
	results := make([]batchResult, len(r.items))
	run := func(i int) {
		res, err := do(r.items[i])
		if err != nil {
			res = itemFailure(err)
		}
		results[i] = res
	}
	workers := min(r.conf.batchConcurrency(), len(r.items))
	if workers <= 1 {
		for i := range r.items {
			run(i)
		}
	} else {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := int(next.Add(1) - 1); i < len(r.items); i = int(next.Add(1) - 1) {
					run(i)
				}
			})
		}
		wg.Wait()
	}
	b.stats.add(stat, int64(len(r.items)))
	b.recordUse(r.key.Name, usageOpOf[stat], results)
	return results
}

// usageOpOf names each operation's counter in a key's usage.
var usageOpOf = map[string]string{
	"encrypt": "encrypt", "decrypt": "decrypt", "rewrap": "rewrap", "sign": "sign",
	"verify": "verify", "verify_hmac": "verify", "hmac": "hmac",
}

// recordUse counts the items that succeeded in the key's usage, per
// version; nothing is written to storage here (Keyring.FlushUsage).
func (b *backend) recordUse(name, op string, results []batchResult) {
	perVersion := map[int]int{}
	for _, res := range results {
		if res.Error == "" {
			perVersion[res.version]++
		}
	}
	for v, n := range perVersion {
		b.ring.RecordUse(name, v, op, n)
	}
}

// answer is every operation's tail: a batch answered as Transit answers
// that operation (strict: a failed item sets the status, as encrypt and
// decrypt do; otherwise 200 whatever failed, as sign, verify, hmac and
// rewrap do), or the single item's data, or its error.
func answer(req *logical.Request, d *framework.FieldData, r *opRequest, op string, kind batchKind, strict bool, results []batchResult, single func(batchResult) map[string]interface{}) (*logical.Response, error) {
	if r.batch {
		if strict {
			return batchResponse(req, d, kind, results, r.items)
		}
		return okBatchResponse(kind, results, r.items), nil
	}
	if res := results[0]; res.Error != "" {
		return singleFailure(op, res)
	}
	return &logical.Response{Data: single(results[0])}, nil
}
