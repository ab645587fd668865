package hsm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"slices"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// BenchmarkSeam measures what the PKCS11 interface costs: the PKCS#11 calls
// of one operation made on the concrete *miekgBinding and the same calls
// made through a value of type PKCS11, on one session with one cached key
// handle, on every token implementation. The two are interleaved in one
// loop, in alternating order, so both see the same machine, token state and
// garbage collector. Each call is timed: direct-ns/op and iface-ns/op are
// the means, direct-p50-ns and iface-p50-ns the medians, and iface/direct,
// the seam's cost, is the median over the pairs of one call through the
// interface divided by the call next to it on the concrete type (pairs
// cancel drift in the machine's load; the median ignores the few calls
// another process delayed, which move the means by more than the seam
// costs). ns/op is the pair's. `make bench` reports the ratio against its target;
// no test checks a timing.
func BenchmarkSeam(b *testing.B) {
	for _, kind := range tokentest.Kinds {
		b.Run(string(kind), func(b *testing.B) {
			tok := testTokens[kind][0]
			c, err := Open(context.Background(), tokenConfig(tok, 1))
			if err != nil {
				b.Fatalf("Open(%s): %v", tok.Label, err)
			}
			defer c.Close()
			b.Run("EncryptAESGCM64", func(b *testing.B) { benchSeamAES(b, c) })
			b.Run("SignRSA2048PKCS1", func(b *testing.B) { benchSeamRSA(b, c) })
		})
	}
}

// seamOp is one operation, made through p on session sh with key.
type seamOp struct {
	direct func(p *miekgBinding, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error
	iface  func(p PKCS11, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error
}

func benchSeamAES(b *testing.B, c *Client) {
	ctx := context.Background()
	id, err := c.NewObjectID(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.GenerateAESKey(ctx, id, "seam-bench", 256, Usage{Encrypt: true, Decrypt: true}); err != nil {
		b.Fatal(err)
	}
	defer c.DestroyObjects(ctx, id)
	runSeam(b, c, id, pkcs11.CKO_SECRET_KEY, seamOp{direct: seamAESDirect, iface: seamAESInterface})
}

func benchSeamRSA(b *testing.B, c *Client) {
	ctx := context.Background()
	id, err := c.NewObjectID(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.GenerateRSAKeyPair(ctx, id, "seam-bench", 2048, Usage{Sign: true, Verify: true}); err != nil {
		b.Fatal(err)
	}
	defer c.DestroyObjects(ctx, id)
	runSeam(b, c, id, pkcs11.CKO_PRIVATE_KEY, seamOp{direct: seamRSADirect, iface: seamRSAInterface})
}

// runSeam holds one of c's sessions for the whole benchmark and runs op on
// the module's binding both ways, b.N times each.
func runSeam(b *testing.B, c *Client, id []byte, class uint, op seamOp) {
	err := c.do(context.Background(), func(_ PKCS11, sh pkcs11.SessionHandle) error {
		binding := c.mod.binding
		var iface PKCS11 = binding
		key, err := c.findObject(iface, sh, id, class)
		if err != nil {
			return err
		}
		callDirect := func() error { return op.direct(binding, sh, key) }
		callIface := func() error { return op.iface(iface, sh, key) }
		// Once each before timing: the first use of a key may load it.
		if err := callDirect(); err != nil {
			b.Fatalf("direct: %v", err)
		}
		if err := callIface(); err != nil {
			b.Fatalf("interface: %v", err)
		}
		var direct, through []time.Duration
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			first, second := callDirect, callIface
			if i%2 == 1 {
				first, second = second, first
			}
			t0 := time.Now()
			if err := first(); err != nil {
				b.Fatalf("call: %v", err)
			}
			t1 := time.Now()
			if err := second(); err != nil {
				b.Fatalf("call: %v", err)
			}
			t2 := time.Now()
			if i%2 == 0 {
				direct, through = append(direct, t1.Sub(t0)), append(through, t2.Sub(t1))
			} else {
				through, direct = append(through, t1.Sub(t0)), append(direct, t2.Sub(t1))
			}
		}
		b.StopTimer()
		n := float64(len(direct))
		b.ReportMetric(float64(sum(direct).Nanoseconds())/n, "direct-ns/op")
		b.ReportMetric(float64(sum(through).Nanoseconds())/n, "iface-ns/op")
		ratios := make([]float64, 0, len(direct))
		for i := range direct {
			if direct[i] > 0 {
				ratios = append(ratios, float64(through[i])/float64(direct[i]))
			}
		}
		b.ReportMetric(float64(median(direct).Nanoseconds()), "direct-p50-ns")
		b.ReportMetric(float64(median(through).Nanoseconds()), "iface-p50-ns")
		b.ReportMetric(median(ratios), "iface/direct")
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// The two versions of each operation are the same code; only the type of
// p differs. They are not inlined, so the interface call cannot be
// devirtualised by the compiler: it is a dynamic call, as in the plugin.

//go:noinline
func seamAESDirect(p *miekgBinding, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
	iv := make([]byte, GCMIVLen)
	if _, err := rand.Read(iv); err != nil {
		return err
	}
	params := pkcs11.NewGCMParams(iv, seamAAD, GCMTagLen*8)
	defer params.Free()
	if err := p.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
		return err
	}
	_, err := p.EncryptOnce(sh, seamPlaintext, len(seamPlaintext)+GCMTagLen+GCMIVLen)
	return err
}

//go:noinline
func seamAESInterface(p PKCS11, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
	iv := make([]byte, GCMIVLen)
	if _, err := rand.Read(iv); err != nil {
		return err
	}
	params := pkcs11.NewGCMParams(iv, seamAAD, GCMTagLen*8)
	defer params.Free()
	if err := p.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
		return err
	}
	_, err := p.EncryptOnce(sh, seamPlaintext, len(seamPlaintext)+GCMTagLen+GCMIVLen)
	return err
}

//go:noinline
func seamRSADirect(p *miekgBinding, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
	if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, key); err != nil {
		return err
	}
	_, err := p.Sign(sh, seamDigestInfo)
	return err
}

//go:noinline
func seamRSAInterface(p PKCS11, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
	if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, key); err != nil {
		return err
	}
	_, err := p.Sign(sh, seamDigestInfo)
	return err
}

func sum(ds []time.Duration) (total time.Duration) {
	for _, d := range ds {
		total += d
	}
	return total
}

// median returns the middle of vs without reordering vs; 0 for none.
func median[T time.Duration | float64](vs []T) T {
	if len(vs) == 0 {
		var zero T
		return zero
	}
	sorted := slices.Clone(vs)
	slices.Sort(sorted)
	if len(sorted)%2 == 0 {
		return (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	return sorted[len(sorted)/2]
}

var (
	seamPlaintext  = make([]byte, 64)
	seamAAD        = []byte("hsmkms seam bench")
	seamDigestInfo = func() []byte {
		digest := sha256.Sum256([]byte("hsmkms seam bench"))
		prefix := []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}
		return append(prefix, digest[:]...)
	}()
)
