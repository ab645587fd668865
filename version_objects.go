package hsmkms

import (
	"context"
	"errors"
	"fmt"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// destroyVersion destroys what a key version owns on the token: its HMAC
// companion and, unless the version only borrows it (adopted without
// destroy_on_delete, public-only) or keeps it wrapped in storage (then
// only the cached copy goes), its object. Only objects carrying the labels
// the version recorded are destroyed: an object with the same CKA_ID and
// another label is not the version's, stays on the token, and is named in
// the warnings.
func destroyVersion(ctx context.Context, client *hsm.Client, version int, kv *keyVersion) ([]string, error) {
	var warnings []string
	destroy := func(id []byte, label string) error {
		err := client.DestroyObjects(ctx, id, hsm.ExactLabel(label))
		if errors.Is(err, hsm.ErrNotOwned) {
			warnings = append(warnings, fmt.Sprintf("version %d: %v", version, err))
			return nil
		}
		return err
	}
	if kv.HMACObjectID != nil {
		if err := destroy(kv.HMACObjectID, kv.Label+"/hmac"); err != nil {
			return warnings, fmt.Errorf("destroying the HMAC key of version %d: %w", version, err)
		}
	}
	switch {
	case kv.wrapped():
		client.ForgetUnwrapped(kv.ObjectID)
	case kv.ownsObject():
		if err := destroy(kv.ObjectID, kv.Label); err != nil {
			return warnings, fmt.Errorf("destroying version %d: %w", version, err)
		}
	}
	return warnings, nil
}
