// Package hsm is hsmkms's access to a PKCS#11 token: module loading, login,
// a bounded session pool, and the key operations the plugin needs. It knows
// nothing of Vault.
package hsm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/pkcs11"
)

// DefaultBorrowTimeout bounds the wait for a session when the caller's
// context has no deadline of its own.
const DefaultBorrowTimeout = 30 * time.Second

// Config says which module and token to use.
type Config struct {
	// Library is the absolute path of the PKCS#11 module.
	Library string
	// InitArgs is passed to C_Initialize in CK_C_INITIALIZE_ARGS.pReserved
	// (NSS softokn's configuration string); empty for most modules. A
	// module is initialised once per process, so every client of one
	// module must give the same InitArgs.
	InitArgs string
	// Slot selects the token by slot id when TokenLabel is empty.
	Slot uint
	// TokenLabel selects the token by label; it wins over Slot, and the
	// token is found again by label after a re-initialisation.
	TokenLabel string
	// PIN is the user PIN. Never logged.
	PIN string
	// PoolSize is the most sessions the client keeps open at once.
	PoolSize int
	// Owner identifies the user of the client (the Vault mount); a client
	// whose owner alone uses a login may replace its PIN. OwnerName is
	// how messages about a shared login name it.
	Owner, OwnerName string
	// LoginBackoff is how long no login is tried after the token refused
	// the PIN (DefaultLoginBackoff when zero); opening a client with the
	// PIN lifts it at once.
	LoginBackoff time.Duration
	// Logger receives re-initialisations, logins, device errors and pool
	// exhaustion, never a PIN or key material. Nil discards them.
	Logger hclog.Logger
	// UnwrappedTTL and UnwrappedSize bound the cache of unwrapped copies
	// of wrapped keys (DefaultUnwrappedTTL and DefaultUnwrappedSize when
	// zero).
	UnwrappedTTL  time.Duration
	UnwrappedSize int
	// Intercept, for tests, wraps this client's view of the module: every
	// PKCS#11 call the client makes, including the module's initialisation
	// and login on its behalf, goes through what it returns.
	Intercept func(PKCS11) PKCS11
	// Observe, if not nil, is told of every PKCS#11 call the client makes,
	// the module's initialisation and logins on its behalf included (see
	// Observer). It sees the calls as the client does, after Intercept.
	Observe Observer
}

// Client is one user's (one Vault mount's) handle on a token. It shares the
// module and the login with every other client of the same token in the
// process and owns a pool of sessions of its own. Safe for concurrent use.
type Client struct {
	mod   *module
	p11   PKCS11 // this client's view of the module
	token *tokenSession
	pool  *pool
	owner string
	log   hclog.Logger

	cache *unwrappedCache

	closeOnce sync.Once
	closed    chan struct{}
}

// Open loads the module (once per process), finds the token, logs in (once
// per process and token), checks the token's AES-GCM (SelfTestGCM) and
// returns a client.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.PoolSize < 1 {
		return nil, inputErrorf("pool size must be at least 1")
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	mod, p11, err := acquireModule(cfg.Library, cfg.InitArgs, withObserver(cfg.Intercept, cfg.Observe))
	if err != nil {
		return nil, err
	}
	token, err := mod.login(p11, cfg, log)
	if err != nil {
		mod.release()
		return nil, err
	}
	c := &Client{mod: mod, p11: p11, token: token, pool: newPool(cfg.PoolSize), owner: cfg.Owner, log: log, closed: make(chan struct{})}
	c.cache = newUnwrappedCache(c, cfg.UnwrappedTTL, cfg.UnwrappedSize)
	if err := c.token.quirks.identify(c); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.SelfTestGCM(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close returns the client's sessions and its share of the login and module.
func (c *Client) Close() {
	c.closeOnce.Do(func() {
		c.cache.close()
		close(c.closed)
		c.mod.mu.RLock()
		gen := c.mod.generation
		c.pool.drain(func(s *session) {
			if s.generation == gen {
				_ = c.p11.CloseSession(s.handle)
			}
		})
		c.mod.mu.RUnlock()
		c.mod.logout(c.p11, c.token, c.owner)
		c.mod.release()
	})
}

// do runs op on a pooled session. A broken session is replaced and the call
// retried once; a module or token that went away (whatever error it
// answers first: NSS says CKR_SESSION_HANDLE_INVALID, then
// CKR_SLOT_ID_INVALID) is re-initialised, logged in again and the call
// retried once. What still fails is reported as ErrUnavailable.
func (c *Client) do(ctx context.Context, op func(p PKCS11, sh pkcs11.SessionHandle) error) error {
	select {
	case <-c.closed:
		return ErrClosed
	default:
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultBorrowTimeout)
		defer cancel()
	}
	retried, reinitialised, handleFailed, fresh := false, false, false, false
	for {
		gen, err := c.attempt(ctx, op, fresh)
		if errors.As(err, new(reloginFailed)) {
			// The module or the login is still down (the token is away,
			// or refused the PIN): report it, nothing to retry.
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		class := classify(err)
		switch {
		case class == classSession && !c.tokenAnswers():
			class = classDevice
		case handleFailed && (errors.Is(err, ErrKeyNotFound) || errors.Is(err, ErrTokenNotFound)):
			// A handle went stale and the object is now not found: the
			// token's storage may have gone away under the module (SoftHSM
			// keeps answering from a token directory that vanished), which
			// only a re-initialisation can tell.
			class = classDevice
		}
		switch class {
		case classNone:
			return nil
		case classSession, classHandle:
			c.pool.errors.Add(1)
			if class == classHandle {
				handleFailed = true
				c.token.forgetHandles()
			}
			if retried {
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			retried, fresh = true, class == classSession
			c.pool.retries.Add(1)
		case classDevice:
			c.pool.errors.Add(1)
			c.log.Warn("HSM device-level error", "error", err)
			if reinitialised {
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			c.pool.reconnects.Add(1)
			if rerr := c.mod.recover(ctx, c.p11, c.token, gen, true, c.log); rerr != nil {
				return fmt.Errorf("%w: re-initialising the module: %w (after %w)", ErrUnavailable, rerr, err)
			}
			reinitialised, retried = true, true
			c.pool.retries.Add(1)
		default:
			if errors.Is(err, ErrPoolTimeout) {
				c.log.Warn("no HSM session became free in time", "pool_size", cap(c.pool.open), "error", err)
			}
			return err
		}
	}
}

// tokenAnswers reports whether the module still describes the token: a
// failing session on a healthy token is the session's fault; on a token
// that no longer answers it is the module's.
func (c *Client) tokenAnswers() bool {
	c.mod.mu.RLock()
	defer c.mod.mu.RUnlock()
	if c.isClosed() || !c.mod.initialised {
		return false
	}
	_, err := c.p11.GetTokenInfo(c.token.slot)
	return err == nil
}

func (c *Client) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// attempt borrows a session (one opened now if fresh), runs op and gives
// the session back or replaces it. It returns the module generation the
// attempt ran in.
func (c *Client) attempt(ctx context.Context, op func(PKCS11, pkcs11.SessionHandle) error, fresh bool) (uint64, error) {
	c.mod.mu.RLock()
	healthy, gen := c.mod.initialised && c.token.loginOK, c.mod.generation
	c.mod.mu.RUnlock()
	if !healthy {
		if err := c.mod.recover(ctx, c.p11, c.token, gen, false, c.log); err != nil {
			return gen, reloginFailed{err}
		}
	}

	// The closed check is made under the module's read lock: the last
	// client's Close finalises and unloads the module under its write
	// lock, so no call can reach an unloaded module.
	c.mod.mu.RLock()
	defer c.mod.mu.RUnlock()
	if c.isClosed() || c.mod.unloaded {
		return c.mod.generation, ErrClosed
	}
	gen = c.mod.generation
	s, err := c.borrowCurrent(ctx, gen, fresh)
	if err != nil {
		return gen, err
	}
	err = op(c.p11, s.handle)
	switch classify(err) {
	case classNone, classCaller, classHandle:
		c.pool.giveBack(s, c.closeIfCurrent)
	case classSession, classDevice:
		c.pool.discard(s, c.closeIfCurrent)
	default:
		// An unexpected error: keep the session only if the token still
		// knows it; otherwise the session is what failed.
		if _, infoErr := c.p11.GetSessionInfo(s.handle); infoErr != nil {
			c.pool.discard(s, c.closeIfCurrent)
			err = fmt.Errorf("%w (the session is gone: %w)", err, sessionLost{infoErr})
		} else {
			c.pool.giveBack(s, c.closeIfCurrent)
		}
	}
	return gen, err
}

// borrowCurrent borrows a session of generation gen, dropping (without
// closing) any left from before a re-initialisation; with fresh, one
// opened now. Callers hold mod.mu for reading.
func (c *Client) borrowCurrent(ctx context.Context, gen uint64, fresh bool) (*session, error) {
	opener := func() (*session, error) {
		sh, err := c.p11.OpenSession(c.token.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return nil, call("C_OpenSession", err)
		}
		return &session{handle: sh, generation: gen}, nil
	}
	if fresh {
		return c.pool.borrowFresh(ctx, opener, c.closeIfCurrent)
	}
	for {
		s, err := c.pool.borrow(ctx, opener)
		if err != nil {
			return nil, err
		}
		if s.generation == gen {
			return s, nil
		}
		c.pool.discard(s, nil)
	}
}

// closeIfCurrent closes a session on the token unless a re-initialisation
// has made its handle meaningless. Callers hold mod.mu for reading.
func (c *Client) closeIfCurrent(s *session) {
	if s.generation == c.mod.generation {
		_ = c.p11.CloseSession(s.handle)
	}
}

// Stats returns the pool's figures.
func (c *Client) Stats() PoolStats { return c.pool.stats() }

// TokenInfo describes the token for `config` reads and `status`.
type TokenInfo struct {
	Label          string
	Manufacturer   string
	Model          string
	SerialNumber   string
	Slot           uint
	Library        string
	FirmwareString string
}

// TokenInfo reads the token's description.
func (c *Client) TokenInfo() (TokenInfo, error) {
	c.mod.mu.RLock()
	defer c.mod.mu.RUnlock()
	if c.isClosed() {
		return TokenInfo{}, ErrClosed
	}
	if !c.mod.initialised {
		return TokenInfo{}, fmt.Errorf("%w: the module is being re-initialised", ErrUnavailable)
	}
	info, err := c.p11.GetTokenInfo(c.token.slot)
	if err != nil {
		return TokenInfo{}, call("C_GetTokenInfo", err)
	}
	return TokenInfo{
		Label:          trimPadded(info.Label),
		Manufacturer:   trimPadded(info.ManufacturerID),
		Model:          trimPadded(info.Model),
		SerialNumber:   trimPadded(info.SerialNumber),
		Slot:           c.token.slot,
		Library:        c.mod.path,
		FirmwareString: fmt.Sprintf("%d.%d", info.FirmwareVersion.Major, info.FirmwareVersion.Minor),
	}, nil
}

// trimPadded removes the blank padding of PKCS#11's fixed-size strings.
func trimPadded(s string) string { return strings.TrimRight(s, " \x00") }
