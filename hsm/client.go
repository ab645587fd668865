// Package hsm is hsmkms's access to a PKCS#11 token: module loading, login,
// a bounded session pool, and the key operations the plugin needs. It knows
// nothing of Vault.
package hsm

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

// DefaultBorrowTimeout bounds the wait for a session when the caller's
// context has no deadline of its own.
const DefaultBorrowTimeout = 30 * time.Second

// Config says which module and token to use.
type Config struct {
	// Library is the absolute path of the PKCS#11 module.
	Library string
	// Slot selects the token by slot id when TokenLabel is empty.
	Slot uint
	// TokenLabel selects the token by label; it wins over Slot.
	TokenLabel string
	// PIN is the user PIN. Never logged.
	PIN string
	// PoolSize is the most sessions the client keeps open at once.
	PoolSize int
}

// Client is one user's (one Vault mount's) handle on a token. It shares the
// module and the login with every other client of the same token in the
// process and owns a pool of sessions of its own. Safe for concurrent use.
type Client struct {
	mod   *module
	token *tokenSession
	pool  *pool

	closeOnce sync.Once
	closed    chan struct{}
}

// Open loads the module (once per process), finds the token, logs in (once
// per process and token) and returns a client with an empty pool.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.PoolSize < 1 {
		return nil, fmt.Errorf("%w: pool size must be at least 1", ErrInvalidInput)
	}
	mod, err := acquireModule(cfg.Library)
	if err != nil {
		return nil, err
	}
	slot, err := findSlot(mod, cfg)
	if err != nil {
		mod.release()
		return nil, err
	}
	token, err := mod.login(slot, cfg.PIN)
	if err != nil {
		mod.release()
		return nil, err
	}
	return &Client{mod: mod, token: token, pool: newPool(cfg.PoolSize), closed: make(chan struct{})}, nil
}

func findSlot(mod *module, cfg Config) (uint, error) {
	mod.mu.RLock()
	defer mod.mu.RUnlock()
	slots, err := mod.ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("%w: C_GetSlotList: %w", ErrLibrary, err)
	}
	for _, slot := range slots {
		if cfg.TokenLabel == "" {
			if slot == cfg.Slot {
				return slot, nil
			}
			continue
		}
		info, err := mod.ctx.GetTokenInfo(slot)
		if err != nil {
			continue
		}
		if strings.TrimRight(info.Label, " \x00") == cfg.TokenLabel {
			return slot, nil
		}
	}
	if cfg.TokenLabel != "" {
		return 0, fmt.Errorf("%w: no token labelled %q", ErrTokenNotFound, cfg.TokenLabel)
	}
	return 0, fmt.Errorf("%w: no token in slot %d", ErrTokenNotFound, cfg.Slot)
}

// Close returns the client's sessions and its share of the login and module.
func (c *Client) Close() {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.mod.mu.RLock()
		gen := c.mod.generation
		c.pool.drain(func(s *session) {
			if s.generation == gen {
				_ = c.mod.ctx.CloseSession(s.handle)
			}
		})
		c.mod.mu.RUnlock()
		c.mod.logout(c.token)
		c.mod.release()
	})
}

// do runs op on a pooled session. A failure of the session is retried once on
// a fresh session; a failure of the module or token is retried once after
// re-initialising the module and logging in again; what fails twice is
// reported as ErrUnavailable.
func (c *Client) do(ctx context.Context, op func(ctx *pkcs11.Ctx, sh pkcs11.SessionHandle) error) error {
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
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var gen uint64
		gen, err = c.attempt(ctx, op)
		switch classify(err) {
		case classNone:
			return nil
		case classSession:
			c.pool.errors.Add(1)
			continue
		case classHandle:
			c.pool.errors.Add(1)
			c.token.forgetHandles()
			continue
		case classDevice:
			c.pool.errors.Add(1)
			c.pool.reconnects.Add(1)
			if rerr := c.mod.reinitialise(gen); rerr != nil {
				return fmt.Errorf("%w: re-initialising the module: %w (after %w)", ErrUnavailable, rerr, err)
			}
			continue
		default:
			return err
		}
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// attempt borrows a session, runs op and gives the session back or replaces
// it. It returns the module generation the attempt ran in.
func (c *Client) attempt(ctx context.Context, op func(*pkcs11.Ctx, pkcs11.SessionHandle) error) (uint64, error) {
	c.mod.mu.RLock()
	loggedIn := c.token.loginOK
	c.mod.mu.RUnlock()
	if !loggedIn {
		if err := c.mod.relogin(c.token); err != nil {
			return 0, err
		}
	}

	c.mod.mu.RLock()
	defer c.mod.mu.RUnlock()
	gen := c.mod.generation
	s, err := c.borrowCurrent(ctx, gen)
	if err != nil {
		return gen, err
	}
	err = op(c.mod.ctx, s.handle)
	switch classify(err) {
	case classNone, classCaller, classHandle:
		c.pool.giveBack(s)
	case classSession, classDevice:
		c.pool.discard(s, c.closeIfCurrent)
	default:
		// An unexpected error: keep the session only if the token still
		// knows it.
		if _, infoErr := c.mod.ctx.GetSessionInfo(s.handle); infoErr != nil {
			c.pool.discard(s, c.closeIfCurrent)
		} else {
			c.pool.giveBack(s)
		}
	}
	return gen, err
}

// borrowCurrent borrows a session of generation gen, dropping (without
// closing) any left from before a re-initialisation. Callers hold mod.mu for
// reading.
func (c *Client) borrowCurrent(ctx context.Context, gen uint64) (*session, error) {
	for {
		s, err := c.pool.borrow(ctx, func() (*session, error) {
			sh, err := c.mod.ctx.OpenSession(c.token.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
			if err != nil {
				return nil, call("C_OpenSession", err)
			}
			return &session{handle: sh, generation: gen}, nil
		})
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
		_ = c.mod.ctx.CloseSession(s.handle)
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
	info, err := c.mod.ctx.GetTokenInfo(c.token.slot)
	if err != nil {
		return TokenInfo{}, call("C_GetTokenInfo", err)
	}
	trim := func(s string) string { return strings.TrimRight(s, " \x00") }
	return TokenInfo{
		Label:          trim(info.Label),
		Manufacturer:   trim(info.ManufacturerID),
		Model:          trim(info.Model),
		SerialNumber:   trim(info.SerialNumber),
		Slot:           c.token.slot,
		Library:        c.mod.path,
		FirmwareString: fmt.Sprintf("%d.%d", info.FirmwareVersion.Major, info.FirmwareVersion.Minor),
	}, nil
}
