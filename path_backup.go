package hsmkms

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

const backupFormat = "hsmkms-wrapped-key-v1"

// Bounds of what a restore accepts.
const (
	maxDescriptionLen   = 4096
	maxRestoredVersions = 100000
)

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
	name := d.Get("name").(string)
	if name == "" {
		name = backup.Key.Name
	}
	if msg := checkKeyName(name); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	k, msg := restoredEntry(name, backup.Key)
	if msg != "" {
		return logical.ErrorResponse("backup: %s; nothing was restored", msg), logical.ErrInvalidRequest
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
	// Every blob is unwrapped in the HSM under the KEK the backup names,
	// checked against the metadata, and wrapped under the mount's latest
	// KEK, before anything is stored: all versions or none.
	keks := map[int][]byte{}
	for _, v := range sortedVersions(k) {
		kv := k.Versions[v]
		from, ok := keks[kv.KEKVersion]
		if !ok {
			ref, named := backup.KEKs[kv.KEKVersion]
			if !named {
				return logical.ErrorResponse("backup: version %d names KEK version %d, which the backup does not describe; nothing was restored", v, kv.KEKVersion), logical.ErrInvalidRequest
			}
			if from, msg, err = b.backupKEK(ctx, client, st, ref); err != nil {
				return respondError("restore", err)
			} else if msg != "" {
				return logical.ErrorResponse("backup: version %d: %s; nothing was restored", v, msg), logical.ErrInvalidRequest
			}
			keks[kv.KEKVersion] = from
		}
		// A fresh CKA_ID for the unwrapped copy: the original key may
		// still exist on this mount.
		if kv.ObjectID, err = client.NewObjectID(ctx); err != nil {
			return respondError("restore", err)
		}
		kv.Label = objectLabel(b.owner, name, v)
		spec, err := wrappedSpec(k, kv)
		if err != nil {
			return logical.ErrorResponse("backup: version %d: %v; nothing was restored", v, err), logical.ErrInvalidRequest
		}
		if spec.Kind == hsm.ImportHMAC {
			spec.Bits = k.keyType().bits
		}
		blob, err := client.RewrapChecked(ctx, from, target.ObjectID, kv.Blob, spec)
		switch {
		case errors.Is(err, hsm.ErrInvalidInput):
			return logical.ErrorResponse("backup: version %d is not the %s key its metadata describes: %s; nothing was restored", v, k.Type, hsmReason(err)), logical.ErrInvalidRequest
		case err != nil:
			return respondError("restore", err)
		}
		kv.Blob, kv.KEKVersion = blob, st.Latest
	}
	if existing != nil {
		b.forgetUnwrapped(ctx, req.Storage, existing)
	}
	if err := b.saveKey(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	return &logical.Response{Data: k.keyResponse()}, nil
}

// backupKEK resolves the KEK a backup names to a CKA_ID the mount may
// unwrap with: one of its own KEK versions (retired ones included), or a
// KEK no mount owns (made by the HSM's tools, or replicated), checked on
// the token. Another mount's KEK is never used. A message is the caller's
// problem; an error the HSM's.
func (b *backend) backupKEK(ctx context.Context, client *hsm.Client, st *kekState, ref kekVersion) ([]byte, string, error) {
	for _, own := range st.Versions {
		if bytes.Equal(own.ObjectID, ref.ObjectID) {
			return own.ObjectID, "", nil
		}
	}
	label, err := client.CheckKEK(ctx, ref.ObjectID)
	switch {
	case errors.Is(err, hsm.ErrKeyNotFound):
		return nil, fmt.Sprintf("this HSM does not hold the KEK (CKA_ID %x, label %q) that wrapped it; it was trimmed, or the backup comes from another HSM", ref.ObjectID, ref.Label), nil
	case errors.Is(err, hsm.ErrInvalidInput):
		return nil, hsmReason(err), nil
	case err != nil:
		return nil, "", err
	}
	if owner, _, ok := kekLabelOwner(label); ok && owner != b.owner {
		return nil, fmt.Sprintf("its KEK (label %q) belongs to mount %s, and a mount never uses another mount's KEK; restore it on that mount, or give both mounts a KEK made by the HSM's tools (kek_label)", label, owner), nil
	}
	if strings.HasPrefix(label, objectLabelPrefix) {
		return nil, fmt.Sprintf("the object it names as its KEK (label %q) is a key of this plugin, not a KEK", label), nil
	}
	return ref.ObjectID, "", nil
}

// hsmReason is the caller-facing reason of an hsm input error.
func hsmReason(err error) string {
	return strings.TrimPrefix(err.Error(), hsm.ErrInvalidInput.Error()+": ")
}

// sortedVersions lists a key's versions in order, so that the first bad
// one is the one named.
func sortedVersions(k *keyEntry) []int {
	versions := make([]int, 0, len(k.Versions))
	for v := range k.Versions {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	return versions
}

// restoredEntry rebuilds a key entry from a backup's, field by field: only
// what a wrapped key may hold is taken, checked for consistency, and the
// HSM object ids the backup names are never used (each version gets a new
// CKA_ID for its unwrapped copy). It returns what is wrong, or "".
func restoredEntry(name string, in *keyEntry) (*keyEntry, string) {
	kt, ok := keyTypes[in.Type]
	switch {
	case !ok:
		return nil, fmt.Sprintf("type %q is not a key type of this plugin", in.Type)
	case in.Residency != residencyWrapped:
		return nil, fmt.Sprintf("residency %q: only wrapped keys are backed up", in.Residency)
	case !kt.wrappable():
		return nil, fmt.Sprintf("type %s cannot be a wrapped key", kt.name)
	case in.State != stateActive && in.State != stateDeactivated:
		return nil, fmt.Sprintf("state %q is not active or deactivated", in.State)
	case len(in.Description) > maxDescriptionLen:
		return nil, fmt.Sprintf("description is longer than %d bytes", maxDescriptionLen)
	case in.AutoRotatePeriod < 0 || (in.AutoRotatePeriod != 0 && in.AutoRotatePeriod < minAutoRotatePeriod):
		return nil, fmt.Sprintf("auto_rotate_period must be 0 or at least %s", minAutoRotatePeriod)
	}
	if kt.family == familyHMAC {
		if in.Bits < 256 || in.Bits > 4096 || in.Bits%8 != 0 {
			return nil, fmt.Sprintf("an HMAC key of %d bits; 256 to 4096, a multiple of 8", in.Bits)
		}
		kt.bits = in.Bits
	} else if in.Bits != 0 {
		return nil, fmt.Sprintf("bits is set on a %s key", kt.name)
	}
	ops, msg := normaliseOperations(in.Operations, kt)
	switch {
	case msg != "":
		return nil, "operations: " + msg
	case len(ops) == 0:
		return nil, "operations: none given"
	}
	latest, minAvail := in.LatestVersion, max(in.MinAvailableVersion, 1)
	switch {
	case latest < 1 || latest > maxRestoredVersions:
		return nil, fmt.Sprintf("latest_version %d is not between 1 and %d", latest, maxRestoredVersions)
	case in.MinAvailableVersion < 0 || minAvail > latest:
		return nil, fmt.Sprintf("min_available_version %d is not between 0 and latest_version %d", in.MinAvailableVersion, latest)
	case in.MinDecryptionVersion < minAvail || in.MinDecryptionVersion > latest:
		return nil, fmt.Sprintf("min_decryption_version %d is not between %d and latest_version %d", in.MinDecryptionVersion, minAvail, latest)
	case in.MinEncryptionVersion < 0 || in.MinEncryptionVersion > latest:
		return nil, fmt.Sprintf("min_encryption_version %d is not between 0 and latest_version %d", in.MinEncryptionVersion, latest)
	case len(in.Versions) != latest-minAvail+1:
		return nil, fmt.Sprintf("it holds %d versions; versions %d to %d expected", len(in.Versions), minAvail, latest)
	}
	out := &keyEntry{
		Name: name, Type: kt.name, Bits: in.Bits, Operations: ops, State: in.State, Description: in.Description,
		Residency: residencyWrapped, DeletionAllowed: in.DeletionAllowed, AutoRotatePeriod: in.AutoRotatePeriod,
		LatestVersion: latest, MinDecryptionVersion: in.MinDecryptionVersion, MinEncryptionVersion: in.MinEncryptionVersion,
		MinAvailableVersion: in.MinAvailableVersion, Imported: in.Imported, AllowRotation: in.AllowRotation,
		Versions: make(map[int]*keyVersion, len(in.Versions)),
	}
	for v := minAvail; v <= latest; v++ {
		kv := in.Versions[v]
		if kv == nil {
			return nil, fmt.Sprintf("version %d is missing", v)
		}
		if len(kv.Blob) == 0 || len(kv.Blob) > hsm.MaxWrappedBytes {
			return nil, fmt.Sprintf("version %d: a blob of %d bytes; 1 to %d expected", v, len(kv.Blob), hsm.MaxWrappedBytes)
		}
		if msg := checkRestoredPublicKey(kt, kv.PublicKey); msg != "" {
			return nil, fmt.Sprintf("version %d: %s", v, msg)
		}
		origin := kv.Origin
		if origin != "" && origin != originImported {
			return nil, fmt.Sprintf("version %d: origin %q cannot be a wrapped key's", v, origin)
		}
		out.Versions[v] = &keyVersion{
			CreationTime: kv.CreationTime, PublicKey: kv.PublicKey, Origin: origin,
			TransitLayout: kv.TransitLayout && kt.family == familyAES, Blob: kv.Blob, KEKVersion: kv.KEKVersion,
		}
	}
	return out, ""
}

// checkRestoredPublicKey says what is wrong with a backed-up version's
// public key: an asymmetric key's must be of its type, a secret key has
// none. The HSM then checks that the blob's private key matches it.
func checkRestoredPublicKey(kt keyType, der []byte) string {
	if !kt.asymmetric() {
		if len(der) != 0 {
			return "a secret key with a public key"
		}
		return ""
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return "its public key does not parse"
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if kt.family == familyRSA && p.N.BitLen() == kt.bits {
			return ""
		}
	case *ecdsa.PublicKey:
		if kt.family == familyEC && p.Curve.Params().Name == kt.curve {
			return ""
		}
	}
	return fmt.Sprintf("its public key is not a %s key", kt.name)
}
