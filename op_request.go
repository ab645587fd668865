package hsmkms

import (
	"context"

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
	items, batch, msg := readItems(d, fields)
	if msg != "" {
		return nil, keyring.Userf("%s", msg)
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

// each runs one item after the other through do and returns their results
// in input order; an item's error becomes its result's. stat names the
// operation in status.
func (b *backend) each(r *opRequest, stat string, do func(item cryptoItem) (batchResult, error)) []batchResult {
	results := make([]batchResult, len(r.items))
	for i, item := range r.items {
		res, err := do(item)
		if err != nil {
			res = itemFailure(err)
		}
		results[i] = res
	}
	b.stats.add(stat, int64(len(r.items)))
	return results
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
