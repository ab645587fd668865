package hsmkms

import (
	"context"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

const keyStoragePrefix = "keys/"

const (
	stateActive      = "active"
	stateDeactivated = "deactivated"
)

// Operations a key may allow, in the seeds' spelling.
const (
	opEncrypt   = "encrypt"
	opDecrypt   = "decrypt"
	opWrapKey   = "wrapKey"
	opUnwrapKey = "unwrapKey"
	opSign      = "sign"
	opVerify    = "verify"
)

// keyType describes one key type the mount can create.
type keyType struct {
	name       string
	family     string // "aes"
	bits       int
	allowedOps []string
	defaultOps []string
}

const defaultKeyType = "aes256-gcm96"

var symmetricOps = []string{opEncrypt, opDecrypt, opWrapKey, opUnwrapKey}

var keyTypes = map[string]keyType{
	"aes128-gcm96": {name: "aes128-gcm96", family: "aes", bits: 128, allowedOps: symmetricOps, defaultOps: symmetricOps},
	"aes192-gcm96": {name: "aes192-gcm96", family: "aes", bits: 192, allowedOps: symmetricOps, defaultOps: symmetricOps},
	"aes256-gcm96": {name: "aes256-gcm96", family: "aes", bits: 256, allowedOps: symmetricOps, defaultOps: symmetricOps},
}

// plannedKeyTypes are in the API contract but not built yet; naming one is
// a 400 that says so rather than "unknown type".
var plannedKeyTypes = []string{"rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "hmac"}

func keyTypeNames() string {
	names := make([]string, 0, len(keyTypes))
	for n := range keyTypes {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// resolveKeyType accepts Transit's type names and the seeds' JWK form
// (type=oct with size).
func resolveKeyType(typ string, size int, curve string) (keyType, string) {
	switch strings.ToLower(typ) {
	case "":
		typ = defaultKeyType
	case "oct":
		switch size {
		case 0:
			return keyType{}, "type oct needs size 128, 192 or 256"
		case 128, 192, 256:
			typ = fmt.Sprintf("aes%d-gcm96", size)
		default:
			return keyType{}, fmt.Sprintf("size %d is not an AES key size; use 128, 192 or 256", size)
		}
	case "rsa", "ec":
		return keyType{}, fmt.Sprintf("type %s keys are not available in this version; available: oct (size 128, 192, 256) or %s", typ, keyTypeNames())
	}
	if curve != "" {
		return keyType{}, "curve applies only to EC keys"
	}
	kt, ok := keyTypes[strings.ToLower(typ)]
	if !ok {
		if slices.Contains(plannedKeyTypes, strings.ToLower(typ)) {
			return keyType{}, fmt.Sprintf("type %q is not available in this version; available: %s", typ, keyTypeNames())
		}
		return keyType{}, fmt.Sprintf("unknown key type %q; available: %s (or type=oct with size)", typ, keyTypeNames())
	}
	if size != 0 && size != kt.bits {
		return keyType{}, fmt.Sprintf("size %d does not match type %s", size, kt.name)
	}
	return kt, ""
}

const maxKeyNameLen = 128

var keyNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// checkKeyName returns what is wrong with a key name, or "".
func checkKeyName(name string) string {
	switch {
	case name == "":
		return "a key name is required"
	case len(name) > maxKeyNameLen:
		return fmt.Sprintf("key name is %d characters long; at most %d allowed", len(name), maxKeyNameLen)
	case strings.Contains(name, ".."):
		return fmt.Sprintf("key name %q must not contain '..'", name)
	case !keyNameRe.MatchString(name):
		return fmt.Sprintf("key name %q may hold only letters, digits, '_', '-' and '.', and must start with a letter or digit", name)
	}
	return ""
}

// keyVersion is one HSM object of a key.
type keyVersion struct {
	ObjectID     []byte    `json:"object_id"` // CKA_ID on the token
	Label        string    `json:"label"`     // CKA_LABEL, for people looking at the token
	CreationTime time.Time `json:"creation_time"`
}

// keyEntry is a key's metadata in Vault storage. The key itself is only on
// the token.
type keyEntry struct {
	Name                 string              `json:"name"`
	Type                 string              `json:"type"`
	Operations           []string            `json:"operations"`
	State                string              `json:"state"`
	Description          string              `json:"description"`
	Residency            string              `json:"residency"`
	DeletionAllowed      bool                `json:"deletion_allowed"`
	AutoRotatePeriod     time.Duration       `json:"auto_rotate_period"`
	LatestVersion        int                 `json:"latest_version"`
	MinDecryptionVersion int                 `json:"min_decryption_version"`
	MinEncryptionVersion int                 `json:"min_encryption_version"`
	Versions             map[int]*keyVersion `json:"versions"`
}

func (k *keyEntry) keyType() keyType { return keyTypes[k.Type] }

func (k *keyEntry) allows(op string) bool { return slices.Contains(k.Operations, op) }

// usable returns a caller-facing reason the key cannot do op, or "".
func (k *keyEntry) usable(op string) string {
	if k.State != stateActive {
		return fmt.Sprintf("key %q is deactivated; activate it (keys/%s/activate) to use it", k.Name, k.Name)
	}
	if !k.allows(op) {
		return fmt.Sprintf("key %q does not allow the %s operation; its operations are: %s", k.Name, op, strings.Join(k.Operations, ", "))
	}
	return ""
}

// encryptionVersion picks the version to encrypt with: the latest for 0.
func (k *keyEntry) encryptionVersion(requested int) (int, *keyVersion, string) {
	v := requested
	if v == 0 {
		v = k.LatestVersion
	}
	switch {
	case v < 0:
		return 0, nil, "key_version must not be negative"
	case v > k.LatestVersion:
		return 0, nil, fmt.Sprintf("key_version %d does not exist; the latest version of %q is %d", v, k.Name, k.LatestVersion)
	case v < k.MinEncryptionVersion:
		return 0, nil, fmt.Sprintf("key_version %d is below min_encryption_version %d", v, k.MinEncryptionVersion)
	}
	kv := k.Versions[v]
	if kv == nil {
		return 0, nil, fmt.Sprintf("key_version %d of %q is not available", v, k.Name)
	}
	return v, kv, ""
}

// decryptionVersion checks the version a ciphertext names.
func (k *keyEntry) decryptionVersion(v int) (*keyVersion, string) {
	switch {
	case v > k.LatestVersion:
		return nil, fmt.Sprintf("ciphertext names key version %d, but the latest version of %q is %d", v, k.Name, k.LatestVersion)
	case v < k.MinDecryptionVersion:
		return nil, fmt.Sprintf("ciphertext version %d is below min_decryption_version %d of %q and can no longer be decrypted", v, k.MinDecryptionVersion, k.Name)
	}
	kv := k.Versions[v]
	if kv == nil {
		return nil, fmt.Sprintf("key version %d of %q is not available", v, k.Name)
	}
	return kv, ""
}

func loadKey(ctx context.Context, s logical.Storage, name string) (*keyEntry, error) {
	entry, err := s.Get(ctx, keyStoragePrefix+name)
	if err != nil {
		return nil, fmt.Errorf("reading key %q: %w", name, err)
	}
	if entry == nil {
		return nil, nil
	}
	var k keyEntry
	if err := entry.DecodeJSON(&k); err != nil {
		return nil, fmt.Errorf("decoding key %q: %w", name, err)
	}
	return &k, nil
}

func storeKey(ctx context.Context, s logical.Storage, k *keyEntry) error {
	entry, err := logical.StorageEntryJSON(keyStoragePrefix+k.Name, k)
	if err != nil {
		return fmt.Errorf("encoding key %q: %w", k.Name, err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing key %q: %w", k.Name, err)
	}
	return nil
}

// keyResponse is the read form: Transit's fields plus the seeds'.
func (k *keyEntry) keyResponse() map[string]interface{} {
	versions := make(map[string]int64, len(k.Versions))
	objects := make(map[string]map[string]string, len(k.Versions))
	for v, kv := range k.Versions {
		versions[strconv.Itoa(v)] = kv.CreationTime.Unix()
		objects[strconv.Itoa(v)] = map[string]string{"id": hex.EncodeToString(kv.ObjectID), "label": kv.Label}
	}
	return map[string]interface{}{
		"name":                   k.Name,
		"type":                   k.Type,
		"keys":                   versions,
		"latest_version":         k.LatestVersion,
		"min_available_version":  0,
		"min_decryption_version": k.MinDecryptionVersion,
		"min_encryption_version": k.MinEncryptionVersion,
		"deletion_allowed":       k.DeletionAllowed,
		"auto_rotate_period":     int64(k.AutoRotatePeriod.Seconds()),
		"exportable":             false,
		"allow_plaintext_backup": false,
		"derived":                false,
		"convergent_encryption":  false,
		"imported_key":           false,
		"supports_encryption":    k.allows(opEncrypt) || k.allows(opWrapKey),
		"supports_decryption":    k.allows(opDecrypt) || k.allows(opUnwrapKey),
		"supports_derivation":    false,
		"supports_signing":       k.allows(opSign),
		"state":                  k.State,
		"operations":             k.Operations,
		"description":            k.Description,
		"residency":              k.Residency,
		"hsm_objects":            objects,
	}
}

// userError is a failure the caller caused; it becomes a 400.
type userError struct{ msg string }

func (e userError) Error() string { return e.msg }

func userErrorf(format string, args ...interface{}) error {
	return userError{msg: fmt.Sprintf(format, args...)}
}
