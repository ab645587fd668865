package hsmkms

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func (b *backend) pathKeyRotate() *framework.Path {
	return &framework.Path{
		Pattern:      "keys/" + keyNamePattern + "/rotate",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "rotate", OperationSuffix: "key"},
		Fields:       map[string]*framework.FieldSchema{"name": nameField},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathKeyRotateWrite, Summary: "Make a new version of a key: a new HSM object."},
		},
		HelpSynopsis: "Rotate a key: its new version is a new HSM object.",
		HelpDescription: `
Creates a new HSM object (or key pair) as the key's latest version. Encrypt
and sign use it from then on; older versions still decrypt and verify down to
min_decryption_version. rewrap moves ciphertexts to the latest version.

    $ vault write -f kms/keys/app1/rotate
`,
	}
}

func (b *backend) pathKeyRotateWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("rotate", err)
	}
	k, unlock, err := b.ring.ForChange(ctx, req.Storage, d.Get("name").(string))
	if err != nil {
		return respondError("rotate", err)
	}
	defer unlock()
	if err := k.Active(); err != nil {
		return respondError("rotate", err)
	}
	if k.Imported && !k.AllowRotation {
		return respondError("rotate", keyring.Userf("key %q was imported with allow_rotation=false, as Transit does by default; add versions with import_version, or import it with allow_rotation=true", k.Name))
	}
	if err := b.ring.AddVersion(ctx, req.Storage, client, k); err != nil {
		return respondError(fmt.Sprintf("rotate key %q", k.Name), err)
	}
	b.stats.count("rotate")
	return &logical.Response{Data: keyResponse(k)}, nil
}

// autoRotateCheckInterval is how often the periodic function looks for
// keys due for rotation (Vault calls it about once a minute), as Transit.
const autoRotateCheckInterval = time.Hour

// rotateDueKeys is the backend's periodic function. It does nothing on
// performance standbys and replication secondaries, which must not write
// storage nor touch the HSM for it, and looks at the keys once an hour; a
// key is rotated by the first check after its period ran out. It reads the
// cached key entries without a lock and takes the key lock only for a key
// that is due.
func (b *backend) rotateDueKeys(ctx context.Context, req *logical.Request) error {
	now := b.ring.Now()
	if next, _ := b.nextRotateCheck.Load().(time.Time); now.Before(next) {
		return nil
	}
	b.nextRotateCheck.Store(now.Add(autoRotateCheckInterval))
	conf, err := loadConfig(ctx, req.Storage)
	if err != nil || conf == nil {
		return err
	}
	names, err := keyring.KeysToCheckForRotation(ctx, req.Storage)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		k, err := b.ring.Get(ctx, req.Storage, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %q: %w", name, err))
			continue
		}
		if k == nil || !k.Rotates() {
			if err := keyring.DropFromRotationIndex(ctx, req.Storage, name); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if !b.rotationDue(k) {
			continue
		}
		if err := b.rotateIfDue(ctx, req.Storage, name); err != nil {
			errs = append(errs, fmt.Errorf("key %q: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (b *backend) rotateIfDue(ctx context.Context, s logical.Storage, name string) error {
	b.ring.Lock()
	defer b.ring.Unlock()
	k, err := keyring.Load(ctx, s, name)
	if err != nil || k == nil || !b.rotationDue(k) {
		return err
	}
	client, _, err := b.hsmClient(ctx, s)
	if err != nil {
		return err
	}
	if err := b.ring.AddVersion(ctx, s, client, k); err != nil {
		return err
	}
	b.stats.count("auto_rotate")
	b.Logger().Info("rotated key automatically", "key", name, "version", k.LatestVersion)
	return nil
}

// rotationDue reports whether k's automatic rotation period ran out.
func (b *backend) rotationDue(k *keyring.Entry) bool {
	if k.AutoRotatePeriod <= 0 || k.State != keyring.StateActive || (k.Imported && !k.AllowRotation) {
		return false
	}
	latest := k.Versions[k.LatestVersion]
	return latest != nil && b.ring.Now().Sub(latest.CreationTime) >= k.AutoRotatePeriod
}
