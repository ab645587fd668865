package hsmkms

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
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
