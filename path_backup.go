package hsmkms

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

const backupFormat = "hsmkms-wrapped-key-v1"

// keyBackup is a wrapped key as backup/:name gives it: the key's metadata
// and blobs, and the KEKs (by CKA_ID) that wrapped them. Nothing in it is
// usable without one of those KEKs, which never leave the HSM.
type keyBackup struct {
	Format string             `json:"format"`
	Key    *keyEntry          `json:"key"`
	KEKs   map[int]kekVersion `json:"keks"`
}

func (b *backend) pathBackup() []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "backup/" + keyNamePattern,
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "back-up", OperationSuffix: "key"},
			Fields:       map[string]*framework.FieldSchema{"name": nameField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{Callback: b.pathBackupRead, Summary: "Back up a wrapped key: its metadata and KEK-wrapped blobs."},
			},
			HelpSynopsis: "Back up a key of residency 'wrapped' (Transit's backup).",
			HelpDescription: `
Returns backup: the key's metadata, its blobs wrapped by the mount's KEK, and
the CKA_IDs of the KEKs. It restores on any mount whose HSM holds that KEK:
this token, or a token where the HSM vendor's tools replicated it. Keys of
residency 'hsm' are non-extractable token objects by design and cannot be
backed up; back up the HSM with its vendor's tools instead.

    $ vault read -field=backup kms/backup/app1 > app1.backup
`,
		},
		{
			Pattern:      "restore(/" + keyNamePattern + ")?",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "restore", OperationSuffix: "key"},
			Fields: map[string]*framework.FieldSchema{
				"name":   {Type: framework.TypeString, Description: "Name for the restored key; the backup's own name when empty."},
				"backup": {Type: framework.TypeString, Description: "What backup/:name returned.", DisplayAttrs: &framework.DisplayAttributes{Sensitive: true}},
				"force":  {Type: framework.TypeBool, Description: "Replace a key of that name (Transit's flag)."},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{Callback: b.pathRestoreWrite, Summary: "Restore a wrapped key from a backup."},
			},
			HelpSynopsis: "Restore a key from backup/:name (Transit's restore).",
			HelpDescription: `
Restores a wrapped key. Its blobs are rewrapped inside the HSM under this
mount's current KEK, so the HSM must hold the KEK that made the backup. An
existing key of that name is a 400 unless force=true.

    $ vault write kms/restore/app1 backup=@app1.backup
`,
		},
	}
}

func (b *backend) pathBackupRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if msg := checkKeyName(name); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	k, err := loadKey(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return logical.ErrorResponse("no key named %q in this mount", name), logical.ErrInvalidRequest
	}
	if k.Residency != residencyWrapped {
		return logical.ErrorResponse("key %q has residency %q: it is a non-extractable HSM object by design and cannot be backed up here; "+
			"back up the HSM with its vendor's tools, or use residency 'wrapped' for keys that need backups", name, k.Residency), logical.ErrInvalidRequest
	}
	st, err := b.kek(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	backup := keyBackup{Format: backupFormat, Key: k, KEKs: map[int]kekVersion{}}
	for v, kv := range k.Versions {
		kekv := st.Versions[kv.KEKVersion]
		if !kv.wrapped() || kekv == nil {
			return nil, fmt.Errorf("version %d of key %q has no blob under a known KEK", v, name)
		}
		backup.KEKs[kv.KEKVersion] = *kekv
	}
	raw, err := json.Marshal(backup)
	if err != nil {
		return nil, fmt.Errorf("encoding the backup: %w", err)
	}
	return &logical.Response{Data: map[string]interface{}{"backup": base64.StdEncoding.EncodeToString(raw)}}, nil
}

func (b *backend) pathRestoreWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	raw, err := base64.StdEncoding.DecodeString(d.Get("backup").(string))
	var backup keyBackup
	if err != nil || len(raw) == 0 || json.Unmarshal(raw, &backup) != nil || backup.Format != backupFormat || backup.Key == nil {
		return logical.ErrorResponse("backup must be what backup/:name returned"), logical.ErrInvalidRequest
	}
	k := backup.Key
	name := d.Get("name").(string)
	if name == "" {
		name = k.Name
	}
	if msg := checkKeyName(name); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	if _, ok := keyTypes[k.Type]; !ok || k.Residency != residencyWrapped || len(k.Versions) == 0 || k.Versions[k.LatestVersion] == nil {
		return logical.ErrorResponse("backup does not hold a wrapped key this plugin knows"), logical.ErrInvalidRequest
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("restore", err)
	}
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	existing, err := loadKey(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	switch {
	case existing != nil && !d.Get("force").(bool):
		return logical.ErrorResponse("key %q exists; give force=true to replace it", name), logical.ErrInvalidRequest
	case existing == nil:
		if resp, err := b.checkNewKeyLocked(ctx, req.Storage, conf, name, ""); resp != nil || err != nil {
			return resp, err
		}
	}
	st, err := b.kek(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	target := st.Versions[st.Latest]
	if target == nil {
		return logical.ErrorResponse("this mount has no KEK; write its config first"), logical.ErrInvalidRequest
	}
	k.Name = name
	for v, kv := range k.Versions {
		ref, ok := backup.KEKs[kv.KEKVersion]
		if !kv.wrapped() || !ok || len(ref.ObjectID) == 0 {
			return logical.ErrorResponse("backup: version %d has no blob under a named KEK", v), logical.ErrInvalidRequest
		}
		// A fresh CKA_ID for the unwrapped copy: the original key may
		// still exist on this mount.
		id, err := client.NewObjectID(ctx)
		if err != nil {
			return respondError("restore", err)
		}
		spec, err := wrappedSpec(k, kv)
		if err != nil {
			return logical.ErrorResponse("backup: version %d: %v", v, err), logical.ErrInvalidRequest
		}
		spec.ID = id
		if !bytes.Equal(ref.ObjectID, target.ObjectID) {
			blob, err := client.Rewrap(ctx, ref.ObjectID, target.ObjectID, kv.Blob, spec)
			switch {
			case errors.Is(err, hsm.ErrKeyNotFound):
				return logical.ErrorResponse("backup: this HSM does not hold the KEK (CKA_ID %s, label %q) that wrapped version %d", hex.EncodeToString(ref.ObjectID), ref.Label, v), logical.ErrInvalidRequest
			case errors.Is(err, hsm.ErrInvalidInput):
				return logical.ErrorResponse("backup: version %d does not unwrap under its KEK: %v", v, err), logical.ErrInvalidRequest
			case err != nil:
				return respondError("restore", err)
			}
			kv.Blob = blob
		}
		kv.ObjectID, kv.Label, kv.KEKVersion = id, objectLabel(b.owner, name, v), st.Latest
	}
	if existing != nil {
		b.forgetUnwrapped(ctx, req.Storage, existing)
	}
	if err := b.saveKey(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	return &logical.Response{Data: k.keyResponse()}, nil
}
