package hsmkms

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// keyNamePattern matches any single path segment; names are checked in the
// handlers so that a bad one gets a 400 that says what is wrong, not a 404.
const keyNamePattern = `(?P<name>[^/]+)`

var nameField = &framework.FieldSchema{
	Type:        framework.TypeString,
	Description: "Name of the key: letters, digits, '_', '-' and '.', at most 128 characters.",
	Required:    true,
}

func (b *backend) pathKeys() []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "keys/?$",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationSuffix: "keys"},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathKeysList,
					Summary:  "List the keys of this mount.",
				},
			},
			HelpSynopsis:    "List the keys of this mount.",
			HelpDescription: "Lists the names of the keys this mount manages.",
		},
		{
			Pattern:      "keys/" + keyNamePattern + "/activate",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "activate", OperationSuffix: "key"},
			Fields:       map[string]*framework.FieldSchema{"name": nameField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathKeyState(stateActive),
					Summary:  "Activate a key so that it can be used again.",
				},
			},
			HelpSynopsis:    "Activate a deactivated key.",
			HelpDescription: "An active key can be used for every operation it allows. Keys are active when created.",
		},
		{
			Pattern:      "keys/" + keyNamePattern + "/deactivate",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "deactivate", OperationSuffix: "key"},
			Fields:       map[string]*framework.FieldSchema{"name": nameField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback: b.pathKeyState(stateDeactivated),
					Summary:  "Deactivate a key: it refuses every operation until activated again.",
				},
			},
			HelpSynopsis:    "Deactivate a key.",
			HelpDescription: "A deactivated key stays on the HSM but refuses every operation with a 400. A key can be deleted when it is deactivated or its deletion_allowed is true.",
		},
		{
			Pattern:      "keys/" + keyNamePattern,
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationSuffix: "key"},
			Fields: map[string]*framework.FieldSchema{
				"name": nameField,
				"type": {
					Type: framework.TypeString,
					Description: "Key type: aes128-gcm96, aes192-gcm96, aes256-gcm96, rsa-2048, rsa-3072, rsa-4096, ecdsa-p256, " +
						"ecdsa-p384, ecdsa-p521, hmac or ed25519 (Transit's names; ed25519 where the token has CKM_EDDSA, e.g. SoftHSM2 2.6, not NSS softokn), or the JWK form: 'oct' or 'RSA' with size, 'EC' with curve. Default aes256-gcm96.",
					Default: defaultKeyType,
				},
				"size": {
					Type:        framework.TypeInt,
					Description: "Key size in bits with type=oct (128, 192, 256) or type=RSA (2048, 3072, 4096).",
				},
				"curve": {
					Type:        framework.TypeString,
					Description: "Curve with type=EC: P-256, P-384 or P-521.",
				},
				"operations": {
					Type: framework.TypeCommaStringSlice,
					Description: "What the key may be used for: encrypt, decrypt, wrapKey, unwrapKey for AES keys (default: all four); " +
						"sign, verify for RSA and EC keys (default), and encrypt, decrypt for RSA keys (RSA-OAEP or PKCS#1 v1.5).",
				},
				"description": {
					Type:        framework.TypeString,
					Description: "Free text describing the key.",
				},
				"residency": {
					Type:        framework.TypeString,
					Description: "Where the key lives: 'hsm' (an HSM object). Default: the mount's default_residency.",
				},
				"deletion_allowed": {
					Type:        framework.TypeBool,
					Description: "Transit's flag: the key may be deleted while active. Otherwise it must be deactivated first.",
				},
				"auto_rotate_period": {
					Type:        framework.TypeDurationSecond,
					Description: "Transit's automatic rotation period, stored for a later version; 0 disables.",
				},
				"key_size": {
					Type:        framework.TypeInt,
					Description: "Transit's key size in bytes for type=hmac (32 to 512).",
				},
				"exportable":             refusedTransitField("exportable"),
				"allow_plaintext_backup": refusedTransitField("allow_plaintext_backup"),
				"derived":                refusedTransitField("derived"),
				"convergent_encryption":  refusedTransitField("convergent_encryption"),
				"keys": {
					Type:         framework.TypeSlice,
					Description:  "The seeds' import form: a list of JSON Web Keys, one per version, oldest first; see keys/:name/import.",
					DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
				},
			},
			// No existence check, as in Transit: creating a key needs the
			// update capability, which Transit policies grant.
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{
					Callback:     b.pathKeyWrite,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "create"},
					Summary:      "Create a key in the HSM; with the same parameters as an existing key, nothing changes.",
				},
				logical.ReadOperation: &framework.PathOperation{
					Callback:     b.pathKeyRead,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read"},
					Summary:      "Read a key's metadata (never its material).",
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback:     b.pathKeyDelete,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete"},
					Summary:      "Delete a deactivated key and destroy its HSM objects.",
				},
			},
			HelpSynopsis:    pathKeysHelpSyn,
			HelpDescription: pathKeysHelpDesc,
		},
	}
}

// transitRefusals are Transit's flags the plugin cannot honour, and why.
var transitRefusals = map[string]string{
	"exportable":             "keys here never leave the HSM",
	"allow_plaintext_backup": "keys here never leave the HSM; backup/:name backs up wrapped keys under the KEK",
	"derived":                "key derivation is not supported",
	"convergent_encryption":  "it needs key derivation, which is not supported",
}

// refusedTransitField is a Transit field the plugin accepts only as false.
func refusedTransitField(name string) *framework.FieldSchema {
	return &framework.FieldSchema{
		Type:        framework.TypeBool,
		Description: fmt.Sprintf("Transit's %s: only false is accepted, because %s.", name, transitRefusals[name]),
	}
}

// refuseTransitFlags answers a 400 for a Transit flag set to true that the
// plugin cannot honour; it never ignores one silently.
func refuseTransitFlags(d *framework.FieldData, fields ...string) *logical.Response {
	for _, f := range fields {
		if v, ok := d.GetOk(f); ok && v.(bool) {
			return logical.ErrorResponse("%s=true is not supported: %s", f, transitRefusals[f])
		}
	}
	return nil
}

// keyExists is encrypt's existence check: encrypt on a missing key is a
// create (upsert), which Vault lets only a token with the create
// capability do, as Transit.
func (b *backend) keyExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	name := d.Get("name").(string)
	if checkKeyName(name) != "" {
		return false, nil
	}
	k, err := loadKey(ctx, req.Storage, name)
	if err != nil {
		return false, err
	}
	return k != nil, nil
}

func (b *backend) pathKeysList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, keyStoragePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathKeyRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if msg := checkKeyName(name); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	k, err := b.cachedKey(ctx, req.Storage, name)
	if err != nil || k == nil {
		return nil, err
	}
	return &logical.Response{Data: k.keyResponse()}, nil
}

// keyParams is what a create request asks for.
type keyParams struct {
	name             string
	keyType          keyType
	operations       []string
	description      string
	residency        string
	deletionAllowed  bool
	autoRotatePeriod time.Duration
}

func (b *backend) pathKeyWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if msg := checkKeyName(name); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	if resp := refuseTransitFlags(d, "exportable", "allow_plaintext_backup", "derived", "convergent_encryption"); resp != nil {
		return resp, logical.ErrInvalidRequest
	}
	if raw, ok := d.Raw["keys"]; ok {
		return b.importJWKList(ctx, req, d, raw)
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("create key", err)
	}
	size := d.Get("size").(int)
	if ks, ok := d.GetOk("key_size"); ok && size == 0 {
		size = ks.(int) * 8
	}
	kt, msg := resolveKeyType(d.Get("type").(string), size, d.Get("curve").(string))
	if msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	p := keyParams{
		name:             name,
		keyType:          kt,
		operations:       kt.defaultOps,
		description:      d.Get("description").(string),
		residency:        conf.DefaultResidency,
		deletionAllowed:  d.Get("deletion_allowed").(bool),
		autoRotatePeriod: time.Duration(d.Get("auto_rotate_period").(int)) * time.Second,
	}
	if ops, ok := d.GetOk("operations"); ok && len(ops.([]string)) > 0 {
		if p.operations, msg = normaliseOperations(ops.([]string), kt); msg != "" {
			return logical.ErrorResponse(msg), logical.ErrInvalidRequest
		}
	}
	if r, ok := d.GetOk("residency"); ok && r.(string) != "" {
		p.residency = strings.ToLower(r.(string))
	}
	if p.residency != residencyHSM && p.residency != residencyWrapped {
		return logical.ErrorResponse("residency %q is not one of: hsm, wrapped", p.residency), logical.ErrInvalidRequest
	}
	if p.residency == residencyWrapped && kt.family == familyEd25519 {
		return logical.ErrorResponse("type ed25519 is available with residency 'hsm' only; give residency=hsm"), logical.ErrInvalidRequest
	}
	if p.autoRotatePeriod != 0 && p.autoRotatePeriod < minAutoRotatePeriod {
		return logical.ErrorResponse("auto_rotate_period must be 0 (off) or at least %s", minAutoRotatePeriod), logical.ErrInvalidRequest
	}

	b.keysMu.Lock()
	k, created, err := b.createKeyLocked(ctx, req, client, conf, p)
	b.keysMu.Unlock()
	if err != nil {
		var ue userError
		if errors.As(err, &ue) {
			return logical.ErrorResponse(ue.msg), logical.ErrInvalidRequest
		}
		return respondError(fmt.Sprintf("create key %q", name), err)
	}
	resp := &logical.Response{Data: k.keyResponse()}
	if !created && (k.Type != p.keyType.name || k.keyType().bits != p.keyType.bits ||
		!slices.Equal(k.Operations, p.operations) || k.Residency != p.residency) {
		// Transit answers a create of an existing key with the key as it
		// is; clients (the Terraform provider) rely on it.
		resp.AddWarning(fmt.Sprintf("key %q already exists as type %s with operations %s and residency %s; nothing was changed",
			name, k.Type, strings.Join(k.Operations, ", "), k.Residency))
	}
	return resp, nil
}

// normaliseOperations checks requested operations against the key type,
// accepting any letter case, and returns them in a fixed order.
func normaliseOperations(requested []string, kt keyType) ([]string, string) {
	var out []string
	for _, r := range requested {
		r = strings.TrimSpace(r)
		idx := slices.IndexFunc(kt.allowedOps, func(op string) bool { return strings.EqualFold(op, r) })
		if idx < 0 {
			return nil, fmt.Sprintf("operation %q is not allowed for %s keys; allowed: %s", r, kt.name, strings.Join(kt.allowedOps, ", "))
		}
		if !slices.Contains(out, kt.allowedOps[idx]) {
			out = append(out, kt.allowedOps[idx])
		}
	}
	slices.SortFunc(out, func(a, b string) int {
		return slices.Index(kt.allowedOps, a) - slices.Index(kt.allowedOps, b)
	})
	return out, ""
}

// createKeyLocked creates the key described by p, or returns the existing
// one when it has the same parameters. Callers hold keysMu. A failure at any
// step leaves neither an HSM object nor a storage entry behind; a crash
// leaves a WAL entry that walRollback resolves.
func (b *backend) createKeyLocked(ctx context.Context, req *logical.Request, client *hsm.Client, conf *mountConfig, p keyParams) (*keyEntry, bool, error) {
	existing, err := loadKey(ctx, req.Storage, p.name)
	if err != nil {
		return nil, false, err
	}
	if existing != nil {
		return existing, false, nil
	}
	if conf.MaxKeys > 0 {
		names, err := req.Storage.List(ctx, keyStoragePrefix)
		if err != nil {
			return nil, false, fmt.Errorf("counting keys: %w", err)
		}
		if len(names) >= conf.MaxKeys {
			return nil, false, userErrorf("the quota of %d keys (max_keys) is reached; delete a key or raise max_keys in config", conf.MaxKeys)
		}
	}

	k := &keyEntry{
		Name:                 p.name,
		Type:                 p.keyType.name,
		Bits:                 hmacBits(p.keyType),
		Operations:           p.operations,
		State:                stateActive,
		Description:          p.description,
		Residency:            p.residency,
		DeletionAllowed:      p.deletionAllowed,
		AutoRotatePeriod:     p.autoRotatePeriod,
		MinDecryptionVersion: 1,
		Versions:             map[int]*keyVersion{},
	}
	if err := b.addVersionLocked(ctx, req.Storage, client, k); err != nil {
		return nil, false, err
	}
	return k, true, nil
}

func hmacBits(kt keyType) int {
	if kt.family == familyHMAC {
		return kt.bits
	}
	return 0
}

// generateVersion makes the HSM object (or key pair) of one key version and
// returns the PKIX DER public key of an asymmetric one.
func (b *backend) generateVersion(ctx context.Context, client *hsm.Client, kt keyType, ops []string, id []byte, label string) ([]byte, error) {
	use := usageOf(ops)
	var pub crypto.PublicKey
	var err error
	switch kt.family {
	case familyAES:
		return nil, client.GenerateAESKey(ctx, id, label, kt.bits, use)
	case familyRSA:
		pub, err = client.GenerateRSAKeyPair(ctx, id, label, kt.bits, use)
	case familyEC:
		pub, err = client.GenerateECKeyPair(ctx, id, label, kt.curve, use)
	case familyHMAC:
		return nil, client.GenerateHMACKey(ctx, id, label, kt.bits, use)
	case familyEd25519:
		pub, err = client.GenerateEd25519KeyPair(ctx, id, label, use)
	default:
		return nil, fmt.Errorf("key type %s has no generator", kt.name)
	}
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding the public key: %w", err)
	}
	return der, nil
}

// addWrappedVersionLocked makes the key's next version as a blob wrapped by
// the latest KEK. Nothing stays on the token, so there is nothing for a WAL
// entry to roll back.
func (b *backend) addWrappedVersionLocked(ctx context.Context, s logical.Storage, client *hsm.Client, k *keyEntry) error {
	st, err := b.kek(ctx, s)
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
	label := objectLabel(b.owner, k.Name, version)
	spec := importSpec(k.keyType(), k.Operations, id, label, nil)
	if spec.Kind == hsm.ImportHMAC {
		spec.Bits = k.keyType().bits
	}
	blob, pub, err := client.GenerateWrapped(ctx, kekv.ObjectID, spec)
	if err != nil {
		return err
	}
	kv := &keyVersion{ObjectID: id, Label: label, CreationTime: b.now().UTC(), Blob: blob, KEKVersion: st.Latest}
	if pub != nil {
		if kv.PublicKey, err = x509.MarshalPKIXPublicKey(pub); err != nil {
			return fmt.Errorf("encoding the public key: %w", err)
		}
	}
	return b.storeNewVersionLocked(ctx, s, k, version, kv)
}

// usageOf is the token usage a key's operations need.
func usageOf(ops []string) hsm.Usage {
	has := func(op string) bool { return slices.Contains(ops, op) }
	return hsm.Usage{
		Encrypt: has(opEncrypt) || has(opWrapKey),
		Decrypt: has(opDecrypt) || has(opUnwrapKey),
		Sign:    has(opSign),
		Verify:  has(opVerify),
	}
}

// addVersionLocked makes the key's next version in the HSM and stores the
// key with it. Callers hold keysMu. A WAL entry written before the HSM object
// exists lets a crash before the storage write be rolled back. A failure to
// make the object destroys what may exist at once; a failed storage write
// does not: the write may have landed (an error from storage is ambiguous),
// so the WAL rollback, which looks in storage first, decides.
func (b *backend) addVersionLocked(ctx context.Context, s logical.Storage, client *hsm.Client, k *keyEntry) error {
	if k.Residency == residencyWrapped {
		return b.addWrappedVersionLocked(ctx, s, client, k)
	}
	version := k.LatestVersion + 1
	obj, err := b.beginObject(ctx, s, client, k.Name, objectLabel(b.owner, k.Name, version))
	if err != nil {
		return err
	}
	publicKey, err := b.generateVersion(ctx, client, k.keyType(), k.Operations, obj.ID, obj.Label)
	if err != nil {
		obj.abandon(ctx)
		return err
	}
	kv := &keyVersion{ObjectID: obj.ID, Label: obj.Label, CreationTime: b.now().UTC(), PublicKey: publicKey}
	var companion *pendingObject
	if k.keyType().family == familyAES {
		if companion, err = b.makeHMACCompanion(ctx, s, client, k.Name, obj.Label); err != nil {
			obj.abandon(ctx)
			return err
		}
		kv.HMACObjectID = companion.ID
	}
	return b.storeNewVersionLocked(ctx, s, k, version, kv, obj, companion)
}

// makeHMACCompanion makes the generic secret an AES version computes hmac
// with (Transit gives every key an HMAC key), under its own WAL entry,
// which the caller settles once the version is stored.
func (b *backend) makeHMACCompanion(ctx context.Context, s logical.Storage, client *hsm.Client, name, label string) (*pendingObject, error) {
	obj, err := b.beginObject(ctx, s, client, name, label+"/hmac")
	if err != nil {
		return nil, err
	}
	if err := client.GenerateHMACKey(ctx, obj.ID, obj.Label, hmacCompanionBits, hsm.Usage{Sign: true, Verify: true}); err != nil {
		obj.abandon(ctx)
		return nil, err
	}
	return obj, nil
}

func (b *backend) pathKeyDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if msg := checkKeyName(name); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("delete key", err)
	}
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	k, err := loadKey(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return nil, nil
	}
	if name == conf.DefaultKey {
		return logical.ErrorResponse("key %q is this mount's default key and can never be deleted", name), logical.ErrInvalidRequest
	}
	if k.State != stateDeactivated && !k.DeletionAllowed {
		return logical.ErrorResponse("key %q is active and its deletion_allowed is false; deactivate it (keys/%s/deactivate) or set deletion_allowed (keys/%s/config) before deleting it. Deleting destroys it on the HSM: data encrypted under it is lost", name, name, name), logical.ErrInvalidRequest
	}
	var warnings []string
	for v, kv := range k.Versions {
		w, err := destroyVersion(ctx, client, v, kv)
		warnings = append(warnings, w...)
		if err != nil {
			return respondError(fmt.Sprintf("delete key %q", name), err)
		}
	}
	if err := b.deleteKey(ctx, req.Storage, name); err != nil {
		return nil, err
	}
	if len(warnings) > 0 {
		return &logical.Response{Warnings: warnings}, nil
	}
	return nil, nil
}

func (b *backend) pathKeyState(state string) framework.OperationFunc {
	return func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
		k, unlock, resp, err := b.lockKeyForChange(ctx, req, d)
		if k == nil {
			return resp, err
		}
		defer unlock()
		if k.State != state {
			k.State = state
			if err := b.saveKey(ctx, req.Storage, k); err != nil {
				return nil, err
			}
			if state == stateDeactivated {
				b.forgetUnwrapped(ctx, req.Storage, k)
			}
		}
		return &logical.Response{Data: k.keyResponse()}, nil
	}
}

// lockKeyForChange checks the name, takes keysMu and loads a fresh copy of
// the key from storage for a handler to change. When the key is nil the
// handler returns resp and err as they are (nothing is locked then).
func (b *backend) lockKeyForChange(ctx context.Context, req *logical.Request, d *framework.FieldData) (*keyEntry, func(), *logical.Response, error) {
	name := d.Get("name").(string)
	if msg := checkKeyName(name); msg != "" {
		return nil, nil, logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	b.keysMu.Lock()
	k, err := loadKey(ctx, req.Storage, name)
	if err != nil || k == nil {
		b.keysMu.Unlock()
		if err != nil {
			return nil, nil, nil, err
		}
		return nil, nil, logical.ErrorResponse("no key named %q in this mount", name), logical.ErrInvalidRequest
	}
	return k, b.keysMu.Unlock, nil, nil
}

const pathKeysHelpSyn = `Create, read and delete keys that live in the HSM.`

const pathKeysHelpDesc = `
A key is an HSM object (CKA_SENSITIVE, never extractable) and a metadata entry
in Vault storage that names it by CKA_ID. Creating a key that exists with the
parameters changes nothing (with other parameters the answer carries a
warning, as Transit's does). Creation
past the mount's max_keys quota is a 400.

Deleting needs the key to be deactivated first, or its deletion_allowed to be
true (Transit's way), and destroys its HSM objects:
data encrypted under it can no longer be decrypted. The mount's default key
can never be deleted.

Examples:

    $ vault write kms/keys/app1 type=aes256-gcm96
    $ vault write kms/keys/app2 type=oct size=128 operations=encrypt,decrypt
    $ vault read kms/keys/app1
    $ vault write -f kms/keys/app1/deactivate
    $ vault delete kms/keys/app1
`
