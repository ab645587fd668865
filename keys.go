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

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
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
	// opHMAC is not a key operation: it names the hmac path's check (HMAC
	// keys need sign; AES keys allow it, as in Transit).
	opHMAC       = "hmac"
	opHMACVerify = "hmac verification"
)

// keyType describes one key type the mount can create.
type keyType struct {
	name       string
	family     string // familyAES, familyRSA or familyEC
	bits       int    // AES and RSA key size
	curve      string // EC curve name
	allowedOps []string
	defaultOps []string
}

const (
	familyAES     = "aes"
	familyRSA     = "rsa"
	familyEC      = "ec"
	familyHMAC    = "hmac"
	familyEd25519 = "ed25519"
)

// defaultHMACBits: long enough for HMAC-SHA-512, which some tokens (SoftHSM
// among them) refuse with a key shorter than the hash.
const defaultHMACBits = 512

// wrappable: the type can have residency wrapped (Ed25519 cannot: the
// tokens have no PKCS#8 unwrap for it).
func (kt keyType) wrappable() bool { return kt.family != familyEd25519 }

func (kt keyType) asymmetric() bool {
	return kt.family == familyRSA || kt.family == familyEC || kt.family == familyEd25519
}

const defaultKeyType = "aes256-gcm96"

var (
	symmetricOps  = []string{opEncrypt, opDecrypt, opWrapKey, opUnwrapKey}
	signingOps    = []string{opSign, opVerify}
	rsaAllowedOps = []string{opSign, opVerify, opEncrypt, opDecrypt}
)

var keyTypes = map[string]keyType{
	"aes128-gcm96": {name: "aes128-gcm96", family: familyAES, bits: 128, allowedOps: symmetricOps, defaultOps: symmetricOps},
	"aes192-gcm96": {name: "aes192-gcm96", family: familyAES, bits: 192, allowedOps: symmetricOps, defaultOps: symmetricOps},
	"aes256-gcm96": {name: "aes256-gcm96", family: familyAES, bits: 256, allowedOps: symmetricOps, defaultOps: symmetricOps},
	"rsa-2048":     {name: "rsa-2048", family: familyRSA, bits: 2048, allowedOps: rsaAllowedOps, defaultOps: rsaAllowedOps},
	"rsa-3072":     {name: "rsa-3072", family: familyRSA, bits: 3072, allowedOps: rsaAllowedOps, defaultOps: rsaAllowedOps},
	"rsa-4096":     {name: "rsa-4096", family: familyRSA, bits: 4096, allowedOps: rsaAllowedOps, defaultOps: rsaAllowedOps},
	"ecdsa-p256":   {name: "ecdsa-p256", family: familyEC, curve: "P-256", allowedOps: signingOps, defaultOps: signingOps},
	"ecdsa-p384":   {name: "ecdsa-p384", family: familyEC, curve: "P-384", allowedOps: signingOps, defaultOps: signingOps},
	"ecdsa-p521":   {name: "ecdsa-p521", family: familyEC, curve: "P-521", allowedOps: signingOps, defaultOps: signingOps},
	"hmac":         {name: "hmac", family: familyHMAC, bits: defaultHMACBits, allowedOps: signingOps, defaultOps: signingOps},
	"ed25519":      {name: "ed25519", family: familyEd25519, allowedOps: signingOps, defaultOps: signingOps},
}

// plannedKeyTypes are in the API contract but not built yet; naming one is
// a 400 that says so rather than "unknown type".
var plannedKeyTypes []string

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
//
// Keys named with Transit's type names get Transit's default operations
// (RSA: sign, verify, encrypt, decrypt); the seeds' form keeps the seeds'
// defaults (RSA: sign, verify).
func resolveKeyType(typ string, size int, curve string) (keyType, string) {
	seedsRSA := false
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
	case "rsa":
		switch size {
		case 2048, 3072, 4096:
			typ = fmt.Sprintf("rsa-%d", size)
			seedsRSA = true
		default:
			return keyType{}, fmt.Sprintf("type RSA needs size 2048, 3072 or 4096, not %d", size)
		}
		size = 0
	case "ec":
		switch strings.ToUpper(curve) {
		case "P-256", "P-384", "P-521":
			typ = "ecdsa-p" + curve[2:]
		default:
			return keyType{}, fmt.Sprintf("type EC needs curve P-256, P-384 or P-521, not %q", curve)
		}
		curve = ""
	}
	if curve != "" {
		return keyType{}, "curve applies only to type EC"
	}
	kt, ok := keyTypes[strings.ToLower(typ)]
	if !ok {
		if slices.Contains(plannedKeyTypes, strings.ToLower(typ)) {
			return keyType{}, fmt.Sprintf("type %q is not available in this version; available: %s", typ, keyTypeNames())
		}
		return keyType{}, fmt.Sprintf("unknown key type %q; available: %s (or type=oct with size)", typ, keyTypeNames())
	}
	if seedsRSA {
		kt.defaultOps = signingOps
	}
	if kt.family == familyHMAC && size != 0 {
		if size < 256 || size > 4096 || size%8 != 0 {
			return keyType{}, fmt.Sprintf("HMAC key size %d bits: give 256 to 4096, a multiple of 8", size)
		}
		kt.bits = size
		return kt, ""
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

// keyVersion is one HSM object (or key pair) of a key.
type keyVersion struct {
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

// firstReleaseLabel is the label the first release (877b1fb) gave its
// objects, "hsmkms <key> v<N>"; every later release writes
// hsmkms/<mount uuid>/<key>/v<N>.
var firstReleaseLabel = regexp.MustCompile(`^hsmkms [A-Za-z0-9][A-Za-z0-9_.-]* v[1-9][0-9]*$`)

// sealedDataKeysAsOrdinary: the version was made by the first release,
// which sealed data keys under the ordinary AAD domain, before data keys
// had their own. Its data keys cannot be told from its ordinary
// ciphertexts, so datakey/decrypt opens both on such versions, and only on
// them: what a later release made stays bound to its purpose. The stored
// label says which release made a version, so nothing needs rewriting.
func (kv *keyVersion) sealedDataKeysAsOrdinary() bool {
	return kv.Origin == "" && kv.Blob == nil && firstReleaseLabel.MatchString(kv.Label)
}

// wrapped: the version is kept in storage, wrapped by a KEK.
func (kv *keyVersion) wrapped() bool { return kv.Blob != nil }

const (
	originGenerated = "generated"
	originImported  = "imported"
	originAdopted   = "adopted"
)

func (kv *keyVersion) origin() string {
	if kv.Origin == "" {
		return originGenerated
	}
	return kv.Origin
}

// publicOnly: the version is a public key with no token object.
func (kv *keyVersion) publicOnly() bool { return len(kv.ObjectID) == 0 && kv.Blob == nil }

// ownsObject: deleting the key destroys this version's object.
func (kv *keyVersion) ownsObject() bool {
	return !kv.publicOnly() && !kv.wrapped() && (kv.Origin != originAdopted || kv.DestroyOnDelete)
}

// privateKeyMissing is the caller-facing reason a version cannot do what
// needs its private or secret key, or "".
func (kv *keyVersion) privateKeyMissing(name string, version int) string {
	if kv.publicOnly() {
		return fmt.Sprintf("version %d of key %q was imported as a public key only; it can verify (and encrypt, RSA) but not sign or decrypt", version, name)
	}
	return ""
}

// keyEntry is a key's metadata in Vault storage. The key itself is only on
// the token.
type keyEntry struct {
	Name                 string              `json:"name"`
	Type                 string              `json:"type"`
	Bits                 int                 `json:"bits,omitempty"` // HMAC keys: their size
	Operations           []string            `json:"operations"`
	State                string              `json:"state"`
	Description          string              `json:"description"`
	Residency            string              `json:"residency"`
	DeletionAllowed      bool                `json:"deletion_allowed"`
	AutoRotatePeriod     time.Duration       `json:"auto_rotate_period"`
	LatestVersion        int                 `json:"latest_version"`
	MinDecryptionVersion int                 `json:"min_decryption_version"`
	MinEncryptionVersion int                 `json:"min_encryption_version"`
	MinAvailableVersion  int                 `json:"min_available_version,omitempty"` // versions below it were trimmed
	Versions             map[int]*keyVersion `json:"versions"`
	// Imported: the key was made by import or adopt (Transit's
	// imported_key); it rotates only when AllowRotation is set.
	Imported      bool `json:"imported,omitempty"`
	AllowRotation bool `json:"allow_rotation,omitempty"`
}

func (k *keyEntry) keyType() keyType {
	kt := keyTypes[k.Type]
	if kt.family == familyHMAC && k.Bits != 0 {
		kt.bits = k.Bits
	}
	return kt
}

func (k *keyEntry) allows(op string) bool { return slices.Contains(k.Operations, op) }

// usable returns a caller-facing reason the key cannot do op, or "".
func (k *keyEntry) usable(op string) string {
	if k.State != stateActive {
		return fmt.Sprintf("key %q is deactivated; activate it (keys/%s/activate) to use it", k.Name, k.Name)
	}
	if op == opHMAC || op == opHMACVerify {
		switch k.keyType().family {
		case familyAES:
			return ""
		case familyHMAC:
			op = map[string]string{opHMAC: opSign, opHMACVerify: opVerify}[op]
		default:
			return fmt.Sprintf("key %q is of type %s; hmac needs a key of type hmac or an AES key", k.Name, k.Type)
		}
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
	versions := make(map[string]interface{}, len(k.Versions))
	objects := make(map[string]map[string]interface{}, len(k.Versions))
	jwks := map[string]interface{}{}
	kt := k.keyType()
	for v, kv := range k.Versions {
		objects[strconv.Itoa(v)] = map[string]interface{}{
			"id":                hex.EncodeToString(kv.ObjectID),
			"label":             kv.Label,
			"origin":            kv.origin(),
			"public_only":       kv.publicOnly(),
			"transit_layout":    kv.TransitLayout,
			"extractable":       kv.Extractable,
			"destroy_on_delete": kv.ownsObject(),
		}
		if kv.wrapped() {
			objects[strconv.Itoa(v)]["kek_version"] = kv.KEKVersion
		}
		if kv.HMACObjectID != nil {
			objects[strconv.Itoa(v)]["hmac_id"] = hex.EncodeToString(kv.HMACObjectID)
			objects[strconv.Itoa(v)]["hmac_label"] = kv.Label + "/hmac"
		}
		if v < k.MinDecryptionVersion {
			continue // Transit lists only the versions that still decrypt
		}
		if !kt.asymmetric() {
			versions[strconv.Itoa(v)] = kv.CreationTime.Unix()
			continue
		}
		// Exactly Transit's fields, all strings: clients such as the
		// Terraform provider decode each version as a map of strings.
		versions[strconv.Itoa(v)] = map[string]interface{}{
			"name":              transitKeyName(kt),
			"creation_time":     kv.CreationTime.Format(time.RFC3339Nano),
			"public_key":        transitPublicKey(kt, kv.PublicKey),
			"certificate_chain": "",
			"hybrid_public_key": "",
		}
		if jwk, err := wire.PublicJWK(kv.PublicKey, fmt.Sprintf("%s:v%d", k.Name, v)); err == nil {
			jwks[strconv.Itoa(v)] = jwk
		}
	}
	resp := map[string]interface{}{
		"name":                   k.Name,
		"type":                   k.Type,
		"keys":                   versions,
		"latest_version":         k.LatestVersion,
		"min_available_version":  k.MinAvailableVersion,
		"min_decryption_version": k.MinDecryptionVersion,
		"min_encryption_version": k.MinEncryptionVersion,
		"deletion_allowed":       k.DeletionAllowed,
		"auto_rotate_period":     int64(k.AutoRotatePeriod.Seconds()),
		"exportable":             false,
		"allow_plaintext_backup": false,
		"derived":                false,
		"convergent_encryption":  false,
		"imported_key":           k.Imported,
		"allow_rotation":         k.AllowRotation,
		"supports_encryption":    k.allows(opEncrypt) || k.allows(opWrapKey),
		"supports_decryption":    k.allows(opDecrypt) || k.allows(opUnwrapKey),
		"supports_derivation":    false,
		"supports_signing":       k.allows(opSign) && kt.family != familyHMAC,
		"state":                  k.State,
		"operations":             k.Operations,
		"description":            k.Description,
		"residency":              k.Residency,
		"hsm_objects":            objects,
		"public_jwks":            jwks,
	}
	if kt.family == familyHMAC {
		// Transit's read of an HMAC key: key_size in bytes (the Terraform
		// provider needs it) and no keys map; versions are in hsm_objects.
		resp["key_size"] = kt.bits / 8
		delete(resp, "keys")
	}
	return resp
}

// userError is a failure the caller caused; it becomes a 400.
type userError struct{ msg string }

func (e userError) Error() string { return e.msg }

func userErrorf(format string, args ...interface{}) error {
	return userError{msg: fmt.Sprintf(format, args...)}
}
