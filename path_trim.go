package hsmkms

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

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
