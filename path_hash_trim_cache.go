package hsmkms

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

func (b *backend) pathHash() *framework.Path {
	return &framework.Path{
		Pattern:      "hash" + framework.OptionalParamRegex("urlalgorithm"),
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "hash"},
		Fields: map[string]*framework.FieldSchema{
			"input":        {Type: framework.TypeString, Description: "Base64 data to hash."},
			"algorithm":    {Type: framework.TypeString, Default: "sha2-256", Description: "sha2-224, sha2-256 (default), sha2-384, sha2-512, sha3-224, sha3-256, sha3-384 or sha3-512."},
			"urlalgorithm": {Type: framework.TypeString, Description: "The algorithm, as the last path segment."},
			"format":       {Type: framework.TypeString, Default: "hex", Description: "hex (default) or base64."},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathHashWrite, Summary: "Hash data (Transit's hash); no key is involved."},
		},
		HelpSynopsis: "Hash data, as Transit's hash path.",
		HelpDescription: `
Returns sum, the hash of input, computed by the plugin (no key is involved, so
the HSM is not used).

    $ vault write kms/hash/sha3-256 input=$(echo -n data | base64) format=base64
`,
	}
}

func (b *backend) pathHashWrite(_ context.Context, _ *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	input, err := base64.StdEncoding.DecodeString(d.Get("input").(string))
	if err != nil {
		return logical.ErrorResponse("input is not valid base64"), logical.ErrInvalidRequest
	}
	name := d.Get("algorithm").(string)
	if u, ok := d.GetOk("urlalgorithm"); ok && u.(string) != "" {
		name = u.(string)
	}
	hash, ok := wire.LookupHash(name, wire.UseHashPath)
	if !ok {
		return logical.ErrorResponse("algorithm %q is not one of: %s", name, strings.Join(wire.HashNames(wire.UseHashPath), ", ")), logical.ErrInvalidRequest
	}
	h := hash.New()
	h.Write(input)
	sum := h.Sum(nil)
	switch format := strings.ToLower(d.Get("format").(string)); format {
	case "hex":
		return &logical.Response{Data: map[string]interface{}{"sum": hex.EncodeToString(sum)}}, nil
	case "base64":
		return &logical.Response{Data: map[string]interface{}{"sum": base64.StdEncoding.EncodeToString(sum)}}, nil
	default:
		return logical.ErrorResponse("format %q is not one of: hex, base64", format), logical.ErrInvalidRequest
	}
}

func (b *backend) pathKeyTrim() *framework.Path {
	return &framework.Path{
		Pattern:      "keys/" + keyNamePattern + "/trim",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "trim", OperationSuffix: "key"},
		Fields: map[string]*framework.FieldSchema{
			"name": nameField,
			"min_available_version": {
				Type:        framework.TypeInt,
				Description: "Versions below this one are deleted, and their HSM objects destroyed. At most min_decryption_version and min_encryption_version (when set).",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathKeyTrimWrite, Summary: "Delete a key's old versions (Transit's trim)."},
		},
		HelpSynopsis: "Delete old versions of a key, as Transit's trim.",
		HelpDescription: `
Deletes the versions below min_available_version and destroys their HSM
objects (adopted objects only with destroy_on_delete; a wrapped version's
blob is dropped). Data encrypted under them can no longer be decrypted, so
min_available_version may not exceed min_decryption_version.

    $ vault write kms/keys/app1/trim min_available_version=3
`,
	}
}

func (b *backend) pathKeyTrimWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("trim", err)
	}
	k, unlock, err := b.ring.ForChange(ctx, req.Storage, d.Get("name").(string))
	if err != nil {
		return respondError("trim", err)
	}
	defer unlock()
	minAvailable := d.Get("min_available_version").(int)
	current := max(k.MinAvailableVersion, 1)
	switch {
	case minAvailable <= 0:
		return respondError("trim", keyring.Userf("min_available_version must be 1 or more"))
	case minAvailable < current:
		return respondError("trim", keyring.Userf("min_available_version %d is below the current one, %d; trimmed versions are gone", minAvailable, current))
	case minAvailable > k.MinDecryptionVersion:
		return respondError("trim", keyring.Userf("min_available_version %d must not exceed min_decryption_version %d", minAvailable, k.MinDecryptionVersion))
	case k.MinEncryptionVersion != 0 && minAvailable > k.MinEncryptionVersion:
		return respondError("trim", keyring.Userf("min_available_version %d must not exceed min_encryption_version %d", minAvailable, k.MinEncryptionVersion))
	}
	var warnings []string
	for v, kv := range k.Versions {
		if v >= minAvailable {
			continue
		}
		w, err := keyring.DestroyVersion(ctx, client, v, kv)
		warnings = append(warnings, w...)
		if err != nil {
			return respondError(fmt.Sprintf("trim key %q", k.Name), err)
		}
		delete(k.Versions, v)
	}
	k.MinAvailableVersion = minAvailable
	if err := b.ring.Save(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	return &logical.Response{Data: keyResponse(k), Warnings: warnings}, nil
}

const cacheConfigStoragePath = "cache-config"

func (b *backend) pathCacheConfig() *framework.Path {
	return &framework.Path{
		Pattern:      "cache-config",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationSuffix: "cache-configuration"},
		Fields: map[string]*framework.FieldSchema{
			"size": {Type: framework.TypeInt, Description: "Transit's policy cache size; accepted and reported, see the path's help.", Default: 0},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation:   &framework.PathOperation{Callback: b.pathCacheConfigRead, Summary: "Read the cache size (Transit's cache-config)."},
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathCacheConfigWrite, Summary: "Set the cache size (Transit's cache-config)."},
		},
		HelpSynopsis: "Transit's cache-config: accepted and reported.",
		HelpDescription: `
Transit uses size to bound its in-memory cache of key policies. Here the size
is stored and reported so that Transit clients and scripts work, but it
bounds nothing: key metadata is cached for every key read (a key's metadata
is a few hundred bytes, and invalidated when it changes), and the HSM-side
cache of unwrapped keys is bounded by config's unwrapped_cache_size.

    $ vault write kms/cache-config size=500
`,
	}
}

func (b *backend) pathCacheConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	entry, err := req.Storage.Get(ctx, cacheConfigStoragePath)
	if err != nil {
		return nil, fmt.Errorf("reading cache-config: %w", err)
	}
	var c struct {
		Size int `json:"size"`
	}
	if entry != nil {
		if err := entry.DecodeJSON(&c); err != nil {
			return nil, fmt.Errorf("decoding cache-config: %w", err)
		}
	}
	return &logical.Response{Data: map[string]interface{}{"size": c.Size}}, nil
}

func (b *backend) pathCacheConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	size := d.Get("size").(int)
	if size != 0 && size < 10 {
		return logical.ErrorResponse("size must be 0 (no limit) or at least 10, as in Transit"), logical.ErrInvalidRequest
	}
	entry, err := logical.StorageEntryJSON(cacheConfigStoragePath, map[string]int{"size": size})
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, fmt.Errorf("writing cache-config: %w", err)
	}
	resp, err := b.pathCacheConfigRead(ctx, req, d)
	if resp != nil {
		resp.AddWarning("stored and reported; the size bounds nothing here (see path-help cache-config)")
	}
	return resp, err
}
