package hsm

import (
	"context"
	"errors"
	"testing"

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
