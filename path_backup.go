package hsmkms

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

const backupFormat = "hsmkms-wrapped-key-v1"

// keyBackup is a wrapped key as backup/:name gives it: the key's metadata
// and blobs, and the KEKs (by CKA_ID) that wrapped them. Nothing in it is
// usable without one of those KEKs, which never leave the HSM.
type keyBackup struct {
	Format string                     `json:"format"`
	Key    *keyring.Entry             `json:"key"`
	KEKs   map[int]keyring.KEKVersion `json:"keks"`
	// Usage is the key's usage when it was backed up (backups made before
	// usage was counted have none).
	Usage *keyring.Usage `json:"usage,omitempty"`
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
	k, err := b.ring.Resolve(ctx, req.Storage, d.Get("name").(string))
	if err != nil {
		return respondError("back up key", err)
	}
	name := k.Name
	if k.Residency != keyring.ResidencyWrapped {
		return logical.ErrorResponse("key %q has residency %q: it is a non-extractable HSM object by design and cannot be backed up here; "+
			"back up the HSM with its vendor's tools, or use residency 'wrapped' for keys that need backups", name, k.Residency), logical.ErrInvalidRequest
	}
	st, err := b.ring.KEK(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	usage, err := b.ring.Usage(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	backup := keyBackup{Format: backupFormat, Key: k, KEKs: map[int]keyring.KEKVersion{}, Usage: usage}
	for v, kv := range k.Versions {
		kekv := st.Versions[kv.KEKVersion]
		if !kv.Wrapped() || kekv == nil {
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
		return respondError("restore", keyring.Userf("backup must be what backup/:name returned"))
	}
	name := d.Get("name").(string)
	if name == "" {
		name = backup.Key.Name
	}
	if err := keyring.CheckName(name); err != nil {
		return respondError("restore", err)
	}
	k, err := keyring.RestoredEntry(name, backup.Key)
	if err != nil {
		return respondError("restore", keyring.Userf("backup: %v; nothing was restored", err))
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("restore", err)
	}
	b.ring.Lock()
	defer b.ring.Unlock()
	existing, err := keyring.Load(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	switch {
	case existing != nil && existing.PendingReuse() != nil:
		return respondError("restore", existing.PendingReuse())
	case existing != nil && !d.Get("force").(bool):
		return respondError("restore", keyring.Userf("key %q exists; give force=true to replace it", name))
	case existing == nil:
		if err := b.ring.CheckNew(ctx, req.Storage, name, conf.MaxKeys, ""); err != nil {
			return respondError("restore", err)
		}
	}
	st, err := b.ring.KEK(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	target := st.Versions[st.Latest]
	if target == nil {
		return respondError("restore", keyring.Userf("this mount has no KEK; write its config first"))
	}
	// Every blob is unwrapped in the HSM under the KEK the backup names,
	// checked against the metadata, and wrapped under the mount's latest
	// KEK, before anything is stored: all versions or none.
	keks := map[int][]byte{}
	for _, v := range k.SortedVersions() {
		kv := k.Versions[v]
		from, ok := keks[kv.KEKVersion]
		if !ok {
			ref, named := backup.KEKs[kv.KEKVersion]
			if !named {
				return respondError("restore", keyring.Userf("backup: version %d names KEK version %d, which the backup does not describe; nothing was restored", v, kv.KEKVersion))
			}
			if from, err = b.backupKEK(ctx, client, st, ref); err != nil {
				return respondError("restore", versionError(v, err))
			}
			keks[kv.KEKVersion] = from
		}
		// A fresh CKA_ID for the unwrapped copy: the original key may
		// still exist on this mount.
		if kv.ObjectID, err = client.NewObjectID(ctx); err != nil {
			return respondError("restore", err)
		}
		kv.Label = keyring.ObjectLabel(b.owner, name, v)
		spec, err := keyring.WrappedSpec(k, kv)
		if err != nil {
			return respondError("restore", keyring.Userf("backup: version %d: %v; nothing was restored", v, err))
		}
		if spec.Kind == hsm.ImportHMAC {
			spec.Bits = k.KeyType().Bits
		}
		blob, err := client.RewrapChecked(ctx, from, target.ObjectID, kv.Blob, spec)
		var ie *hsm.InputError
		if errors.As(err, &ie) {
			return respondError("restore", keyring.Userf("backup: version %d is not the %s key its metadata describes: %s; nothing was restored", v, k.Type, ie.Reason))
		} else if err != nil {
			return respondError("restore", err)
		}
		kv.Blob, kv.KEKVersion = blob, st.Latest
	}
	if existing != nil {
		b.forgetUnwrapped(ctx, req.Storage, existing)
	}
	if err := b.ring.Restore(ctx, req.Storage, k, backup.Usage); err != nil {
		return nil, err
	}
	return &logical.Response{Data: keyResponse(k)}, nil
}

// versionError says which version of a backup a caller's error is about.
func versionError(v int, err error) error {
	if status, msg := failure(err); status == http.StatusBadRequest {
		return keyring.Userf("backup: version %d: %s; nothing was restored", v, msg)
	}
	return err
}

// backupKEK resolves the KEK a backup names to a CKA_ID the mount may
// unwrap with: one of its own KEK versions (retired ones included), or a
// KEK no mount owns (made by the HSM's tools, or replicated), checked on
// the token. Another mount's KEK is never used.
func (b *backend) backupKEK(ctx context.Context, client *hsm.Client, st *keyring.KEKState, ref keyring.KEKVersion) ([]byte, error) {
	for _, own := range st.Versions {
		if bytes.Equal(own.ObjectID, ref.ObjectID) {
			return own.ObjectID, nil
		}
	}
	label, err := client.CheckKEK(ctx, ref.ObjectID)
	switch {
	case errors.Is(err, hsm.ErrKeyNotFound):
		return nil, keyring.Userf("this HSM does not hold the KEK (CKA_ID %x, label %q) that wrapped it; it was trimmed, or the backup comes from another HSM", ref.ObjectID, ref.Label)
	case err != nil:
		return nil, err
	}
	if owner, _, ok := keyring.KEKLabelOwner(label); ok && owner != b.owner {
		return nil, keyring.Userf("its KEK (label %q) belongs to mount %s, and a mount never uses another mount's KEK; restore it on that mount, or give both mounts a KEK made by the HSM's tools (kek_label)", label, owner)
	}
	if strings.HasPrefix(label, keyring.ObjectLabelPrefix) {
		return nil, keyring.Userf("the object it names as its KEK (label %q) is a key of this plugin, not a KEK", label)
	}
	return ref.ObjectID, nil
}
