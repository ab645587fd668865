package hsmkms

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

const defaultRandomBytes = 32

func (b *backend) pathRandom() *framework.Path {
	return &framework.Path{
		Pattern:      "random" + framework.OptionalParamRegex("urlbytes"),
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "generate", OperationSuffix: "random|random-with-bytes"},
		Fields: map[string]*framework.FieldSchema{
			"urlbytes": {
				Type:        framework.TypeString,
				Description: "Number of bytes, given in the URL (random/:bytes).",
			},
			"bytes": {
				Type:        framework.TypeInt,
				Description: "Number of bytes, 1 to 1048576. Default 32.",
				Default:     defaultRandomBytes,
			},
			"format": {
				Type:        framework.TypeString,
				Description: "Encoding of the result: base64 (default) or hex.",
				Default:     "base64",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathRandomWrite, Summary: "Random bytes from the HSM's RNG."},
		},
		HelpSynopsis: "Return random bytes drawn from the HSM.",
		HelpDescription: `
Draws the bytes from the token's RNG (C_GenerateRandom).

    $ vault write -f kms/random/64 format=hex
`,
	}
}

func (b *backend) pathRandomWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	n := d.Get("bytes").(int)
	if s := d.Get("urlbytes").(string); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			return logical.ErrorResponse("random/%s: the number of bytes must be a whole number", s), logical.ErrInvalidRequest
		}
		n = v
	}
	if n < 1 || n > hsm.MaxRandom {
		return logical.ErrorResponse("bytes must be between 1 and %d, not %d", hsm.MaxRandom, n), logical.ErrInvalidRequest
	}
	format := strings.ToLower(d.Get("format").(string))
	if format != "base64" && format != "hex" {
		return logical.ErrorResponse("format %q is not one of: base64, hex", format), logical.ErrInvalidRequest
	}
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("random", err)
	}
	random, err := client.Random(ctx, n)
	if err != nil {
		return respondError("random", err)
	}
	b.stats.count("random")
	out := base64.StdEncoding.EncodeToString(random)
	if format == "hex" {
		out = hex.EncodeToString(random)
	}
	return &logical.Response{Data: map[string]interface{}{"random_bytes": out}}, nil
}
