package hsm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"math/big"
)

// A token that unwraps a PKCS#8 EC private key does not hand back the public
// point, and asking it for one is not portable. The key can still sign, and an
// ECDSA signature pins its public key down to a handful of candidates, so two
// signatures over different digests leave exactly one. The arithmetic below is
// deliberately plain affine math/big: it runs once per imported key, works on
// public values only, and crypto/elliptic's own point methods are deprecated.

// RecoverECDSAPublicKey returns the public key that made both signatures
// (raw r||s, as CKM_ECDSA gives them) over the two digests, or an error when
// no single candidate verifies both.
func RecoverECDSAPublicKey(curve elliptic.Curve, digest1, sig1, digest2, sig2 []byte) (*ecdsa.PublicKey, error) {
	if curve == nil {
		return nil, inputErrorf("no curve")
	}
	c := newRecoveryCurve(curve)
	// The square root below is only valid for p ≡ 3 (mod 4), and raw r||s
	// shares its width with field elements only when n and p are the same
	// byte length. Both hold for P-256, P-384 and P-521; refusing anything
	// else keeps a wrong root or a misread signature from ever being tried.
	if c.p.Bit(0) != 1 || c.p.Bit(1) != 1 || (c.n.BitLen()+7)/8 != c.size {
		return nil, inputErrorf("curve %s is not supported for public key recovery", curve.Params().Name)
	}
	r1, s1, err := c.splitSignature(sig1)
	if err != nil {
		return nil, fmt.Errorf("first signature: %w", err)
	}
	r2, s2, err := c.splitSignature(sig2)
	if err != nil {
		return nil, fmt.Errorf("second signature: %w", err)
	}

	var found *ecdsa.PublicKey
	for _, q := range c.candidates(digest1, r1, s1) {
		if !c.onCurve(q) {
			// Every candidate should pass; checking here, before encoding,
			// also keeps an out-of-range coordinate away from FillBytes.
			continue
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, c.marshal(q))
		if err != nil {
			// The standard library's own validation is the last word on what
			// a usable key is; a candidate it refuses is not one to report.
			continue
		}
		if !ecdsa.Verify(pub, digest1, r1, s1) || !ecdsa.Verify(pub, digest2, r2, s2) {
			continue
		}
		if found != nil && !found.Equal(pub) {
			// Two keys that both verify would only happen if the digests or
			// signatures did not really differ; guessing would import a key
			// that might not match the private half in the HSM.
			return nil, errors.New("ECDSA public key recovery is ambiguous: more than one key verifies both signatures")
		}
		found = pub
	}
	if found == nil {
		return nil, errors.New("ECDSA public key recovery failed: no candidate key verifies both signatures")
	}
	return found, nil
}

// recoveryCurve is y² = x³ − 3x + b over GF(p) with base point g of order n,
// the shape shared by the NIST P curves.
type recoveryCurve struct {
	p, n, b *big.Int
	g       *ecPoint
	// size is the byte length of a field element, and (checked before use)
	// of a scalar: raw r||s and uncompressed points both use it.
	size int
}

// ecPoint is an affine point; a nil *ecPoint is the point at infinity.
type ecPoint struct {
	x, y *big.Int
}

func newRecoveryCurve(curve elliptic.Curve) *recoveryCurve {
	params := curve.Params()
	return &recoveryCurve{
		p:    params.P,
		n:    params.N,
		b:    params.B,
		g:    &ecPoint{x: params.Gx, y: params.Gy},
		size: (params.P.BitLen() + 7) / 8,
	}
}

// splitSignature parses the fixed-width r||s of CKM_ECDSA and rejects values
// outside [1, n−1], which no honest signer produces and which would make r⁻¹
// undefined.
func (c *recoveryCurve) splitSignature(sig []byte) (r, s *big.Int, err error) {
	if len(sig) != 2*c.size {
		return nil, nil, inputErrorf("signature is %d bytes, want %d", len(sig), 2*c.size)
	}
	r = new(big.Int).SetBytes(sig[:c.size])
	s = new(big.Int).SetBytes(sig[c.size:])
	if r.Sign() == 0 || r.Cmp(c.n) >= 0 || s.Sign() == 0 || s.Cmp(c.n) >= 0 {
		return nil, nil, inputErrorf("signature r or s is out of range")
	}
	return r, s, nil
}

// digestToInt follows SEC 1 4.1.3 step 5 (and crypto/ecdsa): only the
// leftmost bitlen(n) bits of the digest count, so a SHA-512 digest signed
// with P-256 recovers the same key the token used.
func (c *recoveryCurve) digestToInt(digest []byte) *big.Int {
	orderBits := c.n.BitLen()
	orderBytes := (orderBits + 7) / 8
	if len(digest) > orderBytes {
		digest = digest[:orderBytes]
	}
	e := new(big.Int).SetBytes(digest)
	if excess := len(digest)*8 - orderBits; excess > 0 {
		e.Rsh(e, uint(excess))
	}
	return e
}

// candidates returns every public key Q for which (r, s) could be a valid
// signature over digest: R is a point whose x reduces to r mod n, and
// Q = r⁻¹(s·R − e·G).
func (c *recoveryCurve) candidates(digest []byte, r, s *big.Int) []*ecPoint {
	e := c.digestToInt(digest)
	rInv := new(big.Int).ModInverse(r, c.n)
	// Q = u1·G + u2·R with u1 = −e·r⁻¹ and u2 = s·r⁻¹ (mod n).
	u1 := new(big.Int).Neg(e)
	u1.Mul(u1, rInv)
	u1.Mod(u1, c.n)
	u2 := new(big.Int).Mul(s, rInv)
	u2.Mod(u2, c.n)
	u1G := c.scalarMult(u1, c.g)

	var out []*ecPoint
	// x = r + j·n for j ≥ 2 always exceeds p on these curves (n > p/2), and
	// x = r + n only fits below p when r < p − n.
	for j := int64(0); j < 2; j++ {
		x := new(big.Int).Mul(big.NewInt(j), c.n)
		x.Add(x, r)
		if x.Cmp(c.p) >= 0 {
			continue
		}
		y, ok := c.liftX(x)
		if !ok {
			continue
		}
		negY := new(big.Int).Sub(c.p, y)
		negY.Mod(negY, c.p)
		ys := []*big.Int{y}
		if negY.Cmp(y) != 0 {
			ys = append(ys, negY)
		}
		for _, yy := range ys {
			q := c.add(u1G, c.scalarMult(u2, &ecPoint{x: x, y: yy}))
			if q != nil {
				out = append(out, q)
			}
		}
	}
	return out
}

// liftX returns a y with (x, y) on the curve, or false when x³ − 3x + b is
// not a square (then no point has that x). Because p ≡ 3 (mod 4), a square
// root is rhs^((p+1)/4); the final check catches non-squares, for which that
// power is not a root.
func (c *recoveryCurve) liftX(x *big.Int) (*big.Int, bool) {
	rhs := c.rhs(x)
	exp := new(big.Int).Add(c.p, big.NewInt(1))
	exp.Rsh(exp, 2)
	y := new(big.Int).Exp(rhs, exp, c.p)
	if new(big.Int).Exp(y, big.NewInt(2), c.p).Cmp(rhs) != 0 {
		return nil, false
	}
	return y, true
}

// rhs is x³ − 3x + b mod p.
func (c *recoveryCurve) rhs(x *big.Int) *big.Int {
	x3 := new(big.Int).Exp(x, big.NewInt(3), c.p)
	threeX := new(big.Int).Lsh(x, 1)
	threeX.Add(threeX, x)
	x3.Sub(x3, threeX)
	x3.Add(x3, c.b)
	return x3.Mod(x3, c.p)
}

func (c *recoveryCurve) onCurve(pt *ecPoint) bool {
	if pt == nil {
		return false
	}
	if pt.x.Sign() < 0 || pt.x.Cmp(c.p) >= 0 || pt.y.Sign() < 0 || pt.y.Cmp(c.p) >= 0 {
		return false
	}
	y2 := new(big.Int).Exp(pt.y, big.NewInt(2), c.p)
	return y2.Cmp(c.rhs(pt.x)) == 0
}

func (c *recoveryCurve) add(a, b *ecPoint) *ecPoint {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	if a.x.Cmp(b.x) == 0 {
		sum := new(big.Int).Add(a.y, b.y)
		if sum.Mod(sum, c.p).Sign() == 0 {
			return nil // b = −a
		}
		return c.double(a)
	}
	// λ = (y2 − y1) / (x2 − x1)
	num := new(big.Int).Sub(b.y, a.y)
	den := new(big.Int).Sub(b.x, a.x)
	den.Mod(den, c.p)
	return c.finish(a, b.x, num.Mul(num, den.ModInverse(den, c.p)))
}

func (c *recoveryCurve) double(a *ecPoint) *ecPoint {
	if a == nil || a.y.Sign() == 0 {
		return nil
	}
	// λ = (3x² + a) / 2y with the curve's a = −3.
	num := new(big.Int).Mul(a.x, a.x)
	num.Mul(num, big.NewInt(3))
	num.Sub(num, big.NewInt(3))
	den := new(big.Int).Lsh(a.y, 1)
	den.Mod(den, c.p)
	return c.finish(a, a.x, num.Mul(num, den.ModInverse(den, c.p)))
}

// finish completes a chord or tangent step: given λ, the first point a and
// the other point's x, it returns (λ² − x1 − x2, λ(x1 − x3) − y1).
func (c *recoveryCurve) finish(a *ecPoint, x2, lambda *big.Int) *ecPoint {
	lambda.Mod(lambda, c.p)
	x3 := new(big.Int).Mul(lambda, lambda)
	x3.Sub(x3, a.x)
	x3.Sub(x3, x2)
	x3.Mod(x3, c.p)
	y3 := new(big.Int).Sub(a.x, x3)
	y3.Mul(y3, lambda)
	y3.Sub(y3, a.y)
	y3.Mod(y3, c.p)
	return &ecPoint{x: x3, y: y3}
}

// scalarMult is left-to-right double-and-add. It is not constant time, which
// is fine: every scalar and point here is derived from public data.
func (c *recoveryCurve) scalarMult(k *big.Int, pt *ecPoint) *ecPoint {
	var acc *ecPoint
	for i := k.BitLen() - 1; i >= 0; i-- {
		acc = c.double(acc)
		if k.Bit(i) == 1 {
			acc = c.add(acc, pt)
		}
	}
	return acc
}

// marshal encodes a finite point in SEC 1 uncompressed form, the input
// ecdsa.ParseUncompressedPublicKey validates.
func (c *recoveryCurve) marshal(pt *ecPoint) []byte {
	out := make([]byte, 1+2*c.size)
	out[0] = 4
	pt.x.FillBytes(out[1 : 1+c.size])
	pt.y.FillBytes(out[1+c.size:])
	return out
}
