package hsm

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// Ed25519 where the token has it (SoftHSM 2.6), a clear refusal where it
// has not (NSS softokn).
func TestEd25519(t *testing.T) {
	eachToken(t, func(t *testing.T, tok, _ *tokentest.Token) {
		ctx := context.Background()
		c := openClient(t, tok, 1)
		id := newID(t, c)
		t.Cleanup(func() { _ = c.DestroyObjects(ctx, id, anyLabel) })
		pub, err := c.GenerateEd25519KeyPair(ctx, id, "hsmkms-test/ed25519", Usage{Sign: true, Verify: true})
		if tok.Implementation() == tokentest.NSS {
			if !errors.Is(err, ErrNoEd25519) {
				t.Fatalf("NSS: %v, want ErrNoEd25519", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		sig, err := c.SignEd25519(ctx, id, pub, []byte("message"))
		if err != nil || !ed25519.Verify(pub, []byte("message"), sig) {
			t.Fatalf("sign: %v", err)
		}
	})
}
