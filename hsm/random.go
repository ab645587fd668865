package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"
)

// MaxRandom is the most bytes one Random call returns.
const MaxRandom = 1 << 20

// Random draws n bytes from the token's RNG.
func (c *Client) Random(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > MaxRandom {
		return nil, fmt.Errorf("%w: %d random bytes requested; 1 to %d allowed", ErrInvalidInput, n, MaxRandom)
	}
	var out []byte
	err := c.do(ctx, func(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		b, err := p11.GenerateRandom(sh, n)
		if err != nil {
			return call("C_GenerateRandom", err)
		}
		if len(b) != n {
			return fmt.Errorf("C_GenerateRandom returned %d bytes, asked for %d", len(b), n)
		}
		out = b
		return nil
	})
	return out, err
}
