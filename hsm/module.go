package hsm

import (
	"crypto/subtle"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// The process-wide module registry. PKCS#11 state belongs to the process:
// C_Initialize once per module and C_Login once per token, whatever number of
// Vault mounts (ServeMultiplex runs them all in one process) use them. Every
// entry is reference-counted and torn down by its last user.
var modules = struct {
	sync.Mutex
	byPath map[string]*module
}{byPath: map[string]*module{}}

// module is one loaded PKCS#11 library.
type module struct {
	path string
	ctx  *pkcs11.Ctx
	refs int // guarded by modules.Mutex

	// mu is held for reading by every PKCS#11 call and for writing while
	// the module is re-initialised, so no call runs across C_Finalize.
	mu         sync.RWMutex
	generation uint64                 // bumped by every re-initialisation
	tokens     map[uint]*tokenSession // by slot; guarded by mu
}

// tokenSession is this process's login to one token: one session kept open
// so the token does not log the process out, shared by every client of the
// token and counted.
type tokenSession struct {
	slot    uint
	pin     string // kept to log in again after a re-initialisation
	refs    int    // guarded by module.mu (write)
	session pkcs11.SessionHandle
	loginOK bool // false when the last (re-)login failed

	// createMu serialises object-creating calls: SoftHSM 2.6.1 races on
	// concurrent key creation in one token.
	createMu sync.Mutex

	// oaep is what the token does for RSA-OAEP with SHA-256, probed once.
	oaep oaepProbe

	handlesMu sync.Mutex
	handles   map[string]pkcs11.ObjectHandle // CKA_ID -> handle, for one generation
	handleGen uint64
}

func acquireModule(path string) (*module, error) {
	modules.Lock()
	defer modules.Unlock()
	if m, ok := modules.byPath[path]; ok {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: %s", ErrLibrary, path)
	}
	if err := ctx.Initialize(); err != nil && !isSuccess(err) {
		ctx.Destroy()
		return nil, fmt.Errorf("%w: C_Initialize: %w", ErrLibrary, err)
	}
	m := &module{path: path, ctx: ctx, refs: 1, tokens: map[uint]*tokenSession{}}
	modules.byPath[path] = m
	return m, nil
}

func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.byPath, m.path)
	m.mu.Lock()
	defer m.mu.Unlock()
	_ = m.ctx.Finalize()
	m.ctx.Destroy()
}

// login returns the process's login to the token in slot, logging in if no
// client of this process has. A PIN that differs from the one this process
// logged in with is refused without asking the token: the token would answer
// CKR_USER_ALREADY_LOGGED_IN whatever PIN it was given.
func (m *module) login(slot uint, pin string) (*tokenSession, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ts, ok := m.tokens[slot]; ok {
		if subtle.ConstantTimeCompare([]byte(ts.pin), []byte(pin)) != 1 {
			return nil, fmt.Errorf("%w: differs from the PIN this process is logged in with", ErrPINIncorrect)
		}
		ts.refs++
		return ts, nil
	}
	ts := &tokenSession{slot: slot, pin: pin, refs: 1}
	if err := m.openLoginSession(ts); err != nil {
		return nil, err
	}
	m.tokens[slot] = ts
	return ts, nil
}

// openLoginSession opens the token's long-lived session and logs in on it.
// Callers hold m.mu for writing.
func (m *module) openLoginSession(ts *tokenSession) error {
	sh, err := m.ctx.OpenSession(ts.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return call("C_OpenSession", err)
	}
	if err := m.ctx.Login(sh, pkcs11.CKU_USER, ts.pin); err != nil && !isSuccess(err) {
		_ = m.ctx.CloseSession(sh)
		if classify(err) == classPIN {
			return pinError(err)
		}
		return call("C_Login", err)
	}
	ts.session = sh
	ts.loginOK = true
	return nil
}

func (m *module) logout(ts *tokenSession) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ts.refs--
	if ts.refs > 0 {
		return
	}
	delete(m.tokens, ts.slot)
	if ts.loginOK {
		_ = m.ctx.Logout(ts.session)
		_ = m.ctx.CloseSession(ts.session)
	}
}

// reinitialise finalises and initialises the module again after a
// device-level error, unless another caller already did since generation
// seen, and logs every token back in. Session and object handles from older
// generations are never used again (not even closed: their numbers may now
// belong to new sessions).
func (m *module) reinitialise(seen uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.generation != seen {
		return nil
	}
	_ = m.ctx.Finalize()
	m.generation++
	if err := m.ctx.Initialize(); err != nil && !isSuccess(err) {
		for _, ts := range m.tokens {
			ts.loginOK = false
		}
		return call("C_Initialize", err)
	}
	var firstErr error
	for _, ts := range m.tokens {
		ts.loginOK = false
		if err := m.openLoginSession(ts); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// relogin logs in again when an earlier re-initialisation could not.
func (m *module) relogin(ts *tokenSession) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ts.loginOK {
		return nil
	}
	return m.openLoginSession(ts)
}
