package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"
)

// MaxRandom is the most bytes one Random call returns.
const MaxRandom = 1 << 20

// randomChunk is the most bytes asked of C_GenerateRandom at once: NSS
// softokn refuses more than 64 KiB a call.
const randomChunk = 64 << 10

// Random draws n bytes from the token's RNG.
func (c *Client) Random(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > MaxRandom {
		return nil, inputErrorf("%d random bytes requested; 1 to %d allowed", n, MaxRandom)
	}
	var out []byte
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		drawn := make([]byte, 0, n)
		for len(drawn) < n {
			want := min(n-len(drawn), randomChunk)
			b, err := p11.GenerateRandom(sh, want)
			if err != nil {
				return call("C_GenerateRandom", err)
			}
			if len(b) != want {
				return fmt.Errorf("C_GenerateRandom returned %d bytes, asked for %d", len(b), want)
			}
			drawn = append(drawn, b...)
		}
		out = drawn
		return nil
	})
	return out, err
}
