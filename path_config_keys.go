package hsmkms

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
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
	if err := keyring.CheckName(name); err != nil {
		return respondError("encrypt", err)
	}
	kc, err := loadKeysConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if kc.DisableUpsert {
		return respondError("encrypt", keyring.Userf("no key named %q, and upsert is disabled in config/keys; create the key first", name))
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("encrypt", err)
	}
	kt, err := keyring.ResolveType(d.Get("type").(string), 0, "")
	if err != nil {
		return respondError("encrypt", err)
	}
	if !kt.Encrypts() {
		return respondError("encrypt", keyring.Userf("type %s cannot encrypt; upsert makes an AES or RSA key", kt.Name))
	}
	b.ring.Lock()
	defer b.ring.Unlock()
	_, _, err = b.ring.Create(ctx, req.Storage, client, keyring.Params{
		Name: name, Type: kt, Operations: kt.DefaultOps, Residency: conf.DefaultResidency,
		Description: "created by encrypt (upsert)",
	}, conf.MaxKeys)
	if err != nil {
		return respondError(fmt.Sprintf("create key %q", name), err)
	}
	return nil, nil
}
