package keyring

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// MinAutoRotatePeriod is Transit's floor for automatic rotation.
const MinAutoRotatePeriod = time.Hour

// Params is what a new key is made with.
type Params struct {
	Name             string
	Type             KeyType
	Operations       []string
	Description      string
	Residency        string
	DeletionAllowed  bool
	AutoRotatePeriod time.Duration
	// Imported and AllowRotation: made by import or adopt (Transit's
	// imported_key), which rotates only when allowed.
	Imported      bool
	AllowRotation bool
	Tags          map[string]string
}

// Check says what is wrong with p, before anything is made.
func (p Params) Check() error {
	if p.Residency != ResidencyHSM && p.Residency != ResidencyWrapped {
		return Userf("residency %q is not one of: hsm, wrapped", p.Residency)
	}
	if p.Residency == ResidencyWrapped && !p.Type.Wrappable() {
		return Userf("type %s is available with residency 'hsm' only; give residency=hsm", p.Type.Name)
	}
	if p.AutoRotatePeriod != 0 && p.AutoRotatePeriod < MinAutoRotatePeriod {
		return Userf("auto_rotate_period must be 0 (off) or at least %s", MinAutoRotatePeriod)
	}
	if err := CheckDescription(p.Description); err != nil {
		return err
	}
	return CheckTags(p.Tags)
}

// NewEntry is a key with no version yet: the one place an entry is made.
func NewEntry(p Params) *Entry {
	return &Entry{
		Name:                 p.Name,
		Type:                 p.Type.Name,
		Bits:                 hmacBitsOf(p.Type),
		Operations:           p.Operations,
		State:                StateActive,
		Description:          p.Description,
		Residency:            p.Residency,
		DeletionAllowed:      p.DeletionAllowed,
		AutoRotatePeriod:     p.AutoRotatePeriod,
		MinDecryptionVersion: 1,
		Versions:             map[int]*Version{},
		Imported:             p.Imported,
		AllowRotation:        p.AllowRotation,
		Tags:                 p.Tags,
	}
}

// CheckNew refuses a name in use (hint says what to do instead) and a full
// quota (maxKeys; 0 is none): the one existence and quota check of every
// way a key is made. Callers hold the lock.
func (r *Keyring) CheckNew(ctx context.Context, s logical.Storage, name string, maxKeys int, hint string) error {
	existing, err := Load(ctx, s, name)
	if err != nil {
		return err
	}
	if existing != nil {
		if err := existing.PendingReuse(); err != nil {
			return err
		}
		return Userf("key %q already exists; %s", name, hint)
	}
	if maxKeys > 0 {
		names, err := Names(ctx, s)
		if err != nil {
			return err
		}
		if len(names) >= maxKeys {
			return Userf("the quota of %d keys (max_keys) is reached; delete a key or raise max_keys in config", maxKeys)
		}
	}
	return nil
}

// Create makes the key p describes, or returns the existing one of that
// name (created false). Callers hold the lock. A failure at any step
// leaves neither an HSM object nor a storage entry behind; a crash leaves
// a WAL entry that Rollback resolves.
func (r *Keyring) Create(ctx context.Context, s logical.Storage, client HSM, p Params, maxKeys int) (*Entry, bool, error) {
	existing, err := Load(ctx, s, p.Name)
	if err != nil || existing != nil {
		return existing, false, err
	}
	if err := p.Check(); err != nil {
		return nil, false, err
	}
	if err := r.CheckNew(ctx, s, p.Name, maxKeys, ""); err != nil {
		return nil, false, err
	}
	k := NewEntry(p)
	if err := r.AddVersion(ctx, s, client, k); err != nil {
		return nil, false, err
	}
	return k, true, nil
}

// AddVersion makes the key's next version and stores the key with it.
// Callers hold the lock.
func (r *Keyring) AddVersion(ctx context.Context, s logical.Storage, client HSM, k *Entry) error {
	if k.Residency == ResidencyWrapped {
		return r.addWrappedVersion(ctx, s, client, k)
	}
	version := k.LatestVersion + 1
	obj, err := r.BeginObject(ctx, s, client, k.Name, ObjectLabel(r.owner, k.Name, version))
	if err != nil {
		return err
	}
	pub, err := k.KeyType().generate(ctx, client, obj.ID, obj.Label, UsageOf(k.Operations))
	if err != nil {
		obj.Abandon(ctx)
		return err
	}
	kv := &Version{ObjectID: obj.ID, Label: obj.Label, CreationTime: r.Now().UTC()}
	if pub != nil {
		if kv.PublicKey, err = x509.MarshalPKIXPublicKey(pub); err != nil {
			obj.Abandon(ctx)
			return fmt.Errorf("encoding the public key: %w", err)
		}
	}
	var companion *PendingObject
	if k.KeyType().HasHMACCompanion() {
		if companion, err = r.makeHMACCompanion(ctx, s, client, k.Name, obj.Label); err != nil {
			obj.Abandon(ctx)
			return err
		}
		kv.HMACObjectID = companion.ID
	}
	return r.StoreNewVersion(ctx, s, k, version, kv, obj, companion)
}

// addWrappedVersion makes the key's next version as a blob wrapped by the
// latest KEK. Nothing stays on the token, so there is nothing for a WAL
// entry to roll back.
func (r *Keyring) addWrappedVersion(ctx context.Context, s logical.Storage, client HSM, k *Entry) error {
	st, err := r.KEK(ctx, s)
	if err != nil {
		return err
	}
	kekv := st.Versions[st.Latest]
	if kekv == nil {
		return fmt.Errorf("this mount has no KEK; write the config again to make one")
	}
	id, err := client.NewObjectID(ctx)
	if err != nil {
		return err
	}
	version := k.LatestVersion + 1
	label := ObjectLabel(r.owner, k.Name, version)
	kt := k.KeyType()
	spec := kt.Spec(k.Operations, id, label, nil)
	if spec.Kind == hsm.ImportHMAC {
		spec.Bits = kt.Bits
	}
	blob, pub, err := client.GenerateWrapped(ctx, kekv.ObjectID, spec)
	if err != nil {
		return err
	}
	kv := &Version{ObjectID: id, Label: label, CreationTime: r.Now().UTC(), Blob: blob, KEKVersion: st.Latest}
	if pub != nil {
		if kv.PublicKey, err = x509.MarshalPKIXPublicKey(pub); err != nil {
			return fmt.Errorf("encoding the public key: %w", err)
		}
	}
	return r.StoreNewVersion(ctx, s, k, version, kv)
}

// makeHMACCompanion makes the generic secret an AES version computes hmac
// with (Transit gives every key an HMAC key), under its own WAL entry,
// which the caller settles once the version is stored.
func (r *Keyring) makeHMACCompanion(ctx context.Context, s logical.Storage, client HSM, name, label string) (*PendingObject, error) {
	obj, err := r.BeginObject(ctx, s, client, name, label+"/hmac")
	if err != nil {
		return nil, err
	}
	if err := client.GenerateHMACKey(ctx, obj.ID, obj.Label, HMACCompanionBits, hsm.Usage{Sign: true, Verify: true}); err != nil {
		obj.Abandon(ctx)
		return nil, err
	}
	return obj, nil
}

// StoreNewVersion adds kv as version and stores k, then settles the WAL
// entries of the objects it names. On a failed write the objects are left
// to the WAL rollback: the write may have landed (an error from storage is
// ambiguous), and the rollback looks in storage first.
func (r *Keyring) StoreNewVersion(ctx context.Context, s logical.Storage, k *Entry, version int, kv *Version, objects ...*PendingObject) error {
	k.Versions[version] = kv
	k.LatestVersion = version
	crashPoint("after-version-object")
	if err := r.Save(ctx, s, k); err != nil {
		delete(k.Versions, version)
		k.LatestVersion = version - 1
		if len(objects) > 0 {
			r.log.Warn("storing a new key version failed; its HSM objects are left to the WAL rollback", "key", k.Name, "version", version, "error", err)
		}
		return err
	}
	for _, obj := range objects {
		obj.Stored(ctx)
	}
	event := "key rotated"
	if version == 1 {
		event = "key created"
	}
	r.log.Info(event, "key", k.Name, "type", k.Type, "version", version, "residency", k.Residency)
	return nil
}

// DestroyVersion destroys what a key version owns on the token: its HMAC
// companion and, unless the version only borrows it (adopted without
// destroy_on_delete, public-only) or keeps it wrapped in storage (then
// only the cached copy goes), its object. Only objects carrying the labels
// the version recorded are destroyed: an object with the same CKA_ID and
// another label is not the version's, stays on the token, and is named in
// the warnings.
func DestroyVersion(ctx context.Context, client HSM, version int, kv *Version) ([]string, error) {
	var warnings []string
	destroy := func(id []byte, label string) error {
		err := client.DestroyObjects(ctx, id, hsm.ExactLabel(label))
		if errors.Is(err, hsm.ErrNotOwned) {
			warnings = append(warnings, fmt.Sprintf("version %d: %v", version, err))
			return nil
		}
		return err
	}
	if kv.HMACObjectID != nil {
		if err := destroy(kv.HMACObjectID, kv.Label+"/hmac"); err != nil {
			return warnings, fmt.Errorf("destroying the HMAC key of version %d: %w", version, err)
		}
	}
	switch {
	case kv.Wrapped():
		client.ForgetUnwrapped(kv.ObjectID)
	case kv.OwnsObject():
		if err := destroy(kv.ObjectID, kv.Label); err != nil {
			return warnings, fmt.Errorf("destroying version %d: %w", version, err)
		}
	}
	return warnings, nil
}

// ForgetUnwrapped destroys the cached copies of a key's wrapped versions.
func ForgetUnwrapped(client HSM, k *Entry) {
	for _, kv := range k.Versions {
		if kv.Wrapped() {
			client.ForgetUnwrapped(kv.ObjectID)
		}
	}
}

// ImportSource is a key brought in: material the caller sent in the clear
// (checked, ready for the token: raw bytes for AES and HMAC, PKCS#8 for
// RSA and EC), a public key alone, or Transit's BYOK ciphertext.
type ImportSource struct {
	Material   []byte
	Public     crypto.PublicKey
	Ciphertext []byte // BYOK, for the wrapping key
	Hash       crypto.Hash
}

// PublicOnly: nothing private was given.
func (src ImportSource) PublicOnly() bool { return src.Material == nil && src.Ciphertext == nil }

// ImportVersion puts src on the token as k's next version (kt its type)
// and stores k. Callers hold the lock. As with generated keys, a WAL
// entry written before the object exists lets a crash be rolled back.
func (r *Keyring) ImportVersion(ctx context.Context, s logical.Storage, client HSM, k *Entry, kt KeyType, src ImportSource) error {
	version := k.LatestVersion + 1
	kv := &Version{CreationTime: r.Now().UTC(), Origin: OriginImported}
	if src.PublicOnly() {
		der, err := x509.MarshalPKIXPublicKey(src.Public)
		if err != nil {
			return fmt.Errorf("encoding the public key: %w", err)
		}
		kv.PublicKey = der
		return r.StoreNewVersion(ctx, s, k, version, kv)
	}
	var wk hsm.WrappingKey
	if src.Ciphertext != nil {
		w, err := LoadWrappingKey(ctx, s)
		if err != nil {
			return err
		}
		if w == nil {
			return FieldErrorf("ciphertext", "this mount has no wrapping key yet; read wrapping_key and wrap the key for it")
		}
		if wk, err = w.HSMKey(); err != nil {
			return err
		}
	}
	obj, err := r.BeginObject(ctx, s, client, k.Name, ObjectLabel(r.owner, k.Name, version))
	if err != nil {
		return err
	}
	spec := kt.Spec(k.Operations, obj.ID, obj.Label, src.Public)
	var got hsm.Imported
	if src.Ciphertext != nil {
		got, err = client.ImportWrapped(ctx, wk, src.Ciphertext, src.Hash, spec)
	} else {
		if spec.Kind == hsm.ImportHMAC {
			spec.Bits = len(src.Material) * 8
		}
		got, err = client.ImportMaterial(ctx, src.Material, spec)
	}
	if err != nil {
		obj.Abandon(ctx)
		return err
	}
	kv.ObjectID, kv.Label = obj.ID, obj.Label
	kv.TransitLayout = kt.EncryptsGCM()
	if got.Public != nil {
		der, err := x509.MarshalPKIXPublicKey(got.Public)
		if err != nil {
			obj.Abandon(ctx)
			return fmt.Errorf("encoding the public key: %w", err)
		}
		kv.PublicKey = der
	}
	if kt.Family == FamilyHMAC && src.Ciphertext != nil && got.ValueLen > 0 && version == 1 {
		k.Bits = got.ValueLen * 8
	}
	var companion *PendingObject
	if kt.HasHMACCompanion() {
		if companion, err = r.makeHMACCompanion(ctx, s, client, k.Name, obj.Label); err != nil {
			obj.Abandon(ctx)
			return err
		}
		kv.HMACObjectID = companion.ID
	}
	return r.StoreNewVersion(ctx, s, k, version, kv, obj, companion)
}
