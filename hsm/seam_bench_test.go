//go:build linux

package hsm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"math"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// BenchmarkSeam measures what the PKCS11 interface costs: the PKCS#11 calls
// of one operation made on the concrete *miekgBinding and the same calls
// made through a value of type PKCS11, on one session with one cached key
// handle (a token key, as the plugin's), on every token implementation.
// The two are interleaved in one loop, in alternating order, so both see
// the same token state and garbage collector, and every call is timed by
// the thread's CPU clock, which other processes on the machine do not move.
//
// Reported: direct-ns/op and iface-ns/op, the wall-clock means;
// direct-cpu-p50-ns and iface-cpu-p50-ns, the CPU-time medians; and
// iface/direct, the seam's cost: over the pairs, the call through the
// interface divided by the call next to it on the concrete type, the
// median for each order and the geometric mean of the two (what coming
// second in a pair does to a call cancels out). ns/op is the pair's.
// `make bench` reports iface/direct against its target; no test checks a
// timing.
func BenchmarkSeam(b *testing.B) {
	for _, kind := range testKinds {
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
	defer c.DestroyObjects(ctx, id, anyLabel)
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
	defer c.DestroyObjects(ctx, id, anyLabel)
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
		// Timed by the thread's CPU clock (cgo calls run on the goroutine's
		// thread; neither token works on other threads), so other processes
		// on the machine do not count; the wall clock gives the means.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var direct, through [2][]time.Duration // [0] wall, [1] CPU
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			first, second := callDirect, callIface
			if i%2 == 1 {
				first, second = second, first
			}
			w0, c0 := time.Now(), threadCPU()
			if err := first(); err != nil {
				b.Fatalf("call: %v", err)
			}
			w1, c1 := time.Now(), threadCPU()
			if err := second(); err != nil {
				b.Fatalf("call: %v", err)
			}
			w2, c2 := time.Now(), threadCPU()
			firstOut, secondOut := &direct, &through
			if i%2 == 1 {
				firstOut, secondOut = secondOut, firstOut
			}
			firstOut[0], firstOut[1] = append(firstOut[0], w1.Sub(w0)), append(firstOut[1], c1-c0)
			secondOut[0], secondOut[1] = append(secondOut[0], w2.Sub(w1)), append(secondOut[1], c2-c1)
		}
		b.StopTimer()
		n := float64(len(direct[0]))
		b.ReportMetric(float64(sum(direct[0]).Nanoseconds())/n, "direct-ns/op")
		b.ReportMetric(float64(sum(through[0]).Nanoseconds())/n, "iface-ns/op")
		b.ReportMetric(float64(median(direct[1]).Nanoseconds()), "direct-cpu-p50-ns")
		b.ReportMetric(float64(median(through[1]).Nanoseconds()), "iface-cpu-p50-ns")
		// Pair i ran the direct call first when i is even. Whatever the
		// second call of a pair gains or loses by coming second is one
		// factor in the ratios of one order and its inverse in the other;
		// the geometric mean of the two orders' medians cancels it.
		var ratios [2][]float64
		for i := range direct[1] {
			if direct[1][i] > 0 {
				ratios[i%2] = append(ratios[i%2], float64(through[1][i])/float64(direct[1][i]))
			}
		}
		if len(ratios[0]) > 0 && len(ratios[1]) > 0 {
			b.ReportMetric(math.Sqrt(median(ratios[0])*median(ratios[1])), "iface/direct")
		}
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

// clockThreadCPUTime is Linux's CLOCK_THREAD_CPUTIME_ID.
const clockThreadCPUTime = 3

// threadCPU is the CPU time the calling thread has used.
func threadCPU() time.Duration {
	var ts syscall.Timespec
	if _, _, errno := syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTime, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		panic(fmt.Sprintf("clock_gettime(CLOCK_THREAD_CPUTIME_ID): %v", errno))
	}
	return time.Duration(ts.Nano())
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
