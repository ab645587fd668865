package hsmkms

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

const (
	paddingOAEP     = "oaep"
	paddingPKCS1v15 = "pkcs1v15"
)

func paddingOf(item cryptoItem) (string, error) {
	switch p := strings.ToLower(item.PaddingScheme); p {
	case "", paddingOAEP:
		return paddingOAEP, nil
	case paddingPKCS1v15:
		return p, nil
	}
	return "", keyring.Userf("padding_scheme %q is not one of: oaep, pkcs1v15", item.PaddingScheme)
}

func noContextForRSA(item cryptoItem) error {
	if item.Context != "" || item.AssociatedData != "" || len(item.EncryptionContext) > 0 {
		return keyring.Userf("RSA encryption binds no context: drop context, associated_data and encryption_context, or use an AES key")
	}
	return nil
}

// rsaPlaintextLimit is the longest message the padding allows for pub.
func rsaPlaintextLimit(pub *rsa.PublicKey, padding string) int {
	k := (pub.N.BitLen() + 7) / 8
	if padding == paddingOAEP {
		return k - 2*sha256.Size - 2
	}
	return k - 11
}

// encryptRSA encrypts with the public key, in the plugin: the private half
// is what the HSM protects.
func (b *backend) encryptRSA(k *keyring.Entry, item cryptoItem) (string, int, error) {
	padding, err := paddingOf(item)
	if err != nil {
		return "", 0, err
	}
	if err := noContextForRSA(item); err != nil {
		return "", 0, err
	}
	plaintext, err := base64.StdEncoding.DecodeString(item.Plaintext)
	if err != nil {
		return "", 0, keyring.Userf("plaintext is not valid base64")
	}
	if !item.plaintextGiven {
		return "", 0, keyring.Userf("missing plaintext to encrypt")
	}
	version, kv, err := k.EncryptionVersion(item.KeyVersion)
	if err != nil {
		return "", 0, err
	}
	pubKey, err := b.parsedPublicKey(kv)
	if err != nil {
		return "", 0, err
	}
	pub := pubKey.(*rsa.PublicKey)
	if limit := rsaPlaintextLimit(pub, padding); len(plaintext) > limit {
		return "", 0, keyring.Userf("plaintext is %d bytes; %s with %s takes at most %d: encrypt a data key instead", len(plaintext), k.Type, padding, limit)
	}
	var ct []byte
	if padding == paddingOAEP {
		ct, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, plaintext, nil)
	} else {
		ct, err = rsa.EncryptPKCS1v15(rand.Reader, pub, plaintext)
	}
	if err != nil {
		return "", 0, fmt.Errorf("RSA encryption: %w", err)
	}
	return wire.Format(version, ct), version, nil
}

// decryptRSA decrypts in the HSM with the version's private key.
func (b *backend) decryptRSA(ctx context.Context, client *hsm.Client, kv *keyring.Version, item cryptoItem, blob []byte) ([]byte, error) {
	padding, err := paddingOf(item)
	if err != nil {
		return nil, err
	}
	if err := noContextForRSA(item); err != nil {
		return nil, err
	}
	if kv.PublicOnly() {
		return nil, keyring.Userf("this key version was imported as a public key only; it cannot decrypt")
	}
	pubKey, err := b.parsedPublicKey(kv)
	if err != nil {
		return nil, err
	}
	pub := pubKey.(*rsa.PublicKey)
	if padding == paddingOAEP {
		return client.DecryptRSAOAEP(ctx, kv.ObjectID, pub, blob)
	}
	return client.DecryptRSAPKCS1v15(ctx, kv.ObjectID, pub, blob)
}
