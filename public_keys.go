package hsmkms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

// transitKeyName is the `name` Transit gives each asymmetric version.
func transitKeyName(kt keyring.KeyType) string {
	if kt.Family == keyring.FamilyEC {
		return kt.Curve
	}
	return kt.Name // rsa-2048 ..., ed25519
}

// transitPublicKey is a version's public key as Transit shows it: PEM, or
// for Ed25519 the base64 of the raw 32-byte key.
func transitPublicKey(kt keyring.KeyType, der []byte) string {
	if kt.Family == keyring.FamilyEd25519 {
		return wire.Ed25519PublicKey(der)
	}
	return wire.PublicKeyPEM(der)
}

// parsedPublicKey returns the version's public key, parsing each DER once.
func (b *backend) parsedPublicKey(kv *keyring.Version) (crypto.PublicKey, error) {
	if len(kv.PublicKey) == 0 {
		return nil, fmt.Errorf("version has no public key")
	}
	if pub, ok := b.publicKeys.Load(string(kv.PublicKey)); ok {
		return pub, nil
	}
	pub, err := x509.ParsePKIXPublicKey(kv.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("stored public key: %w", err)
	}
	switch pub.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("stored public key is a %T", pub)
	}
	b.publicKeys.Store(string(kv.PublicKey), pub)
	return pub, nil
}

// verifiedPublicKey is a version's public key for verification in the
// plugin, as Transit verifies: no HSM call per request. The stored key is
// checked once per process against the key pair's public object on the
// token, so a stored key that does not belong to the object is never used
// to call a signature valid. Versions with no object of their own (public
// only, wrapped) and imported or adopted keys with no public object (their
// public key was checked against the private key where it entered) are not
// compared.
func (b *backend) verifiedPublicKey(ctx context.Context, client *hsm.Client, k *keyring.Entry, version int, kv *keyring.Version) (crypto.PublicKey, error) {
	pub, err := b.parsedPublicKey(kv)
	if err != nil || kv.PublicOnly() || kv.Wrapped() {
		return pub, err
	}
	checked := string(kv.ObjectID) + string(kv.PublicKey)
	if _, ok := b.checkedPublicKeys.Load(checked); ok {
		return pub, nil
	}
	onToken, err := client.PublicKey(ctx, kv.ObjectID)
	switch {
	case errors.Is(err, hsm.ErrKeyNotFound) && kv.OriginName() != keyring.OriginGenerated:
		// An imported or adopted private key has no public object: its
		// public key came with it, or was recovered from its signatures.
	case err != nil:
		return nil, err
	case !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(onToken):
		return nil, fmt.Errorf("the stored public key of version %d of key %q is not the one of its object on the token; verification refused", version, k.Name)
	}
	b.checkedPublicKeys.Store(checked, true)
	return pub, nil
}

// exportPublicKeys is Transit's export map: version -> PEM. A version the
// key does not have is the caller's mistake.
func exportPublicKeys(k *keyring.Entry, version string) (map[string]string, error) {
	out := map[string]string{}
	if version == "" {
		for v, kv := range k.Versions {
			if v >= k.MinDecryptionVersion {
				out[fmt.Sprint(v)] = transitPublicKey(k.KeyType(), kv.PublicKey)
			}
		}
		return out, nil
	}
	v := k.LatestVersion
	if version != "latest" {
		n, err := strconv.Atoi(strings.TrimPrefix(version, "v"))
		if err != nil || n < 1 {
			return nil, keyring.Userf("version %q is not a positive number, v<number> or 'latest'", version)
		}
		v = n
	}
	kv, err := k.DecryptionVersion(v, "the request")
	if err != nil {
		return nil, err
	}
	out[fmt.Sprint(v)] = transitPublicKey(k.KeyType(), kv.PublicKey)
	return out, nil
}
