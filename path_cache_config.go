package hsmkms

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

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
