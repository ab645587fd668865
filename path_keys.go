package hsmkms

import (
	"context"
	"fmt"
	"slices"
	"strconv"
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
			Fields: map[string]*framework.FieldSchema{
				"tag": {
					Type:        framework.TypeString,
					Description: "Only keys with this tag: key=value, or a key alone for any value.",
				},
				"state": {
					Type:        framework.TypeString,
					Description: "Only keys in this state: active, deactivated or pending_deletion.",
				},
				"unused_for": {
					Type:        framework.TypeDurationSecond,
					Description: "Only keys not used for at least this long (never-used keys included), e.g. 2160h.",
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathKeysList,
					Summary:  "List the keys of this mount, with each key's type, state, tags and last use (key_info).",
				},
			},
			HelpSynopsis:    "List the keys of this mount.",
			HelpDescription: pathKeysListHelpDesc,
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
					Description: "Free text describing the key, at most 4096 bytes.",
				},
				"tags": tagsField,
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

// tagsField is a key's tags, at creation and in keys/:name/config.
var tagsField = &framework.FieldSchema{
	Type: framework.TypeKVPairs,
	Description: "The key's tags: a map of strings, or key=value pairs. At most 50; keys of 1 to 128 letters, digits or " +
		"_ . : / = + @ - (starting with a letter or digit); values of at most 256 printable bytes.",
}

// pathKeysList is Vault's list with info: each key's type, state,
// residency, description, tags, deletion date and last use in key_info,
// filtered by tag, state and unused_for.
func (b *backend) pathKeysList(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	filter, err := readKeyFilter(d, b.ring.Now())
	if err != nil {
		return respondError("list keys", err)
	}
	names, err := keyring.Names(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	var listed []string
	info := map[string]interface{}{}
	for _, name := range names {
		k, err := b.ring.Get(ctx, req.Storage, name)
		if err != nil {
			return nil, err
		}
		if k == nil {
			continue
		}
		u, err := b.ring.Usage(ctx, req.Storage, name)
		if err != nil {
			return nil, err
		}
		if !filter.keeps(k, u) {
			continue
		}
		listed = append(listed, name)
		info[name] = keyInfo(k, u)
	}
	return logical.ListResponseWithInfo(listed, info), nil
}

// keyFilter is what LIST keys keeps.
type keyFilter struct {
	tagKey, tagValue string
	anyValue         bool
	state            string
	unusedSince      time.Time // zero: no filter
}

func readKeyFilter(d *framework.FieldData, now time.Time) (keyFilter, error) {
	var f keyFilter
	if tag := d.Get("tag").(string); tag != "" {
		f.tagKey, f.tagValue, _ = strings.Cut(tag, "=")
		f.anyValue = !strings.Contains(tag, "=")
	}
	if f.state = d.Get("state").(string); f.state != "" && !slices.Contains(keyring.States, f.state) {
		return f, keyring.FieldErrorf("state", "%q is not one of %v", f.state, keyring.States)
	}
	if unused := d.Get("unused_for").(int); unused < 0 {
		return f, keyring.FieldErrorf("unused_for", "must not be negative")
	} else if unused > 0 {
		f.unusedSince = now.Add(-time.Duration(unused) * time.Second)
	}
	return f, nil
}

func (f keyFilter) keeps(k *keyring.Entry, u *keyring.Usage) bool {
	if f.tagKey != "" {
		v, ok := k.Tags[f.tagKey]
		if !ok || (!f.anyValue && v != f.tagValue) {
			return false
		}
	}
	if f.state != "" && k.State != f.state {
		return false
	}
	return f.unusedSince.IsZero() || u.LastUsed.Before(f.unusedSince)
}

// keyInfo is a key's entry in LIST's key_info.
func keyInfo(k *keyring.Entry, u *keyring.Usage) map[string]interface{} {
	info := map[string]interface{}{
		"type": k.Type, "state": k.State, "residency": k.Residency, "description": k.Description,
		"tags": nonNilTags(k.Tags), "latest_version": k.LatestVersion, "last_used": timeOrEmpty(u.LastUsed),
	}
	if !k.DeletionDate.IsZero() {
		info["deletion_date"] = k.DeletionDate.Format(time.RFC3339)
	}
	return info
}

func nonNilTags(tags map[string]string) map[string]string {
	if tags == nil {
		return map[string]string{}
	}
	return tags
}

func timeOrEmpty(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
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
	u, err := b.ring.Usage(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	data := keyResponse(k)
	data["usage"] = usageResponse(u)
	return &logical.Response{Data: data}, nil
}

// usageResponse is a key's usage as reads show it.
func usageResponse(u *keyring.Usage) map[string]interface{} {
	versions := map[string]interface{}{}
	for v, vu := range u.Versions {
		versions[strconv.Itoa(v)] = map[string]interface{}{"last_used": timeOrEmpty(vu.LastUsed), "operations": opsCounts(vu.Ops)}
	}
	return map[string]interface{}{"last_used": timeOrEmpty(u.LastUsed), "operations": opsCounts(u.Ops), "versions": versions}
}

// opsCounts lists every counted operation, 0 for the unused ones.
func opsCounts(ops map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(usageOps))
	for _, op := range usageOps {
		out[op] = ops[op]
	}
	return out
}

// usageOps are the operations a key's usage counts.
var usageOps = []string{"encrypt", "decrypt", "sign", "verify", "hmac", "datakey", "rewrap"}

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
	if err == nil && !created {
		err = k.PendingReuse()
	}
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
		Tags:             d.Get("tags").(map[string]string),
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
	if k.State == keyring.StatePendingDeletion {
		resp := &logical.Response{Data: keyResponse(k)}
		resp.AddWarning(fmt.Sprintf("key %q is already scheduled for deletion on %s", name, k.DeletionDate.Format(time.RFC3339)))
		return resp, nil
	}
	if k.State != keyring.StateDeactivated && !k.DeletionAllowed {
		return respondError("delete key", keyring.Userf("key %q is active and its deletion_allowed is false; deactivate it (keys/%s/deactivate) or set deletion_allowed (keys/%s/config) before deleting it", name, name, name))
	}
	var warnings []string
	u, err := b.ring.Usage(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if recent := conf.deletionWarnRecent(); recent > 0 && !u.LastUsed.IsZero() && b.ring.Now().Sub(u.LastUsed) < recent {
		warnings = append(warnings, fmt.Sprintf("key %q was last used %s (within deletion_warn_recent, %s): data under it may still be in use",
			name, u.LastUsed.UTC().Format(time.RFC3339), recent))
	}
	window := conf.deletionWindow()
	if window == 0 {
		w, err := b.ring.Destroy(ctx, req.Storage, client, k)
		warnings = append(warnings, w...)
		if err != nil {
			return respondError(fmt.Sprintf("delete key %q", name), err)
		}
		b.Logger().Info("key deleted", "key", name)
		if len(warnings) > 0 {
			return &logical.Response{Warnings: warnings}, nil
		}
		return nil, nil
	}
	if err := b.ring.ScheduleDeletion(ctx, req.Storage, k, b.ring.Now().Add(window)); err != nil {
		return nil, err
	}
	b.forgetUnwrapped(ctx, req.Storage, k)
	b.Logger().Info("key scheduled for deletion", "key", name, "deletion_date", k.DeletionDate.Format(time.RFC3339))
	warnings = append(warnings, fmt.Sprintf("key %q is scheduled for deletion on %s and serves nothing until then; cancel it with keys/%s/cancel_deletion. Deleting destroys it on the HSM: data encrypted under it is lost",
		name, k.DeletionDate.Format(time.RFC3339), name))
	return &logical.Response{Data: keyResponse(k), Warnings: warnings}, nil
}

func (b *backend) pathKeyState(state string) framework.OperationFunc {
	return func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
		k, unlock, err := b.ring.ForChange(ctx, req.Storage, d.Get("name").(string))
		if err != nil {
			return respondError("change key state", err)
		}
		defer unlock()
		if k.State == keyring.StatePendingDeletion {
			return respondError("change key state", keyring.Userf("key %q is scheduled for deletion on %s; cancel the deletion first (keys/%s/cancel_deletion)",
				k.Name, k.DeletionDate.Format(time.RFC3339), k.Name))
		}
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

const pathKeysListHelpDesc = `
Lists the keys of this mount, with key_info: each key's type, state,
residency, description, tags, latest version, deletion date and last use.
Filters, as query parameters: tag (key=value, or a key alone), state
(active, deactivated, pending_deletion), unused_for (a duration: keys not
used for at least that long, never-used ones included).

    $ vault list -format=json kms/keys
    $ vault read -format=json kms/keys list=true tag=env=prod unused_for=2160h
    $ curl -H "X-Vault-Token: $VAULT_TOKEN" "$VAULT_ADDR/v1/kms/keys?list=true&state=pending_deletion"
`

const pathKeysHelpSyn = `Create, read and delete keys that live in the HSM.`

const pathKeysHelpDesc = `
A key is an HSM object (CKA_SENSITIVE, never extractable) and a metadata entry
in Vault storage that names it by CKA_ID. Creating a key that exists with the
parameters changes nothing (with other parameters the answer carries a
warning, as Transit's does). Creation
past the mount's max_keys quota is a 400.

Deleting needs the key to be deactivated first, or its deletion_allowed to be
true (Transit's way). It schedules the key's deletion: the key is
pending_deletion for the mount's deletion_window (default 7 days) and serves
nothing; keys/:name/cancel_deletion brings it back (deactivated). When the
window has passed its HSM objects are destroyed and data encrypted under it
can no longer be decrypted. With deletion_window=0s the delete is immediate,
as in Transit. The mount's default key can never be deleted.

Examples:

    $ vault write kms/keys/app1 type=aes256-gcm96
    $ vault write kms/keys/app2 type=oct size=128 operations=encrypt,decrypt
    $ vault read kms/keys/app1
    $ vault write -f kms/keys/app1/deactivate
    $ vault delete kms/keys/app1
`
