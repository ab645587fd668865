package hsmkms

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const configKeysStoragePath = "config/keys"

// keysConfig is Transit's config/keys.
type keysConfig struct {
	DisableUpsert bool `json:"disable_upsert"`
}

func loadKeysConfig(ctx context.Context, s logical.Storage) (*keysConfig, error) {
	entry, err := s.Get(ctx, configKeysStoragePath)
	if err != nil {
		return nil, fmt.Errorf("reading config/keys: %w", err)
	}
	var c keysConfig
	if entry != nil {
		if err := entry.DecodeJSON(&c); err != nil {
			return nil, fmt.Errorf("decoding config/keys: %w", err)
		}
	}
	return &c, nil
}

func (b *backend) pathConfigKeys() *framework.Path {
	return &framework.Path{
		Pattern:      "config/keys",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationSuffix: "keys-configuration"},
		Fields: map[string]*framework.FieldSchema{
			"disable_upsert": {
				Type:        framework.TypeBool,
				Description: "Refuse to create a key when encrypt names one that does not exist (Transit's upsert); by default a token with the create capability on encrypt/:name creates it.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation:   &framework.PathOperation{Callback: b.pathConfigKeysRead, Summary: "Read the mount-wide key settings (Transit's config/keys)."},
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathConfigKeysWrite, Summary: "Set the mount-wide key settings (Transit's config/keys)."},
		},
		HelpSynopsis: "Mount-wide key settings, as Transit's config/keys.",
		HelpDescription: `
disable_upsert: by default, as in Transit, encrypt on a key that does not exist
creates it (type from the request's type field, default aes256-gcm96) when the
token has the create capability on encrypt/:name. disable_upsert=true refuses
that with a 400.

    $ vault write kms/config/keys disable_upsert=true
`,
	}
}

func (b *backend) pathConfigKeysRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	c, err := loadKeysConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{"disable_upsert": c.DisableUpsert}}, nil
}

func (b *backend) pathConfigKeysWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	c, err := loadKeysConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if v, ok := d.GetOk("disable_upsert"); ok {
		c.DisableUpsert = v.(bool)
	}
	entry, err := logical.StorageEntryJSON(configKeysStoragePath, c)
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, fmt.Errorf("writing config/keys: %w", err)
	}
	return b.pathConfigKeysRead(ctx, req, d)
}

// upsertKey creates the key encrypt names when the request is a create
// (the key did not exist and the token may create), as Transit does.
func (b *backend) upsertKey(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if msg := checkKeyName(name); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	kc, err := loadKeysConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if kc.DisableUpsert {
		return logical.ErrorResponse("no key named %q, and upsert is disabled in config/keys; create the key first", name), logical.ErrInvalidRequest
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("encrypt", err)
	}
	typ := d.Get("type").(string)
	kt, msg := resolveKeyType(typ, 0, "")
	if msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	if kt.family != familyAES && kt.family != familyRSA {
		return logical.ErrorResponse("type %s cannot encrypt; upsert makes an AES or RSA key", kt.name), logical.ErrInvalidRequest
	}
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	_, _, err = b.createKeyLocked(ctx, req, client, conf, keyParams{
		name: name, keyType: kt, operations: kt.defaultOps, residency: conf.DefaultResidency,
		description: "created by encrypt (upsert)",
	})
	if err != nil {
		return respondError(fmt.Sprintf("create key %q", name), err)
	}
	return nil, nil
}
