package hsmkms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

func (b *backend) pathKEKTrim() *framework.Path {
	return &framework.Path{
		Pattern:      "config/kek/trim",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "trim", OperationSuffix: "kek"},
		Fields: map[string]*framework.FieldSchema{
			"min_version": {
				Type:        framework.TypeInt,
				Description: "Destroy the retired KEK versions below this one. Backups made under them can no longer be restored. Required.",
				Required:    true,
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathKEKTrimWrite, Summary: "Destroy retired KEK versions, which makes the backups made under them unrestorable."},
		},
		HelpSynopsis:    pathKEKTrimHelpSyn,
		HelpDescription: pathKEKTrimHelpDesc,
	}
}

func (b *backend) pathKEKTrimWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	minVersion := d.Get("min_version").(int)
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("trim KEK", err)
	}
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	st, err := loadKEKState(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	switch {
	case st.Latest == 0:
		return logical.ErrorResponse("this mount has no KEK; write its config first"), logical.ErrInvalidRequest
	case minVersion < 1 || minVersion > st.Latest:
		return logical.ErrorResponse("min_version must be between 1 and the latest KEK version, %d", st.Latest), logical.ErrInvalidRequest
	case st.Rewrap != nil && st.Rewrap.Finished.IsZero():
		return logical.ErrorResponse("a KEK rotation is still rewrapping keys (%d done); trim when it is done (see status)", st.Rewrap.Rewrapped), logical.ErrInvalidRequest
	}
	var trimmed []int
	for v := range st.Versions {
		if v < minVersion {
			trimmed = append(trimmed, v)
		}
	}
	slices.Sort(trimmed)
	if len(trimmed) == 0 {
		return &logical.Response{Data: map[string]interface{}{"destroyed_versions": []int{}, "forgotten_versions": []int{}}}, nil
	}
	if name, v, err := b.blobNamingKEKBelow(ctx, req.Storage, minVersion); err != nil {
		return nil, err
	} else if name != "" {
		return logical.ErrorResponse("key %q still has a blob under KEK version %d; nothing was trimmed", name, v), logical.ErrInvalidRequest
	}
	destroyed, forgotten := []int{}, []int{}
	var newest time.Time
	for _, v := range trimmed {
		kv := st.Versions[v]
		if kv.Retired.After(newest) {
			newest = kv.Retired
		}
		if kv.Found {
			forgotten = append(forgotten, v) // the HSM's tools made it; it is theirs to destroy
		} else {
			err := client.DestroyObjects(ctx, kv.ObjectID, hsm.ExactLabel(kv.Label))
			if err != nil && !errors.Is(err, hsm.ErrNotOwned) {
				return respondError("trim KEK", err)
			}
			destroyed = append(destroyed, v)
		}
		delete(st.Versions, v)
	}
	if err := b.storeKEKState(ctx, req.Storage, st); err != nil {
		return nil, err
	}
	names := make([]string, len(trimmed))
	for i, v := range trimmed {
		names[i] = fmt.Sprint(v)
	}
	b.Logger().Info("KEK versions trimmed", "destroyed", destroyed, "forgotten", forgotten)
	resp := &logical.Response{Data: map[string]interface{}{"destroyed_versions": destroyed, "forgotten_versions": forgotten, "kek": kekStatus(st)}}
	resp.AddWarning(fmt.Sprintf("backups whose blobs name KEK version %s (every backup taken before %s) can no longer be restored on this mount",
		strings.Join(names, ", "), newest.Format(time.RFC3339)))
	return resp, nil
}

// blobNamingKEKBelow finds a stored key with a blob under a KEK version
// below min: trimming that version would lose the key. Callers hold keysMu.
func (b *backend) blobNamingKEKBelow(ctx context.Context, s logical.Storage, min int) (string, int, error) {
	names, err := s.List(ctx, keyStoragePrefix)
	if err != nil {
		return "", 0, fmt.Errorf("listing keys: %w", err)
	}
	for _, name := range names {
		k, err := b.cachedKey(ctx, s, name)
		if err != nil {
			return "", 0, err
		}
		if k == nil {
			continue
		}
		for _, kv := range k.Versions {
			if kv.wrapped() && kv.KEKVersion < min {
				return name, kv.KEKVersion, nil
			}
		}
	}
	return "", 0, nil
}

const pathKEKTrimHelpSyn = `Destroy retired KEK versions.`

const pathKEKTrimHelpDesc = `
A KEK rotation retires the older versions once every blob has moved to the
new one: they stay on the token and only ever unwrap, so that backups made
under them (backup/:name) still restore. Trimming destroys the versions below
min_version that this mount made (KEKs found on the token by kek_label are
only forgotten: the HSM's tools made them). Backups made under a trimmed
version can no longer be restored; the answer says which.

A trim is refused while a rotation's rewrap job runs, and while any stored
key still has a blob under a version it would destroy.

    $ vault write kms/config/kek/trim min_version=3
`
