package hsm

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// testTokens are two tokens of each implementation, and of SoftHSM2
// through p11-kit's proxy; every test that needs a token runs once on each
// (see eachToken).
var testTokens map[tokentest.Kind][]*tokentest.Token

// testKinds are the kinds of testTokens. The proxy is among them because it
// changes what a binding may assume: it hands out a new function list on
// every C_GetFunctionList.
var testKinds = tokentest.KindsWithP11Kit

func TestMain(m *testing.M) {
	os.Exit(tokentest.RunWithTokenKinds(m, testKinds, func(t map[tokentest.Kind][]*tokentest.Token) { testTokens = t },
		tokentest.Spec{Label: "hsm-a", PIN: "1234"}, tokentest.Spec{Label: "hsm-b", PIN: "5678"}))
}

// eachToken runs f as a subtest on every token kind, named after it, with
// that kind's two tokens.
func eachToken(t *testing.T, f func(t *testing.T, tokenA, tokenB *tokentest.Token)) {
	for _, kind := range testKinds {
		t.Run(string(kind), func(t *testing.T) { f(t, testTokens[kind][0], testTokens[kind][1]) })
	}
}

func tokenConfig(tok *tokentest.Token, poolSize int) Config {
	return Config{Library: tok.Library, InitArgs: tok.InitArgs, TokenLabel: tok.Label, PIN: tok.PIN, PoolSize: poolSize}
}

func openClient(t *testing.T, tok *tokentest.Token, poolSize int) *Client {
	t.Helper()
	c, err := Open(context.Background(), tokenConfig(tok, poolSize))
	if err != nil {
		t.Fatalf("Open(%s): %v", tok.Label, err)
	}
	t.Cleanup(c.Close)
	return c
}

func newAESKey(t *testing.T, c *Client, bits int) []byte {
	t.Helper()
	ctx := context.Background()
	id, err := c.NewObjectID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.GenerateAESKey(ctx, id, "test-key", bits, Usage{Encrypt: true, Decrypt: true}); err != nil {
		t.Fatalf("GenerateAESKey(%d): %v", bits, err)
	}
	return id
}

func TestOpenRefusesWrongPIN(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		_, err := Open(context.Background(), Config{Library: tokenB.Library, InitArgs: tokenB.InitArgs, TokenLabel: tokenB.Label, PIN: "wrong", PoolSize: 2})
		if !errors.Is(err, ErrPINIncorrect) {
			t.Fatalf("wrong PIN: got %v, want ErrPINIncorrect", err)
		}
		if err != nil && bytes.Contains([]byte(err.Error()), []byte("wrong")) {
			t.Fatalf("error repeats the PIN: %v", err)
		}
	})
}

func TestOpenUnknownTokenAndLibrary(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		_, err := Open(context.Background(), Config{Library: tokenA.Library, InitArgs: tokenA.InitArgs, TokenLabel: "no-such-token", PIN: "1234", PoolSize: 2})
		if !errors.Is(err, ErrTokenNotFound) {
			t.Fatalf("unknown label: got %v", err)
		}
		_, err = Open(context.Background(), Config{Library: "/nonexistent/lib.so", TokenLabel: tokenA.Label, PIN: "1234", PoolSize: 2})
		if !errors.Is(err, ErrLibrary) {
			t.Fatalf("missing library: got %v", err)
		}
	})
}

// A second client of a token this process is already logged in to must
// present the same PIN: the token itself would not check it again.
func TestSharedLoginChecksPIN(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		first := openClient(t, tokenA, 2)
		_, err := Open(context.Background(), Config{Library: tokenA.Library, InitArgs: tokenA.InitArgs, TokenLabel: tokenA.Label, PIN: "9999", PoolSize: 2})
		if !errors.Is(err, ErrPINIncorrect) {
			t.Fatalf("second client with another PIN: got %v, want ErrPINIncorrect", err)
		}
		second, err := Open(context.Background(), tokenConfig(tokenA, 2))
		if err != nil {
			t.Fatal(err)
		}
		id := newAESKey(t, second, 256)
		second.Close()
		// The first client keeps the login after the second is gone.
		if _, err := first.EncryptGCM(context.Background(), id, []byte("still logged in"), []byte("aad")); err != nil {
			t.Fatalf("first client after second closed: %v", err)
		}
	})
}

func TestModuleRegistryIsReferenceCounted(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		countRefs := func() (int, bool) {
			modules.Lock()
			defer modules.Unlock()
			m, ok := modules.byPath[tokenA.Library]
			if !ok {
				return 0, false
			}
			return m.refs, true
		}
		base, _ := countRefs()
		a := openClient(t, tokenA, 1)
		b := openClient(t, tokenB, 1)
		if refs, _ := countRefs(); refs != base+2 {
			t.Fatalf("two clients: refs %d, want %d", refs, base+2)
		}
		a.Close()
		a.Close() // idempotent
		if refs, _ := countRefs(); refs != base+1 {
			t.Fatalf("after one close: refs %d, want %d", refs, base+1)
		}
		b.Close()
		refs, loaded := countRefs()
		if base == 0 && loaded {
			t.Fatalf("module still loaded with refs %d after its last client closed", refs)
		}
		// Loading again after the last release works (C_Initialize anew).
		c := openClient(t, tokenB, 1)
		if _, err := c.Random(context.Background(), 8); err != nil {
			t.Fatalf("after reload: %v", err)
		}
	})
}

func TestAESGCMRoundTripEverySize(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 4)
		ctx := context.Background()
		for _, bits := range []int{128, 192, 256} {
			id := newAESKey(t, c, bits)
			plaintext := []byte(fmt.Sprintf("secret for %d-bit key", bits))
			aad := []byte("context")
			blob, err := c.EncryptGCM(ctx, id, plaintext, aad)
			if err != nil {
				t.Fatalf("%d: encrypt: %v", bits, err)
			}
			if len(blob) != GCMIVLen+len(plaintext)+GCMTagLen {
				t.Fatalf("%d: blob length %d", bits, len(blob))
			}
			again, err := c.EncryptGCM(ctx, id, plaintext, aad)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(blob[:GCMIVLen], again[:GCMIVLen]) {
				t.Fatalf("%d: two encryptions used the same IV", bits)
			}
			got, err := c.DecryptGCM(ctx, id, blob, aad)
			if err != nil {
				t.Fatalf("%d: decrypt: %v", bits, err)
			}
			if !bytes.Equal(got, plaintext) {
				t.Fatalf("%d: round trip gave %q", bits, got)
			}
		}
	})
}

func TestAESGCMRejectsTamperingAndBadInput(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		ctx := context.Background()
		id := newAESKey(t, c, 256)
		other := newAESKey(t, c, 256)
		blob, err := c.EncryptGCM(ctx, id, []byte("attack at dawn"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		flip := func(i int) []byte {
			b := bytes.Clone(blob)
			b[i] ^= 1
			return b
		}
		cases := map[string]struct {
			key, blob, aad []byte
		}{
			"iv flipped":         {id, flip(0), []byte("aad")},
			"ciphertext flipped": {id, flip(GCMIVLen + 1), []byte("aad")},
			"tag flipped":        {id, flip(len(blob) - 1), []byte("aad")},
			"truncated tag":      {id, blob[:len(blob)-4], []byte("aad")},
			"too short":          {id, blob[:GCMIVLen+GCMTagLen-1], []byte("aad")},
			"wrong aad":          {id, blob, []byte("aae")},
			"other key":          {other, blob, []byte("aad")},
		}
		before := c.Stats()
		for name, tc := range cases {
			_, err := c.DecryptGCM(ctx, tc.key, tc.blob, tc.aad)
			if !errors.Is(err, ErrDecrypt) || errors.Is(err, ErrUnavailable) {
				t.Errorf("%s: got %v, want ErrDecrypt alone", name, err)
			}
		}
		// A bad ciphertext is the caller's fault: no retry, no session replaced.
		if after := c.Stats(); after.Replaced != before.Replaced || after.Errors != before.Errors {
			t.Errorf("bad ciphertexts cost sessions: %+v -> %+v", before, after)
		}
		if _, err := c.EncryptGCM(ctx, id, []byte("x"), nil); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("empty aad on encrypt: got %v", err)
		}
		if _, err := c.DecryptGCM(ctx, id, blob, nil); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("empty aad on decrypt: got %v", err)
		}
		if err := c.GenerateAESKey(ctx, []byte{1}, "x", 100, Usage{}); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("100-bit AES key: got %v", err)
		}
	})
}

func TestAESKeyIsSensitiveAndNotExtractable(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		id := newAESKey(t, c, 256)
		err := c.do(context.Background(), func(p11 PKCS11, sh pkcs11.SessionHandle) error {
			h, err := c.findObject(p11, sh, id, pkcs11.CKO_SECRET_KEY)
			if err != nil {
				return err
			}
			attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, nil),
			})
			if err != nil {
				return err
			}
			want := []byte{1, 0, 1, 1, 0}
			for i, a := range attrs {
				if len(a.Value) != 1 || a.Value[0] != want[i] {
					t.Errorf("attribute %#x = %v, want %d", a.Type, a.Value, want[i])
				}
			}
			_, err = p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if err == nil {
				t.Error("CKA_VALUE of a sensitive key was readable")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// The test closes a pooled session behind the pool's back; the next call
// fails on it, the pool replaces it and the call succeeds on a fresh one.
func TestPoolReplacesSessionClosedBehindItsBack(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 1)
		ctx := context.Background()
		id := newAESKey(t, c, 128)
		s := <-c.pool.idle
		if err := c.p11.CloseSession(s.handle); err != nil {
			t.Fatal(err)
		}
		c.pool.idle <- s
		before := c.Stats()
		if _, err := c.EncryptGCM(ctx, id, []byte("after close"), []byte("aad")); err != nil {
			t.Fatalf("encrypt after the session was closed: %v", err)
		}
		after := c.Stats()
		if after.Replaced != before.Replaced+1 {
			t.Fatalf("replaced %d -> %d, want one replacement", before.Replaced, after.Replaced)
		}
		if after.Open != 1 || after.InUse != 0 {
			t.Fatalf("pool after replacement: %+v", after)
		}
	})
}

// The module is finalised behind the client's back (as when the HSM goes
// away); the next call re-initialises, logs in again and succeeds.
func TestReinitialisesAfterModuleWentAway(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		other := openClient(t, tokenA, 2) // shares the module and the login
		ctx := context.Background()
		id := newAESKey(t, c, 256)
		blob, err := c.EncryptGCM(ctx, id, []byte("before"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		c.mod.mu.Lock()
		if err := c.p11.Finalize(); err != nil {
			c.mod.mu.Unlock()
			t.Fatal(err)
		}
		c.mod.mu.Unlock()

		got, err := c.DecryptGCM(ctx, id, blob, []byte("aad"))
		if err != nil {
			t.Fatalf("decrypt after the module went away: %v", err)
		}
		if string(got) != "before" {
			t.Fatalf("got %q", got)
		}
		if c.Stats().Reconnects != 1 {
			t.Fatalf("reconnects = %d, want 1", c.Stats().Reconnects)
		}
		// The other client of the same module works on without a second reset.
		if _, err := other.EncryptGCM(ctx, id, []byte("other"), []byte("aad")); err != nil {
			t.Fatalf("other client after re-initialisation: %v", err)
		}
		if other.Stats().Reconnects != 0 {
			t.Fatalf("other client re-initialised again")
		}
	})
}

// 24 goroutines share 3 sessions; each call holds its session for a moment,
// so callers must queue. The pool never opens more than its size and
// never hands one session to two callers at once. In a testing/synctest
// bubble, where the moment is on the bubble's clock: it passes only once
// every other caller is queued for a session.
func TestPoolNeverExceedsItsSize(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		synctest.Test(t, func(t *testing.T) { testPoolNeverExceedsItsSize(t, tokenA) })
	})
}

func testPoolNeverExceedsItsSize(t *testing.T, tokenA *tokentest.Token) {
	const size = 3
	c := openClient(t, tokenA, size)
	var (
		wg                sync.WaitGroup
		mu                sync.Mutex
		errs              []error
		running, maxRun   int
		maxOpen           int
		holders           = map[pkcs11.SessionHandle]bool{}
		sharedConcurrency bool
	)
	for g := 0; g < 24; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				err := c.do(context.Background(), func(p11 PKCS11, sh pkcs11.SessionHandle) error {
					mu.Lock()
					running++
					maxRun = max(maxRun, running)
					maxOpen = max(maxOpen, c.Stats().Open)
					if holders[sh] {
						sharedConcurrency = true
					}
					holders[sh] = true
					mu.Unlock()
					_, err := p11.GenerateRandom(sh, 16)
					time.Sleep(time.Millisecond) // bubble time: returns once the others queue
					mu.Lock()
					running--
					delete(holders, sh)
					mu.Unlock()
					return err
				})
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	if maxOpen > size || maxRun > size {
		t.Fatalf("open sessions reached %d and concurrent calls %d; pool size %d", maxOpen, maxRun, size)
	}
	if sharedConcurrency {
		t.Fatal("one session was used by two callers at once")
	}
	// The first 3 callers hold the sessions until the other 21 wait.
	if st := c.Stats(); st.Waits < 21 || st.InUse != 0 {
		t.Fatalf("240 calls holding 3 sessions: %+v", st)
	}
}

func TestPoolBorrowHonoursDeadline(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 1)
		ctx := context.Background()
		c.mod.mu.RLock()
		held, err := c.borrowCurrent(ctx, c.mod.generation, false)
		c.mod.mu.RUnlock()
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 50_000_000) // 50ms
		defer cancel()
		if _, err := c.Random(short, 8); !errors.Is(err, ErrPoolTimeout) {
			t.Fatalf("borrow with the only session held: got %v, want ErrPoolTimeout", err)
		}
		c.pool.giveBack(held, c.closeIfCurrent)
		if _, err := c.Random(ctx, 8); err != nil {
			t.Fatalf("after the session came back: %v", err)
		}
	})
}

// SoftHSM 2.6.1 races on concurrent key creation; the client serialises it.
func TestConcurrentKeyCreation(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenB, 8)
		ctx := context.Background()
		var wg sync.WaitGroup
		ids := make([][]byte, 16)
		errs := make([]error, 16)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, err := c.NewObjectID(ctx)
				if err == nil {
					err = c.GenerateAESKey(ctx, id, fmt.Sprintf("k%d", i), 256, Usage{Encrypt: true, Decrypt: true})
				}
				ids[i], errs[i] = id, err
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("key %d: %v", i, err)
			}
			if _, err := c.EncryptGCM(ctx, ids[i], []byte("x"), []byte("a")); err != nil {
				t.Fatalf("key %d unusable: %v", i, err)
			}
		}
	})
}

func TestDestroyObjects(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		ctx := context.Background()
		id := newAESKey(t, c, 256)
		if ok, err := c.ObjectExists(ctx, id); err != nil || !ok {
			t.Fatalf("exists before destroy: %v %v", ok, err)
		}
		if err := c.DestroyObjects(ctx, id, anyLabel); err != nil {
			t.Fatal(err)
		}
		if ok, err := c.ObjectExists(ctx, id); err != nil || ok {
			t.Fatalf("exists after destroy: %v %v", ok, err)
		}
		if _, err := c.EncryptGCM(ctx, id, []byte("x"), []byte("a")); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("encrypt with destroyed key: %v", err)
		}
		if err := c.DestroyObjects(ctx, id, anyLabel); err != nil {
			t.Fatalf("destroying twice: %v", err)
		}
	})
}

func TestRandom(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 1)
		a, err := c.Random(context.Background(), 32)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := c.Random(context.Background(), 32)
		if len(a) != 32 || bytes.Equal(a, b) {
			t.Fatalf("random: %x %x", a, b)
		}
		// 1 MiB: more than NSS gives in one C_GenerateRandom call.
		big, err := c.Random(context.Background(), MaxRandom)
		if err != nil || len(big) != MaxRandom {
			t.Fatalf("1 MiB of random: %d bytes, %v", len(big), err)
		}
		if bytes.Equal(big[:64<<10], big[64<<10:128<<10]) {
			t.Fatal("two 64 KiB chunks are equal")
		}
		if _, err := c.Random(context.Background(), MaxRandom+1); !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("too many bytes: %v", err)
		}
	})
}

func TestHMACInTheToken(t *testing.T) {
	eachToken(t, func(t *testing.T, tokenA, tokenB *tokentest.Token) {
		c := openClient(t, tokenA, 2)
		ctx := context.Background()
		id, err := c.NewObjectID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.GenerateHMACKey(ctx, id, "hmac-test", 512, Usage{Sign: true, Verify: true}); err != nil {
			t.Fatal(err)
		}
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			a, err := c.HMAC(ctx, id, h, []byte("data"))
			if err != nil {
				t.Fatalf("%v: %v", h, err)
			}
			b, _ := c.HMAC(ctx, id, h, []byte("data"))
			other, _ := c.HMAC(ctx, id, h, []byte("datA"))
			if len(a) != h.Size() || !bytes.Equal(a, b) || bytes.Equal(a, other) {
				t.Fatalf("%v: %x %x %x", h, a, b, other)
			}
		}
		if err := c.GenerateHMACKey(ctx, id, "x", 100, Usage{}); !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("100-bit HMAC key: %v", err)
		}
	})
}

// Exported for the fault tests, which live in package hsm_test because
// internal/faulttoken imports this package.
var (
	EachToken   = eachToken
	TokenConfig = tokenConfig
)

// anyLabel lets a test destroy what it made, whatever the label.
func anyLabel(string) bool { return true }
