package keyring

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"slices"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// Bounds of what a restore accepts.
const (
	maxRestoredVersions = 100000
)

// Restore stores a key RestoredEntry rebuilt, with the usage its backup
// carried, and indexes it for deletion when it came back pending. Callers
// hold the lock.
func (r *Keyring) Restore(ctx context.Context, s logical.Storage, k *Entry, usage *Usage) error {
	if k.State == StatePendingDeletion {
		if err := s.Put(ctx, &logical.StorageEntry{Key: DeletionIndexPrefix + k.Name}); err != nil {
			return fmt.Errorf("indexing key %q for deletion: %w", k.Name, err)
		}
	}
	if err := r.Save(ctx, s, k); err != nil {
		return err
	}
	if usage == nil {
		usage = &Usage{}
	}
	return r.SetUsage(ctx, s, k.Name, usage)
}

// RestoredEntry rebuilds a key entry from a backup's, field by field: only
// what a wrapped key may hold is taken, checked for consistency, and the
// HSM object ids the backup names are never used (each version gets a new
// CKA_ID for its unwrapped copy). It returns what is wrong as a UserError.
func RestoredEntry(name string, in *Entry) (*Entry, error) {
	kt, ok := types[in.Type]
	switch {
	case !ok:
		return nil, Userf("type %q is not a key type of this plugin", in.Type)
	case in.Residency != ResidencyWrapped:
		return nil, Userf("residency %q: only wrapped keys are backed up", in.Residency)
	case !kt.Wrappable():
		return nil, Userf("type %s cannot be a wrapped key", kt.Name)
	case !slices.Contains(States, in.State):
		return nil, Userf("state %q is not one of %v", in.State, States)
	case (in.State == StatePendingDeletion) != !in.DeletionDate.IsZero():
		return nil, Userf("a deletion_date goes with state pending_deletion, and only with it")
	case CheckDescription(in.Description) != nil:
		return nil, CheckDescription(in.Description)
	case CheckTags(in.Tags) != nil:
		return nil, CheckTags(in.Tags)
	case in.AutoRotatePeriod < 0 || (in.AutoRotatePeriod != 0 && in.AutoRotatePeriod < MinAutoRotatePeriod):
		return nil, Userf("auto_rotate_period must be 0 or at least %s", MinAutoRotatePeriod)
	}
	if kt.Family == FamilyHMAC {
		if in.Bits < 256 || in.Bits > 4096 || in.Bits%8 != 0 {
			return nil, Userf("an HMAC key of %d bits; 256 to 4096, a multiple of 8", in.Bits)
		}
		kt.Bits = in.Bits
	} else if in.Bits != 0 {
		return nil, Userf("bits is set on a %s key", kt.Name)
	}
	ops, err := NormaliseOperations(in.Operations, kt)
	switch {
	case err != nil:
		return nil, Userf("operations: %v", err)
	case len(ops) == 0:
		return nil, Userf("operations: none given")
	}
	latest, minAvail := in.LatestVersion, max(in.MinAvailableVersion, 1)
	switch {
	case latest < 1 || latest > maxRestoredVersions:
		return nil, Userf("latest_version %d is not between 1 and %d", latest, maxRestoredVersions)
	case in.MinAvailableVersion < 0 || minAvail > latest:
		return nil, Userf("min_available_version %d is not between 0 and latest_version %d", in.MinAvailableVersion, latest)
	case in.MinDecryptionVersion < minAvail || in.MinDecryptionVersion > latest:
		return nil, Userf("min_decryption_version %d is not between %d and latest_version %d", in.MinDecryptionVersion, minAvail, latest)
	case in.MinEncryptionVersion < 0 || in.MinEncryptionVersion > latest:
		return nil, Userf("min_encryption_version %d is not between 0 and latest_version %d", in.MinEncryptionVersion, latest)
	case len(in.Versions) != latest-minAvail+1:
		return nil, Userf("it holds %d versions; versions %d to %d expected", len(in.Versions), minAvail, latest)
	}
	out := &Entry{
		Name: name, Type: kt.Name, Bits: in.Bits, Operations: ops, State: in.State, Description: in.Description,
		Residency: ResidencyWrapped, DeletionAllowed: in.DeletionAllowed, AutoRotatePeriod: in.AutoRotatePeriod,
		LatestVersion: latest, MinDecryptionVersion: in.MinDecryptionVersion, MinEncryptionVersion: in.MinEncryptionVersion,
		MinAvailableVersion: in.MinAvailableVersion, Imported: in.Imported, AllowRotation: in.AllowRotation,
		DeletionDate: in.DeletionDate, Tags: in.Tags,
		Versions: make(map[int]*Version, len(in.Versions)),
	}
	for v := minAvail; v <= latest; v++ {
		kv := in.Versions[v]
		if kv == nil {
			return nil, Userf("version %d is missing", v)
		}
		if len(kv.Blob) == 0 || len(kv.Blob) > hsm.MaxWrappedBytes {
			return nil, Userf("version %d: a blob of %d bytes; 1 to %d expected", v, len(kv.Blob), hsm.MaxWrappedBytes)
		}
		if err := checkRestoredPublicKey(kt, v, kv.PublicKey); err != nil {
			return nil, err
		}
		origin := kv.Origin
		if origin != "" && origin != OriginImported {
			return nil, Userf("version %d: origin %q cannot be a wrapped key's", v, origin)
		}
		out.Versions[v] = &Version{
			CreationTime: kv.CreationTime, PublicKey: kv.PublicKey, Origin: origin,
			TransitLayout: kv.TransitLayout && kt.Family == FamilyAES, Blob: kv.Blob, KEKVersion: kv.KEKVersion,
		}
	}
	return out, nil
}

// checkRestoredPublicKey refuses a backed-up version v whose public key
// is wrong: an asymmetric key's must be of its type, a secret key has
// none. The HSM then checks that the blob's private key matches it.
func checkRestoredPublicKey(kt KeyType, v int, der []byte) error {
	if !kt.Asymmetric() {
		if len(der) != 0 {
			return Userf("version %d: a secret key with a public key", v)
		}
		return nil
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return Userf("version %d: its public key does not parse", v)
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if kt.Family == FamilyRSA && p.N.BitLen() == kt.Bits {
			return nil
		}
	case *ecdsa.PublicKey:
		if kt.Family == FamilyEC && p.Curve.Params().Name == kt.Curve {
			return nil
		}
	}
	return Userf("version %d: its public key is not a %s key", v, kt.Name)
}
