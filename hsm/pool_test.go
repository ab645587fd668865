package hsm

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/miekg/pkcs11"
)

// The retry after a session failed gets a session opened now: the pool
// never hands it another idle one (a network HSM that closed one has
// often closed them all). A full pool retires an idle session for it, and
// with none idle waits for a slot until the deadline.
func TestBorrowFreshOpensANewSessionEvenWhenOthersAreIdle(t *testing.T) {
	p := newPool(2)
	ctx := context.Background()
	next := pkcs11.SessionHandle(0)
	opener := func() (*session, error) {
		next++
		return &session{handle: next}, nil
	}
	var closed []pkcs11.SessionHandle
	closeSession := func(s *session) { closed = append(closed, s.handle) }

	a, _ := p.borrow(ctx, opener)
	b, _ := p.borrow(ctx, opener)
	p.giveBack(a, closeSession)
	p.giveBack(b, closeSession)

	s, err := p.borrowFresh(ctx, opener, closeSession)
	if err != nil {
		t.Fatal(err)
	}
	if s.handle != 3 || len(closed) != 1 || closed[0] != a.handle {
		t.Fatalf("borrowFresh on a full pool gave session %d and closed %v; want a new session 3 in the slot of idle session %d", s.handle, closed, a.handle)
	}
	if st := p.stats(); st.Open != 2 || st.InUse != 1 || st.Idle != 1 {
		t.Fatalf("pool after borrowFresh: %+v", st)
	}

	held, err := p.borrow(ctx, opener) // b, the last idle one
	if err != nil || held != b {
		t.Fatalf("borrow: %v, %v", held, err)
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.borrowFresh(short, opener, closeSession); !errors.Is(err, ErrPoolTimeout) {
		t.Fatalf("borrowFresh with every session borrowed and the deadline passed: %v, want ErrPoolTimeout", err)
	}
	p.discard(held, closeSession)
	s2, err := p.borrowFresh(ctx, opener, closeSession)
	if err != nil || s2.handle != 4 {
		t.Fatalf("borrowFresh with a free slot: %v, %v; want new session 4", s2, err)
	}
	if st := p.stats(); st.Open != 2 || st.InUse != 2 || st.Idle != 0 {
		t.Fatalf("pool at the end: %+v", st)
	}
}

// Waits are counted and timed: the time a borrower spent waiting for a
// session is added when its wait ends, whether a session came free or the
// deadline passed, and the borrowers waiting now are counted meanwhile.
func TestPoolCountsWaitsAndWaitTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPool(1)
		ctx := context.Background()
		opener := func() (*session, error) { return &session{handle: 1}, nil }
		held, err := p.borrow(ctx, opener)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *session)
		go func() {
			s, _ := p.borrow(ctx, opener)
			got <- s
		}()
		synctest.Wait()
		if st := p.stats(); st.Waits != 1 || st.Waiting != 1 || st.WaitTime != 0 {
			t.Fatalf("one borrower waiting: %+v", st)
		}
		time.Sleep(3 * time.Second)
		p.giveBack(held, func(*session) {})
		s := <-got
		if st := p.stats(); st.Waits != 1 || st.Waiting != 0 || st.WaitTime != 3*time.Second {
			t.Fatalf("after a 3 s wait: %+v", st)
		}

		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, err := p.borrowFresh(short, opener, func(*session) {}); !errors.Is(err, ErrPoolTimeout) {
			t.Fatalf("borrowFresh on a full pool: %v, want ErrPoolTimeout", err)
		}
		if st := p.stats(); st.Waits != 2 || st.Waiting != 0 || st.WaitTime != 5*time.Second {
			t.Fatalf("after a 2 s wait that timed out: %+v", st)
		}
		p.giveBack(s, func(*session) {})
	})
}
