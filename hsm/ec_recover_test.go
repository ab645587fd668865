package hsm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"math/big"
	"testing"
)

var recoverCurves = []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()}

// rawSign signs like CKM_ECDSA: fixed-width big-endian r||s.
func rawSign(t *testing.T, priv *ecdsa.PrivateKey, digest []byte) []byte {
	t.Helper()
	r, s, err := ecdsa.Sign(rand.Reader, priv, digest)
	if err != nil {
		t.Fatal(err)
	}
	size := (priv.Curve.Params().N.BitLen() + 7) / 8
	sig := make([]byte, 2*size)
	r.FillBytes(sig[:size])
	s.FillBytes(sig[size:])
	return sig
}

func newRecoverKey(t *testing.T, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// recoverBothWays checks recovery with each signature in the first position:
// the candidates come from the first signature, so only then does a digest's
// conversion to an integer matter for the recovery and not just for
// ecdsa.Verify.
func recoverBothWays(t *testing.T, priv *ecdsa.PrivateKey, d1, d2 []byte) {
	t.Helper()
	sig1, sig2 := rawSign(t, priv, d1), rawSign(t, priv, d2)
	for _, order := range [][4][]byte{{d1, sig1, d2, sig2}, {d2, sig2, d1, sig1}} {
		got, err := RecoverECDSAPublicKey(priv.Curve, order[0], order[1], order[2], order[3])
		if err != nil {
			t.Fatalf("%d-byte digest first: %v", len(order[0]), err)
		}
		if !got.Equal(&priv.PublicKey) {
			t.Fatalf("%d-byte digest first: recovered a different public key", len(order[0]))
		}
		if got.Curve != priv.Curve {
			t.Fatalf("Curve is %s, want %s", got.Curve.Params().Name, priv.Curve.Params().Name)
		}
	}
}

func sha256Of(s string) []byte { d := sha256.Sum256([]byte(s)); return d[:] }
func sha512Of(s string) []byte { d := sha512.Sum512([]byte(s)); return d[:] }

func TestRecoverECDSAPublicKeyOnEveryCurve(t *testing.T) {
	for _, curve := range recoverCurves {
		t.Run(curve.Params().Name, func(t *testing.T) {
			// Several keys per curve so that both parities of R and of Q show
			// up, not just whichever one a single key happened to give.
			for i := 0; i < 8; i++ {
				priv := newRecoverKey(t, curve)
				// SHA-512 is longer than P-256's and P-384's order and shorter
				// than P-521's, so both sides of the truncation rule run.
				recoverBothWays(t, priv, sha256Of("first probe message"), sha512Of("second probe message"))
			}
		})
	}
}

func TestRecoverECDSAPublicKeyShortAndOddLengthDigests(t *testing.T) {
	sha1Of := func(s string) []byte { d := sha1.Sum([]byte(s)); return d[:] }
	// 66 bytes is 528 bits against P-521's 521-bit order, so the digest has
	// to be shifted, not just cut at a byte boundary.
	long := make([]byte, 66)
	if _, err := rand.Read(long); err != nil {
		t.Fatal(err)
	}
	long[0] = 0xff // keep the top bits set so a missing shift changes e
	for _, curve := range recoverCurves {
		t.Run(curve.Params().Name, func(t *testing.T) {
			priv := newRecoverKey(t, curve)
			d1 := sha1Of("twenty bytes, please")
			if len(d1) != 20 {
				t.Fatalf("digest is %d bytes", len(d1))
			}
			recoverBothWays(t, priv, d1, long)
		})
	}
}

func TestRecoverECDSAPublicKeyRejectsSignatureFromAnotherKey(t *testing.T) {
	for _, curve := range recoverCurves {
		t.Run(curve.Params().Name, func(t *testing.T) {
			priv, other := newRecoverKey(t, curve), newRecoverKey(t, curve)
			d1, d2 := sha256Of("one"), sha256Of("two")
			if got, err := RecoverECDSAPublicKey(curve, d1, rawSign(t, priv, d1), d2, rawSign(t, other, d2)); err == nil {
				t.Fatalf("mixed keys recovered %v", got)
			}
			if got, err := RecoverECDSAPublicKey(curve, d1, rawSign(t, other, d1), d2, rawSign(t, priv, d2)); err == nil {
				t.Fatalf("mixed keys recovered %v", got)
			}
		})
	}
}

func TestRecoverECDSAPublicKeyRejectsTamperedSignature(t *testing.T) {
	for _, curve := range recoverCurves {
		t.Run(curve.Params().Name, func(t *testing.T) {
			priv := newRecoverKey(t, curve)
			d1, d2 := sha256Of("one"), sha512Of("two")
			sig1, sig2 := rawSign(t, priv, d1), rawSign(t, priv, d2)
			tampered := bytes.Clone(sig2)
			tampered[len(tampered)-1] ^= 0x01 // s is the second half
			if got, err := RecoverECDSAPublicKey(curve, d1, sig1, d2, tampered); err == nil {
				t.Fatalf("tampered s recovered %v", got)
			}
			tampered = bytes.Clone(sig1)
			tampered[len(tampered)-1] ^= 0x01
			if got, err := RecoverECDSAPublicKey(curve, d1, tampered, d2, sig2); err == nil {
				t.Fatalf("tampered s recovered %v", got)
			}
			// The wrong digest for an otherwise good signature must fail too.
			if got, err := RecoverECDSAPublicKey(curve, d2, sig1, d2, sig2); err == nil {
				t.Fatalf("wrong digest recovered %v", got)
			}
		})
	}
}

func TestRecoverECDSAPublicKeyRejectsMalformedSignatures(t *testing.T) {
	curve := elliptic.P256()
	priv := newRecoverKey(t, curve)
	d1, d2 := sha256Of("one"), sha256Of("two")
	sig1, sig2 := rawSign(t, priv, d1), rawSign(t, priv, d2)
	n := curve.Params().N

	zeroR := bytes.Clone(sig1)
	clear(zeroR[:32])
	bigS := bytes.Clone(sig1)
	n.FillBytes(bigS[32:])

	for name, sig := range map[string][]byte{
		"short":  sig1[:63],
		"long":   append(bytes.Clone(sig1), 0),
		"r zero": zeroR,
		"s = n":  bigS,
		"empty":  nil,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := RecoverECDSAPublicKey(curve, d1, sig, d2, sig2)
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("got %v, want ErrInvalidInput", err)
			}
		})
	}
	// A P-384 signature handed over as P-256 is the wrong length.
	other := newRecoverKey(t, elliptic.P384())
	if _, err := RecoverECDSAPublicKey(curve, d1, rawSign(t, other, d1), d2, sig2); !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("got %v, want ErrInvalidInput", err)
	}
	// P-224's p is 1 mod 4, so the square root used here would be wrong.
	if _, err := RecoverECDSAPublicKey(elliptic.P224(), d1, sig1, d2, sig2); !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("P-224: got %v, want ErrInvalidInput", err)
	}
}

// The recovery is only as good as the hand-written point arithmetic, so
// check it directly against the standard library: d·G must be the public key.
func TestRecoverPointArithmeticMatchesStdlib(t *testing.T) {
	for _, curve := range recoverCurves {
		t.Run(curve.Params().Name, func(t *testing.T) {
			c := newRecoveryCurve(curve)
			for i := 0; i < 4; i++ {
				priv := newRecoverKey(t, curve)
				dBytes, err := priv.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				want, err := priv.PublicKey.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				q := c.scalarMult(new(big.Int).SetBytes(dBytes), c.g)
				if !c.onCurve(q) {
					t.Fatal("d·G is not on the curve")
				}
				if got := c.marshal(q); !bytes.Equal(got, want) {
					t.Fatalf("d·G = %x, want %x", got, want)
				}
			}
			// n·G is the point at infinity and G + (−G) cancels.
			if q := c.scalarMult(c.n, c.g); q != nil {
				t.Fatalf("n·G = %v, want infinity", q)
			}
			negG := &ecPoint{x: c.g.x, y: new(big.Int).Sub(c.p, c.g.y)}
			if q := c.add(c.g, negG); q != nil {
				t.Fatalf("G + (−G) = %v, want infinity", q)
			}
			if q := c.add(c.g, c.g); !c.onCurve(q) || q.x.Cmp(c.double(c.g).x) != 0 {
				t.Fatal("G + G differs from 2G")
			}
		})
	}
}

func TestRecoverDigestTruncationFollowsSEC1(t *testing.T) {
	c := newRecoveryCurve(elliptic.P521())
	digest := bytes.Repeat([]byte{0xff}, 66)
	// 528 bits keep their leftmost 521: all ones.
	want := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 521), big.NewInt(1))
	if got := c.digestToInt(digest); got.Cmp(want) != 0 {
		t.Fatalf("P-521, 66×0xff: got %x, want %x", got, want)
	}
	short := []byte{0x01, 0x02}
	if got := c.digestToInt(short); got.Int64() != 0x0102 {
		t.Fatalf("short digest: got %x, want 102", got)
	}
	c = newRecoveryCurve(elliptic.P256())
	long := append(bytes.Repeat([]byte{0xab}, 32), 0xcd, 0xef)
	if got, want := c.digestToInt(long), new(big.Int).SetBytes(long[:32]); got.Cmp(want) != 0 {
		t.Fatalf("P-256, 34 bytes: got %x, want %x", got, want)
	}
}
