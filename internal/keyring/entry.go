package keyring

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Key states.
const (
	StateActive      = "active"
	StateDeactivated = "deactivated"
	// StatePendingDeletion: deleted with a deletion window; the key serves
	// nothing, its objects stay until DeletionDate, and the deletion can
	// be cancelled until then.
	StatePendingDeletion = "pending_deletion"
)

// States lists the states a key can be in.
var States = []string{StateActive, StateDeactivated, StatePendingDeletion}

// Residencies: where a key lives.
const (
	ResidencyHSM     = "hsm"
	ResidencyWrapped = "wrapped"
)

// Origins of a version's key.
const (
	OriginGenerated = "generated"
	OriginImported  = "imported"
	OriginAdopted   = "adopted"
)

const maxKeyNameLen = 128

var keyNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// CheckName says what is wrong with a key name, or nil.
func CheckName(name string) error {
	switch {
	case name == "":
		return Userf("a key name is required")
	case len(name) > maxKeyNameLen:
		return Userf("key name is %d characters long; at most %d allowed", len(name), maxKeyNameLen)
	case strings.Contains(name, ".."):
		return Userf("key name %q must not contain '..'", name)
	case !keyNameRe.MatchString(name):
		return Userf("key name %q may hold only letters, digits, '_', '-' and '.', and must start with a letter or digit", name)
	}
	return nil
}

// Version is one HSM object (or key pair) of a key. Its JSON is the stored
// format: compatibility fixtures (testdata/compat) hold every release's.
type Version struct {
	ObjectID     []byte    `json:"object_id"` // CKA_ID on the token
	Label        string    `json:"label"`     // CKA_LABEL, for people looking at the token
	CreationTime time.Time `json:"creation_time"`
	// PublicKey is the PKIX DER public key of an asymmetric version, kept so
	// that verification, encryption and export need no HSM call.
	PublicKey []byte `json:"public_key,omitempty"`
	// Origin says how the version's key came to the token: generated
	// (""), imported or adopted. A public-only import has no object.
	Origin string `json:"origin,omitempty"`
	// TransitLayout: an imported AES version that also opens Transit's
	// ciphertexts (AAD = associated_data, or none).
	TransitLayout bool `json:"transit_layout,omitempty"`
	// Extractable: adopted with allow_extractable.
	Extractable bool `json:"extractable,omitempty"`
	// DestroyOnDelete: an adopted object the key's deletion destroys.
	DestroyOnDelete bool `json:"destroy_on_delete,omitempty"`
	// Blob is a wrapped version's key, wrapped by KEK version KEKVersion
	// (RFC 5649; PKCS#8 inside for RSA and EC). Such a version has no
	// token object: ObjectID is the CKA_ID its unwrapped copy carries
	// while cached.
	Blob       []byte `json:"blob,omitempty"`
	KEKVersion int    `json:"kek_version,omitempty"`
	// HMACObjectID is an AES version's companion generic secret, made with
	// the version, for hmac as Transit allows it with any key.
	HMACObjectID []byte `json:"hmac_object_id,omitempty"`
}

// Wrapped: the version is kept in storage, wrapped by a KEK.
func (kv *Version) Wrapped() bool { return kv.Blob != nil }

// OriginName is the version's origin, generated when none is stored.
func (kv *Version) OriginName() string {
	if kv.Origin == "" {
		return OriginGenerated
	}
	return kv.Origin
}

// PublicOnly: the version is a public key with no token object.
func (kv *Version) PublicOnly() bool { return len(kv.ObjectID) == 0 && kv.Blob == nil }

// OwnsObject: deleting the key destroys this version's object.
func (kv *Version) OwnsObject() bool {
	return !kv.PublicOnly() && !kv.Wrapped() && (kv.Origin != OriginAdopted || kv.DestroyOnDelete)
}

// PrivateKeyMissing says why a version cannot do what needs its private
// or secret key, or nil.
func (kv *Version) PrivateKeyMissing(name string, version int) error {
	if kv.PublicOnly() {
		return Userf("version %d of key %q was imported as a public key only; it can verify (and encrypt, RSA) but not sign or decrypt", version, name)
	}
	return nil
}

// firstReleaseLabel is the label the first release (877b1fb) gave its
// objects, "hsmkms <key> v<N>"; every later release writes
// hsmkms/<mount uuid>/<key>/v<N>.
var firstReleaseLabel = regexp.MustCompile(`^hsmkms [A-Za-z0-9][A-Za-z0-9_.-]* v[1-9][0-9]*$`)

// SealedDataKeysAsOrdinary: the version was made by the first release,
// which sealed data keys under the ordinary AAD domain, before data keys
// had their own. Its data keys cannot be told from its ordinary
// ciphertexts, so datakey/decrypt opens both on such versions, and only on
// them: what a later release made stays bound to its purpose. The stored
// label says which release made a version, so nothing needs rewriting.
func (kv *Version) SealedDataKeysAsOrdinary() bool {
	return kv.Origin == "" && kv.Blob == nil && firstReleaseLabel.MatchString(kv.Label)
}

// Entry is a key's metadata in Vault storage. The key itself is only on
// the token (or wrapped in Blob). Its JSON is the stored format.
type Entry struct {
	Name                 string           `json:"name"`
	Type                 string           `json:"type"`
	Bits                 int              `json:"bits,omitempty"` // HMAC keys: their size
	Operations           []string         `json:"operations"`
	State                string           `json:"state"`
	Description          string           `json:"description"`
	Residency            string           `json:"residency"`
	DeletionAllowed      bool             `json:"deletion_allowed"`
	AutoRotatePeriod     time.Duration    `json:"auto_rotate_period"`
	LatestVersion        int              `json:"latest_version"`
	MinDecryptionVersion int              `json:"min_decryption_version"`
	MinEncryptionVersion int              `json:"min_encryption_version"`
	MinAvailableVersion  int              `json:"min_available_version,omitempty"` // versions below it were trimmed
	Versions             map[int]*Version `json:"versions"`
	// Imported: the key was made by import or adopt (Transit's
	// imported_key); it rotates only when AllowRotation is set.
	Imported      bool `json:"imported,omitempty"`
	AllowRotation bool `json:"allow_rotation,omitempty"`
	// DeletionDate: when a pending deletion destroys the key.
	DeletionDate time.Time `json:"deletion_date,omitempty"`
	// Tags are the operator's labels of the key (CheckTags).
	Tags map[string]string `json:"tags,omitempty"`
}

// KeyType is the entry's type, with an HMAC key's stored size.
func (k *Entry) KeyType() KeyType {
	kt := types[k.Type]
	if kt.Family == FamilyHMAC && k.Bits != 0 {
		kt.Bits = k.Bits
	}
	return kt
}

// Allows reports whether the key's operations include op.
func (k *Entry) Allows(op string) bool { return slices.Contains(k.Operations, op) }

// Active says why the key is not active, or nil.
func (k *Entry) Active() error {
	switch k.State {
	case StateActive:
		return nil
	case StatePendingDeletion:
		return Userf("key %q is scheduled for deletion on %s and serves no operation; cancel the deletion (keys/%s/cancel_deletion), then activate it, to use it again",
			k.Name, k.DeletionDate.UTC().Format(time.RFC3339), k.Name)
	}
	return Userf("key %q is deactivated; activate it (keys/%s/activate) to use it", k.Name, k.Name)
}

// Usable says why the key cannot do op, or nil.
func (k *Entry) Usable(op string) error {
	if err := k.Active(); err != nil {
		return err
	}
	if op == OpHMAC || op == OpHMACVerify {
		kt := k.KeyType()
		switch {
		case kt.HasHMACCompanion():
			return nil
		case kt.HMACs():
			op = map[string]string{OpHMAC: OpSign, OpHMACVerify: OpVerify}[op]
		default:
			return Userf("key %q is of type %s; hmac needs a key of type hmac or an AES key", k.Name, k.Type)
		}
	}
	if !k.Allows(op) {
		return Userf("key %q does not allow the %s operation; its operations are: %s", k.Name, op, strings.Join(k.Operations, ", "))
	}
	return nil
}

// PendingReuse refuses a new key of a pending key's name, saying when the
// name is free; nil for a key not pending.
func (k *Entry) PendingReuse() error {
	if k.State != StatePendingDeletion {
		return nil
	}
	return Userf("key %q is scheduled for deletion on %s; its name cannot be reused before then (or cancel the deletion: keys/%s/cancel_deletion)",
		k.Name, k.DeletionDate.UTC().Format(time.RFC3339), k.Name)
}

// EncryptionVersion picks the version to encrypt or sign with: the latest
// for 0.
func (k *Entry) EncryptionVersion(requested int) (int, *Version, error) {
	v := requested
	if v == 0 {
		v = k.LatestVersion
	}
	switch {
	case v < 0:
		return 0, nil, Userf("key_version must not be negative")
	case v > k.LatestVersion:
		return 0, nil, Userf("key_version %d does not exist; the latest version of %q is %d", v, k.Name, k.LatestVersion)
	case v < k.MinEncryptionVersion:
		return 0, nil, Userf("key_version %d is below min_encryption_version %d", v, k.MinEncryptionVersion)
	}
	kv := k.Versions[v]
	if kv == nil {
		return 0, nil, Userf("key_version %d of %q is not available", v, k.Name)
	}
	return v, kv, nil
}

// DecryptionVersion checks the version a ciphertext, signature or HMAC
// names; noun says which.
func (k *Entry) DecryptionVersion(v int, noun string) (*Version, error) {
	switch {
	case v > k.LatestVersion:
		return nil, Userf("%s names key version %d, but the latest version of %q is %d", noun, v, k.Name, k.LatestVersion)
	case v < k.MinDecryptionVersion:
		return nil, Userf("%s version %d is below min_decryption_version %d of %q and can no longer be decrypted", noun, v, k.MinDecryptionVersion, k.Name)
	}
	kv := k.Versions[v]
	if kv == nil {
		return nil, Userf("key version %d of %q is not available", v, k.Name)
	}
	return kv, nil
}

// SortedVersions lists the key's versions in order.
func (k *Entry) SortedVersions() []int {
	versions := make([]int, 0, len(k.Versions))
	for v := range k.Versions {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	return versions
}

// Rotates: the periodic check rotates the key.
func (k *Entry) Rotates() bool {
	return k.AutoRotatePeriod > 0 && (!k.Imported || k.AllowRotation)
}

// ObjectLabelPrefix marks every object the plugin makes: its CKA_LABEL is
// hsmkms/<mount uuid>/<key>/v<version>, so tidy can tell the plugin's
// objects from other applications', and one mount's from another's.
const ObjectLabelPrefix = "hsmkms/"

// ObjectLabel is the label of a key version's object.
func ObjectLabel(owner, key string, version int) string {
	return fmt.Sprintf("%s%s/%s/v%d", ObjectLabelPrefix, owner, key, version)
}

// LabelOwner returns the mount uuid of a plugin object's label.
func LabelOwner(label string) (string, bool) {
	rest, ok := strings.CutPrefix(label, ObjectLabelPrefix)
	if !ok {
		return "", false
	}
	owner, _, ok := strings.Cut(rest, "/")
	return owner, ok && owner != ""
}
