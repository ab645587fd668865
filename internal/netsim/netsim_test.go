package netsim

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// fake is a module whose encryptions wait until released and whose
// signatures fail when told to; anything else is not called by these tests.
type fake struct {
	hsm.PKCS11
	entered chan struct{}
	release chan struct{}
	signErr error
}

func (f *fake) EncryptInit(pkcs11.SessionHandle, []*pkcs11.Mechanism, pkcs11.ObjectHandle) error {
	f.entered <- struct{}{}
	<-f.release
	return nil
}

func (f *fake) Sign(pkcs11.SessionHandle, []byte) ([]byte, error) { return []byte("sig"), f.signErr }

func (f *fake) SignOnce(pkcs11.SessionHandle, []byte, int) ([]byte, error) { return []byte("sig"), nil }

// A method of miekg's binding that asks for the size first makes, and
// pays for, two calls; the one-call variant one; a failed size query ends
// the method after one.
func TestCountsAndDelay(t *testing.T) {
	const rtt = time.Millisecond
	n := New(rtt)
	f := &fake{}
	p := n.Wrap(f)
	before := n.Take()
	if _, err := p.Sign(1, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := p.SignOnce(1, nil, 64); err != nil {
		t.Fatal(err)
	}
	f.signErr = errors.New("CKR_KEY_HANDLE_INVALID")
	if _, err := p.Sign(1, nil); err == nil {
		t.Fatal("the module's error was lost")
	}
	d := n.Take().Sub(before)
	if want := map[string]int64{"C_Sign": 4}; !maps.Equal(d.Calls, want) || d.Total() != 4 {
		t.Fatalf("calls %v, want %v", d.Calls, want)
	}
	// A sleep is never shorter than asked.
	if d.Delayed < 4*rtt || d.Busy < d.Delayed {
		t.Errorf("delayed %v, busy %v for 4 calls of %v", d.Delayed, d.Busy, rtt)
	}
	if d.RTT != rtt || n.RTT() != rtt {
		t.Errorf("rtt %v", d.RTT)
	}
}

// MaxInFlight is the most calls at once since the previous Take.
func TestMaxInFlight(t *testing.T) {
	n := New(0)
	f := &fake{entered: make(chan struct{}), release: make(chan struct{})}
	p := n.Wrap(f)
	const calls = 3
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.EncryptInit(1, nil, 1)
		}()
	}
	for range calls {
		<-f.entered
	}
	if s := n.Take(); s.MaxInFlight != calls {
		t.Errorf("with %d calls in the module: max in flight %d", calls, s.MaxInFlight)
	}
	close(f.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The window after the first Take began with 3 in flight.
	if s := n.Take(); s.MaxInFlight != calls || s.Calls["C_EncryptInit"] != calls {
		t.Errorf("after the calls: %+v", s)
	}
	if s := n.Take(); s.MaxInFlight != 0 {
		t.Errorf("a window with no calls: max in flight %d", s.MaxInFlight)
	}
}

// The bench reads the plugin's counters through the socket it serves.
func TestServeRemote(t *testing.T) {
	n := New(2 * time.Millisecond)
	path := filepath.Join(t.TempDir(), "seam.sock")
	if err := n.Serve(path); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Wrap(&fake{}).SignOnce(1, nil, 64); err != nil {
		t.Fatal(err)
	}
	got, err := NewRemote(path).Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got.RTT != 2*time.Millisecond || got.Calls["C_Sign"] != 1 || got.MaxInFlight != 1 || got.Delayed < 2*time.Millisecond {
		t.Errorf("remote snapshot %+v", got)
	}
	if _, err := NewRemote(filepath.Join(t.TempDir(), "none.sock")).Snapshot(context.Background()); err == nil {
		t.Error("read counters from a socket nobody serves")
	}
}

// Storage operations are counted only once tracked, and Sub gives those
// of an interval.
func TestStorageCounts(t *testing.T) {
	n := New(0)
	if s := n.Take(); s.StorageCounted || s.StorageTotal() != 0 {
		t.Fatalf("untracked: %+v", s)
	}
	n.TrackStorage()
	before := n.Take()
	n.CountStorage("Get")
	n.CountStorage("Get")
	n.CountStorage("Put")
	d := n.Take().Sub(before)
	if !d.StorageCounted || !maps.Equal(d.Storage, map[string]int64{"Get": 2, "Put": 1}) || d.StorageTotal() != 3 {
		t.Fatalf("%+v", d)
	}
	// A snapshot of a network that did not track storage has none to give.
	if d := n.Take().Sub(Snapshot{}); d.StorageCounted {
		t.Fatalf("%+v", d)
	}
}
