package hsm

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// session is a pooled PKCS#11 session and the module generation it was
// opened in.
type session struct {
	handle     pkcs11.SessionHandle
	generation uint64
}

// pool bounds the sessions one client has open. A slot in open is held by
// every session that exists, idle or borrowed; idle holds the ones free now.
type pool struct {
	open chan struct{}
	idle chan *session

	// mu guards closed against giveBack: a session borrowed while the pool
	// is drained comes back to a closed pool and is closed, not kept.
	mu     sync.Mutex
	closed bool

	inUse      atomic.Int64
	waits      atomic.Int64
	waiting    atomic.Int64 // borrowers waiting now
	waited     atomic.Int64 // nanoseconds spent waiting, summed over borrowers
	replaced   atomic.Int64
	reconnects atomic.Int64
	errors     atomic.Int64
	retries    atomic.Int64 // calls made again after a failure (Client.do)
}

func newPool(size int) *pool {
	return &pool{open: make(chan struct{}, size), idle: make(chan *session, size)}
}

// borrow returns an idle session or opens a new one while fewer than the
// pool's size exist; otherwise it waits for a return or for ctx to end.
func (p *pool) borrow(ctx context.Context, opener func() (*session, error)) (*session, error) {
	select {
	case s := <-p.idle:
		p.inUse.Add(1)
		return s, nil
	default:
	}
	select {
	case s := <-p.idle:
		p.inUse.Add(1)
		return s, nil
	case p.open <- struct{}{}:
	default:
		start := p.startWait()
		select {
		case s := <-p.idle:
			p.endWait(start)
			p.inUse.Add(1)
			return s, nil
		case p.open <- struct{}{}:
			p.endWait(start)
		case <-ctx.Done():
			p.endWait(start)
			return nil, fmt.Errorf("%w: %w", ErrPoolTimeout, ctx.Err())
		}
	}
	s, err := opener()
	if err != nil {
		<-p.open
		return nil, err
	}
	p.inUse.Add(1)
	return s, nil
}

// borrowFresh returns a session opened now, for the retry after a
// session failed: a network HSM that closed one pooled session has often
// closed them all (idle timeouts, a lost connection), and another idle one
// would fail the same way. Without a free slot it retires an idle session,
// closing it with close, and opens the new one in its slot; with none
// idle either, it waits for a slot or an idle session, or for ctx to end.
func (p *pool) borrowFresh(ctx context.Context, opener func() (*session, error), close func(*session)) (*session, error) {
	select {
	case p.open <- struct{}{}:
	default:
		var retire *session
		select {
		case p.open <- struct{}{}:
		case retire = <-p.idle:
		default:
			start := p.startWait()
			select {
			case p.open <- struct{}{}:
			case retire = <-p.idle:
			case <-ctx.Done():
				p.endWait(start)
				return nil, fmt.Errorf("%w: %w", ErrPoolTimeout, ctx.Err())
			}
			p.endWait(start)
		}
		if retire != nil { // its slot is now the new session's
			p.replaced.Add(1)
			close(retire)
		}
	}
	s, err := opener()
	if err != nil {
		<-p.open
		return nil, err
	}
	p.inUse.Add(1)
	return s, nil
}

// startWait counts a borrower that found every session in use.
func (p *pool) startWait() time.Time {
	p.waits.Add(1)
	p.waiting.Add(1)
	return time.Now()
}

// endWait ends the wait begun at start, adding it to the pool's wait
// time: what borrowers lost because every session was in use, timeouts
// included.
func (p *pool) endWait(start time.Time) {
	p.waited.Add(int64(time.Since(start)))
	p.waiting.Add(-1)
}

// giveBack puts a healthy session back; into a closed pool, it closes it
// with close.
func (p *pool) giveBack(s *session, close func(*session)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inUse.Add(-1)
	if p.closed {
		close(s)
		<-p.open
		return
	}
	p.idle <- s // never blocks: idle holds at most cap(open) sessions
}

// discard forgets a session that must not be used again; close, if not nil,
// closes it on the token.
func (p *pool) discard(s *session, close func(*session)) {
	p.inUse.Add(-1)
	p.replaced.Add(1)
	if close != nil {
		close(s)
	}
	<-p.open
}

// drain closes the pool: every idle session now, every borrowed one when it
// comes back.
func (p *pool) drain(close func(*session)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for {
		select {
		case s := <-p.idle:
			close(s)
			<-p.open
		default:
			return
		}
	}
}

// PoolStats are the pool's figures since the client was opened.
type PoolStats struct {
	Size       int   `json:"size"`
	Open       int   `json:"open"`
	InUse      int64 `json:"in_use"`
	Idle       int   `json:"idle"`
	Waits      int64 `json:"waits"`
	Replaced   int64 `json:"replaced"`
	Reconnects int64 `json:"reconnects"`
	Errors     int64 `json:"errors"`
	// Retries counts calls made again after a session, a handle or the
	// device failed (on a fresh session, or after a re-initialisation).
	Retries int64 `json:"retries"`
	// Waiting is the borrowers waiting for a session now; WaitTime the
	// time borrowers spent waiting, summed (a wait counts once it ends).
	Waiting  int64         `json:"waiting"`
	WaitTime time.Duration `json:"wait_time"`
}

func (p *pool) stats() PoolStats {
	return PoolStats{
		Size:       cap(p.open),
		Open:       len(p.open),
		InUse:      p.inUse.Load(),
		Idle:       len(p.idle),
		Waits:      p.waits.Load(),
		Waiting:    p.waiting.Load(),
		WaitTime:   time.Duration(p.waited.Load()),
		Retries:    p.retries.Load(),
		Replaced:   p.replaced.Load(),
		Reconnects: p.reconnects.Load(),
		Errors:     p.errors.Load(),
	}
}
