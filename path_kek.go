package hsmkms

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func (b *backend) pathKEKRotate() *framework.Path {
	return &framework.Path{
		Pattern:      "config/kek/rotate",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "rotate", OperationSuffix: "kek"},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathKEKRotateWrite, Summary: "Make a new KEK version and rewrap every wrapped key under it in the background."},
		},
		HelpSynopsis:    pathKEKRotateHelpSyn,
		HelpDescription: pathKEKRotateHelpDesc,
	}
}

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

func (b *backend) pathKEKRotateWrite(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("rotate KEK", err)
	}
	st, err := b.ring.RotateKEK(ctx, req.Storage, client, conf.KEKLabel)
	if err != nil {
		return respondError("rotate KEK", err)
	}
	return &logical.Response{Data: kekStatus(st)}, nil
}

func (b *backend) pathKEKTrimWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("trim KEK", err)
	}
	res, err := b.ring.TrimKEK(ctx, req.Storage, client, d.Get("min_version").(int))
	if err != nil {
		return respondError("trim KEK", err)
	}
	resp := &logical.Response{Data: map[string]interface{}{"destroyed_versions": res.Destroyed, "forgotten_versions": res.Forgotten, "kek": kekStatus(res.State)}}
	trimmed := append(append([]int{}, res.Destroyed...), res.Forgotten...)
	if len(trimmed) > 0 {
		names := make([]string, len(trimmed))
		for i, v := range trimmed {
			names[i] = fmt.Sprint(v)
		}
		resp.AddWarning(fmt.Sprintf("backups whose blobs name KEK version %s (every backup taken before %s) can no longer be restored on this mount",
			strings.Join(names, ", "), res.RetiredBefore.Format(time.RFC3339)))
	}
	return resp, nil
}

// kekStatus is the KEK part of status and of a rotation's answer.
func kekStatus(st *keyring.KEKState) map[string]interface{} {
	versions := make([]int, 0, len(st.Versions))
	for v := range st.Versions {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	retired := []int{}
	for _, v := range versions {
		if !st.Versions[v].Retired.IsZero() {
			retired = append(retired, v)
		}
	}
	out := map[string]interface{}{"latest_version": st.Latest, "versions": versions, "retired_versions": retired}
	if st.Rewrap != nil {
		job := map[string]interface{}{
			"target": st.Rewrap.Target, "rewrapped": st.Rewrap.Rewrapped, "cursor": st.Rewrap.Cursor,
			"started": st.Rewrap.Started.Format(time.RFC3339), "done": !st.Rewrap.Finished.IsZero(),
		}
		if !st.Rewrap.Finished.IsZero() {
			job["finished"] = st.Rewrap.Finished.Format(time.RFC3339)
		}
		if st.Rewrap.Error != "" {
			job["error"] = st.Rewrap.Error
		}
		out["rewrap"] = job
	}
	return out
}

const pathKEKRotateHelpSyn = `Rotate the key-encryption key of wrapped keys.`

const pathKEKRotateHelpDesc = `
Makes a new KEK (AES-256, wrap/unwrap only) on the token. New wrapped keys
use it at once; a background job, resumable after a restart and shown in
status, rewraps every stored blob under it. The older versions are then
retired, not destroyed: they stay on the token and only ever unwrap, so
backups made under them still restore. config/kek/trim destroys them.

    $ vault write -f kms/config/kek/rotate
`

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
