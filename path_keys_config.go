package hsmkms

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func (b *backend) pathKeyConfig() *framework.Path {
	return &framework.Path{
		Pattern:      "keys/" + keyNamePattern + "/config",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "configure", OperationSuffix: "key"},
		Fields: map[string]*framework.FieldSchema{
			"name": nameField,
			"min_decryption_version": {
				Type:        framework.TypeInt,
				Description: "Oldest version that may still decrypt or verify, 1 to latest_version (0 is taken as 1, with a warning, as in Transit). Older ciphertexts are refused.",
			},
			"min_encryption_version": {
				Type:        framework.TypeInt,
				Description: "Oldest version a caller may pick with key_version to encrypt or sign; 0 means any. Must be 0 or at least min_decryption_version.",
			},
			"deletion_allowed": {
				Type:        framework.TypeBool,
				Description: "Transit's flag: the key may be deleted while active. Otherwise it must be deactivated first.",
			},
			"auto_rotate_period": {
				Type:        framework.TypeDurationSecond,
				Description: "Rotate automatically once the latest version is this old; 0 disables, otherwise at least 1h.",
			},
			"description": {
				Type:        framework.TypeString,
				Description: "Free text describing the key, at most 4096 bytes.",
			},
			"tags":                   tagsField,
			"exportable":             refusedTransitField("exportable"),
			"allow_plaintext_backup": refusedTransitField("allow_plaintext_backup"),
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathKeyConfigWrite, Summary: "Set a key's minimum versions and rotation."},
		},
		HelpSynopsis: "Configure a key's versions and automatic rotation.",
		HelpDescription: `
Sets min_decryption_version (older ciphertexts and signatures are refused),
min_encryption_version, deletion_allowed, auto_rotate_period, description and
tags (which replace the key's tags; tags= with nothing clears them). Automatic
rotation runs in the background from the latest version's creation time, so
it carries on across restarts.

    $ vault write kms/keys/app1/config min_decryption_version=2 auto_rotate_period=720h
`,
	}
}

func (b *backend) pathKeyConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	k, unlock, err := b.ring.ForChange(ctx, req.Storage, d.Get("name").(string))
	if err != nil {
		return respondError("configure key", err)
	}
	defer unlock()
	if err := refuseTransitFlags(d, "exportable", "allow_plaintext_backup"); err != nil {
		return respondError("configure key", err)
	}
	var warnings []string
	if v, ok := d.GetOk("min_decryption_version"); ok {
		k.MinDecryptionVersion = v.(int)
		if k.MinDecryptionVersion == 0 {
			// Transit's clients (the Terraform provider) send 0 for
			// "unset"; Transit makes it 1.
			k.MinDecryptionVersion = 1
			warnings = append(warnings, "min_decryption_version 0 is taken as 1, the oldest version, as in Transit")
		}
	}
	if v, ok := d.GetOk("min_encryption_version"); ok {
		k.MinEncryptionVersion = v.(int)
	}
	if v, ok := d.GetOk("deletion_allowed"); ok {
		k.DeletionAllowed = v.(bool)
	}
	if v, ok := d.GetOk("auto_rotate_period"); ok {
		k.AutoRotatePeriod = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("description"); ok {
		if err := keyring.CheckDescription(v.(string)); err != nil {
			return respondError("configure key", err)
		}
		k.Description = v.(string)
	}
	if v, ok := d.GetOk("tags"); ok {
		if err := keyring.CheckTags(v.(map[string]string)); err != nil {
			return respondError("configure key", err)
		}
		k.Tags = v.(map[string]string)
	}
	switch {
	case k.MinDecryptionVersion < 1 || k.MinDecryptionVersion > k.LatestVersion:
		return respondError("configure key", keyring.Userf("min_decryption_version must be between 1 and the latest version, %d", k.LatestVersion))
	case k.MinEncryptionVersion < 0 || k.MinEncryptionVersion > k.LatestVersion:
		return respondError("configure key", keyring.Userf("min_encryption_version must be 0 or a version up to the latest, %d", k.LatestVersion))
	case k.MinEncryptionVersion != 0 && k.MinEncryptionVersion < k.MinDecryptionVersion:
		return respondError("configure key", keyring.Userf("min_encryption_version (%d) must be 0 or at least min_decryption_version (%d)", k.MinEncryptionVersion, k.MinDecryptionVersion))
	case k.AutoRotatePeriod != 0 && k.AutoRotatePeriod < keyring.MinAutoRotatePeriod:
		return respondError("configure key", keyring.Userf("auto_rotate_period must be 0 (off) or at least %s", keyring.MinAutoRotatePeriod))
	}
	if k.AutoRotatePeriod > 0 && k.Imported && !k.AllowRotation {
		return respondError("configure key", keyring.Userf("auto_rotate_period needs allow_rotation, which key %q was imported without", k.Name))
	}
	if err := b.ring.Save(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	return &logical.Response{Data: keyResponse(k), Warnings: warnings}, nil
}
