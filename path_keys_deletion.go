package hsmkms

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func (b *backend) pathKeyDeletion() []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "keys/" + keyNamePattern + "/cancel_deletion",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "cancel-deletion", OperationSuffix: "key"},
			Fields:       map[string]*framework.FieldSchema{"name": nameField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{Callback: b.pathKeyCancelDeletionWrite, Summary: "Cancel a key's scheduled deletion; the key comes back deactivated."},
			},
			HelpSynopsis:    "Cancel a key's scheduled deletion.",
			HelpDescription: pathKeyCancelDeletionHelpDesc,
		},
		{
			// Not keys/:name/purge: Vault's router asks sudo only for root
			// paths matched exactly or by a trailing '*', never with '+'.
			Pattern:      "purge/" + keyNamePattern,
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "purge", OperationSuffix: "key"},
			Fields:       map[string]*framework.FieldSchema{"name": nameField},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{Callback: b.pathKeyPurgeWrite, Summary: "Destroy a key pending deletion now, before its deletion date."},
			},
			HelpSynopsis:    "Destroy a key pending deletion now (sudo).",
			HelpDescription: pathKeyPurgeHelpDesc,
		},
	}
}

func (b *backend) pathKeyCancelDeletionWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	k, unlock, err := b.ring.ForChange(ctx, req.Storage, d.Get("name").(string))
	if err != nil {
		return respondError("cancel deletion", err)
	}
	defer unlock()
	if err := b.ring.CancelDeletion(ctx, req.Storage, k); err != nil {
		return respondError("cancel deletion", err)
	}
	b.Logger().Info("key deletion cancelled", "key", k.Name)
	resp := &logical.Response{Data: keyResponse(k)}
	resp.AddWarning(fmt.Sprintf("key %q is deactivated; activate it (keys/%s/activate) to use it again", k.Name, k.Name))
	return resp, nil
}

func (b *backend) pathKeyPurgeWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("purge key", err)
	}
	k, unlock, err := b.ring.ForChange(ctx, req.Storage, d.Get("name").(string))
	if err != nil {
		return respondError("purge key", err)
	}
	defer unlock()
	switch {
	case conf.PurgeProtection:
		return respondError("purge key", keyring.Userf("this mount has purge_protection: key %q is destroyed on its deletion date, %s, and not before", k.Name, k.DeletionDate.Format(time.RFC3339)))
	case k.State != keyring.StatePendingDeletion:
		return respondError("purge key", keyring.Userf("key %q is %s; only a key scheduled for deletion (DELETE keys/%s) can be purged", k.Name, k.State, k.Name))
	}
	warnings, err := b.ring.Destroy(ctx, req.Storage, client, k)
	if err != nil {
		return respondError(fmt.Sprintf("purge key %q", k.Name), err)
	}
	b.Logger().Info("key purged", "key", k.Name, "deletion_date", k.DeletionDate.Format(time.RFC3339))
	if len(warnings) > 0 {
		return &logical.Response{Warnings: warnings}, nil
	}
	return nil, nil
}

const pathKeyCancelDeletionHelpDesc = `
A deleted key stays pending_deletion for the mount's deletion_window. Until
its deletion date, cancel_deletion brings it back, deactivated: activate it
and every ciphertext and signature made under it works again.

    $ vault write -f kms/keys/app1/cancel_deletion
    $ vault write -f kms/keys/app1/activate
`

const pathKeyPurgeHelpDesc = `
Destroys the HSM objects and the metadata of a key pending deletion at once,
before its deletion date: data encrypted under it is lost for good. Needs
sudo, and is refused on a mount with purge_protection=true, where a key is
destroyed on its deletion date and never before.

    $ vault write -f kms/purge/app1
`
