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
					Callback: b.pathKeyState(keyring.StateActive),
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
					Callback: b.pathKeyState(keyring.StateDeactivated),
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
					Default: keyring.DefaultType,
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

// refuseTransitFlags refuses a Transit flag set to true that the plugin
// cannot honour; it never ignores one silently.
func refuseTransitFlags(d *framework.FieldData, fields ...string) error {
	for _, f := range fields {
		if v, ok := d.GetOk(f); ok && v.(bool) {
			return keyring.Userf("%s=true is not supported: %s", f, transitRefusals[f])
		}
	}
	return nil
}

// keyExists is encrypt's existence check: encrypt on a missing key is a
// create (upsert), which Vault lets only a token with the create
// capability do, as Transit. It answers from the key cache: encrypt asks
// it on every request.
func (b *backend) keyExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	return b.ring.Exists(ctx, req.Storage, d.Get("name").(string))
}

func (b *backend) pathKeysList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := keyring.Names(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathKeyRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := keyring.CheckName(name); err != nil {
		return respondError("read key", err)
	}
	k, err := b.ring.Get(ctx, req.Storage, name)
	if err != nil || k == nil {
		return nil, err // a missing key is Vault's 404, as in Transit
	}
	return &logical.Response{Data: keyResponse(k)}, nil
}

func (b *backend) pathKeyWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := keyring.CheckName(name); err != nil {
		return respondError("create key", err)
	}
	if err := refuseTransitFlags(d, "exportable", "allow_plaintext_backup", "derived", "convergent_encryption"); err != nil {
		return respondError("create key", err)
	}
	if raw, ok := d.Raw["keys"]; ok {
		return b.importJWKList(ctx, req, d, raw)
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("create key", err)
	}
	p, err := keyParams(d, name, conf.DefaultResidency)
	if err != nil {
		return respondError("create key", err)
	}
	b.ring.Lock()
	k, created, err := b.ring.Create(ctx, req.Storage, client, p, conf.MaxKeys)
	b.ring.Unlock()
	if err != nil {
		return respondError(fmt.Sprintf("create key %q", name), err)
	}
	resp := &logical.Response{Data: keyResponse(k)}
	if !created && (k.Type != p.Type.Name || k.KeyType().Bits != p.Type.Bits ||
		!slices.Equal(k.Operations, p.Operations) || k.Residency != p.Residency) {
		// Transit answers a create of an existing key with the key as it
		// is; clients (the Terraform provider) rely on it.
		resp.AddWarning(fmt.Sprintf("key %q already exists as type %s with operations %s and residency %s; nothing was changed",
			name, k.Type, strings.Join(k.Operations, ", "), k.Residency))
	}
	return resp, nil
}

// keyParams reads what a create asks for.
func keyParams(d *framework.FieldData, name, defaultResidency string) (keyring.Params, error) {
	size := d.Get("size").(int)
	if ks, ok := d.GetOk("key_size"); ok && size == 0 {
		size = ks.(int) * 8
	}
	kt, err := keyring.ResolveType(d.Get("type").(string), size, d.Get("curve").(string))
	if err != nil {
		return keyring.Params{}, err
	}
	p := keyring.Params{
		Name:             name,
		Type:             kt,
		Operations:       kt.DefaultOps,
		Description:      d.Get("description").(string),
		Residency:        defaultResidency,
		DeletionAllowed:  d.Get("deletion_allowed").(bool),
		AutoRotatePeriod: time.Duration(d.Get("auto_rotate_period").(int)) * time.Second,
	}
	if ops, ok := d.GetOk("operations"); ok && len(ops.([]string)) > 0 {
		if p.Operations, err = keyring.NormaliseOperations(ops.([]string), kt); err != nil {
			return keyring.Params{}, err
		}
	}
	if r, ok := d.GetOk("residency"); ok && r.(string) != "" {
		p.Residency = strings.ToLower(r.(string))
	}
	return p, p.Check()
}

func (b *backend) pathKeyDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := keyring.CheckName(name); err != nil {
		return respondError("delete key", err)
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("delete key", err)
	}
	b.ring.Lock()
	defer b.ring.Unlock()
	k, err := keyring.Load(ctx, req.Storage, name)
	if err != nil || k == nil {
		return nil, err
	}
	if name == conf.DefaultKey {
		return respondError("delete key", keyring.Userf("key %q is this mount's default key and can never be deleted", name))
	}
	if k.State != keyring.StateDeactivated && !k.DeletionAllowed {
		return respondError("delete key", keyring.Userf("key %q is active and its deletion_allowed is false; deactivate it (keys/%s/deactivate) or set deletion_allowed (keys/%s/config) before deleting it. Deleting destroys it on the HSM: data encrypted under it is lost", name, name, name))
	}
	var warnings []string
	for v, kv := range k.Versions {
		w, err := keyring.DestroyVersion(ctx, client, v, kv)
		warnings = append(warnings, w...)
		if err != nil {
			return respondError(fmt.Sprintf("delete key %q", name), err)
		}
	}
	if err := b.ring.Delete(ctx, req.Storage, name); err != nil {
		return nil, err
	}
	if len(warnings) > 0 {
		return &logical.Response{Warnings: warnings}, nil
	}
	return nil, nil
}

func (b *backend) pathKeyState(state string) framework.OperationFunc {
	return func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
		k, unlock, err := b.ring.ForChange(ctx, req.Storage, d.Get("name").(string))
		if err != nil {
			return respondError("change key state", err)
		}
		defer unlock()
		if k.State != state {
			k.State = state
			if err := b.ring.Save(ctx, req.Storage, k); err != nil {
				return nil, err
			}
			if state == keyring.StateDeactivated {
				b.forgetUnwrapped(ctx, req.Storage, k)
			}
		}
		return &logical.Response{Data: keyResponse(k)}, nil
	}
}

// forgetUnwrapped destroys the cached copies of a key's wrapped versions.
func (b *backend) forgetUnwrapped(ctx context.Context, s logical.Storage, k *keyring.Entry) {
	client, _, err := b.hsmClient(ctx, s)
	if err != nil {
		return // no client: nothing is cached
	}
	keyring.ForgetUnwrapped(client, k)
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
