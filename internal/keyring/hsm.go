package keyring

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// HSM is what the key model asks of the token: making, wrapping and
// destroying key objects. *hsm.Client has it; tests of the model may give
// a smaller fake, as the backend-level seam STYLE.md asks for.
type HSM interface {
	NewObjectID(ctx context.Context) ([]byte, error)
	DestroyObjects(ctx context.Context, id []byte, owned func(label string) bool) error
	ListObjects(ctx context.Context, labelPrefix string) ([]hsm.ObjectInfo, error)
	PutMarker(ctx context.Context, label, replaces string) error

	GenerateAESKey(ctx context.Context, id []byte, label string, bits int, use hsm.Usage) error
	GenerateHMACKey(ctx context.Context, id []byte, label string, bits int, use hsm.Usage) error
	GenerateRSAKeyPair(ctx context.Context, id []byte, label string, bits int, use hsm.Usage) (*rsa.PublicKey, error)
	GenerateECKeyPair(ctx context.Context, id []byte, label, curve string, use hsm.Usage) (*ecdsa.PublicKey, error)
	GenerateEd25519KeyPair(ctx context.Context, id []byte, label string, use hsm.Usage) (ed25519.PublicKey, error)

	GenerateKEK(ctx context.Context, id []byte, label string) error
	FindKEK(ctx context.Context, label string) ([]byte, error)
	CheckKEK(ctx context.Context, id []byte) (string, error)
	GenerateWrapped(ctx context.Context, kek []byte, spec hsm.ImportSpec) ([]byte, crypto.PublicKey, error)
	Rewrap(ctx context.Context, from, to, blob []byte, spec hsm.ImportSpec) ([]byte, error)
	RewrapChecked(ctx context.Context, from, to, blob []byte, spec hsm.ImportSpec) ([]byte, error)
	PinWrapped(ctx context.Context, wk hsm.WrappedKey) (func(), error)
	ForgetUnwrapped(id []byte)

	GenerateWrappingKey(ctx context.Context, id []byte, label string) (*rsa.PublicKey, error)
	ImportWrapped(ctx context.Context, wk hsm.WrappingKey, ciphertext []byte, hash crypto.Hash, spec hsm.ImportSpec) (hsm.Imported, error)
	ImportMaterial(ctx context.Context, material []byte, spec hsm.ImportSpec) (hsm.Imported, error)
}

var _ HSM = (*hsm.Client)(nil)
