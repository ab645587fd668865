package hsm

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
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
	path     string
	initArgs string
	binding  *miekgBinding
	refs     int // guarded by modules.Mutex

	// mu is held for reading by every PKCS#11 call and for writing while
	// the module is re-initialised, so no call runs across C_Finalize.
	mu         sync.RWMutex
	generation uint64                   // bumped by every re-initialisation
	tokens     map[string]*tokenSession // by tokenKey; guarded by mu
}

// tokenSession is this process's login to one token: one session kept open
// so the token does not log the process out, shared by every client of the
// token and counted.
type tokenSession struct {
	key     string // the registry key: the label, or the slot when no label was given
	label   string // "" when the token was chosen by slot
	slot    uint   // found again by label after a re-initialisation
	pin     string // kept to log in again after a re-initialisation
	refs    int    // guarded by module.mu (write)
	session pkcs11.SessionHandle
	loginOK bool // false when the last (re-)login failed

	// createMu serialises object-creating calls: SoftHSM 2.6.1 races on
	// concurrent key creation in one token.
	createMu sync.Mutex

	// quirks are what this token was found to do differently; see quirks.go.
	quirks tokenQuirks

	handlesMu sync.Mutex
	handles   map[string]cachedHandle // by class/CKA_ID
}

func tokenKey(cfg Config) string {
	if cfg.TokenLabel != "" {
		return "label:" + cfg.TokenLabel
	}
	return fmt.Sprintf("slot:%d", cfg.Slot)
}

// acquireModule loads the module at path once per process (initialising it
// with initArgs) and returns it with the caller's view of it: the binding,
// or what intercept makes of it.
func acquireModule(path, initArgs string, intercept func(PKCS11) PKCS11) (*module, PKCS11, error) {
	modules.Lock()
	defer modules.Unlock()
	view := func(m *module) PKCS11 {
		if intercept != nil {
			return intercept(m.binding)
		}
		return m.binding
	}
	if m, ok := modules.byPath[path]; ok {
		if m.initArgs != initArgs {
			return nil, nil, fmt.Errorf("%w: %s is already loaded in this process with other init_args; "+
				"a module is initialised once per process, so every mount that uses it must give the same init_args", ErrInitArgsConflict, path)
		}
		m.refs++
		return m, view(m), nil
	}
	b, err := loadMiekg(path, initArgs)
	if err != nil {
		return nil, nil, err
	}
	m := &module{path: path, initArgs: initArgs, binding: b, refs: 1, tokens: map[string]*tokenSession{}}
	p := view(m)
	if err := p.Initialize(); err != nil && !isSuccess(err) {
		b.unload()
		return nil, nil, fmt.Errorf("%w: C_Initialize: %w", ErrLibrary, err)
	}
	modules.byPath[path] = m
	return m, p, nil
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
	_ = m.binding.Finalize()
	m.binding.unload()
}

// findSlot returns the slot of the token cfg names. Callers hold m.mu.
func findSlot(p PKCS11, label string, slotID uint) (uint, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, call("C_GetSlotList", err)
	}
	for _, slot := range slots {
		if label == "" {
			if slot == slotID {
				return slot, nil
			}
			continue
		}
		info, err := p.GetTokenInfo(slot)
		if err != nil {
			continue
		}
		if strings.TrimRight(info.Label, " \x00") == label {
			return slot, nil
		}
	}
	if label != "" {
		return 0, fmt.Errorf("%w: no token labelled %q", ErrTokenNotFound, label)
	}
	return 0, fmt.Errorf("%w: no token in slot %d", ErrTokenNotFound, slotID)
}

// login returns the process's login to the token cfg names, logging in if
// no client of this process has. A PIN that differs from the one this
// process logged in with is refused without asking the token: the token
// would answer CKR_USER_ALREADY_LOGGED_IN whatever PIN it was given.
func (m *module) login(p PKCS11, cfg Config) (*tokenSession, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := tokenKey(cfg)
	if ts, ok := m.tokens[key]; ok {
		if subtle.ConstantTimeCompare([]byte(ts.pin), []byte(cfg.PIN)) != 1 {
			return nil, fmt.Errorf("%w: differs from the PIN this process is logged in with", ErrPINIncorrect)
		}
		ts.refs++
		return ts, nil
	}
	slot, err := findSlot(p, cfg.TokenLabel, cfg.Slot)
	if err != nil {
		return nil, err
	}
	ts := &tokenSession{key: key, label: cfg.TokenLabel, slot: slot, pin: cfg.PIN, refs: 1}
	if err := m.openLoginSession(p, ts); err != nil {
		return nil, err
	}
	m.tokens[key] = ts
	return ts, nil
}

// openLoginSession opens the token's long-lived session and logs in on it.
// Callers hold m.mu for writing.
func (m *module) openLoginSession(p PKCS11, ts *tokenSession) error {
	sh, err := p.OpenSession(ts.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return call("C_OpenSession", err)
	}
	if err := p.Login(sh, pkcs11.CKU_USER, ts.pin); err != nil && !isSuccess(err) {
		_ = p.CloseSession(sh)
		if classify(err) == classPIN {
			return pinError(err)
		}
		return call("C_Login", err)
	}
	ts.session = sh
	ts.loginOK = true
	return nil
}

func (m *module) logout(p PKCS11, ts *tokenSession) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ts.refs--
	if ts.refs > 0 {
		return
	}
	delete(m.tokens, ts.key)
	if ts.loginOK {
		_ = p.Logout(ts.session)
		_ = p.CloseSession(ts.session)
	}
}

// reinitialise finalises and initialises the module again after a
// device-level error, unless another caller already did since generation
// seen; finds every token again by label (slot ids can change when a token
// is re-initialised or a device comes back) and logs it back in. Session
// handles from older generations are never used again (not even closed:
// their numbers may now belong to new sessions); object handles are checked
// before they are used again (see findObject).
func (m *module) reinitialise(p PKCS11, seen uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.generation != seen {
		return nil
	}
	_ = p.Finalize()
	m.generation++
	if err := p.Initialize(); err != nil && !isSuccess(err) {
		for _, ts := range m.tokens {
			ts.loginOK = false
		}
		return call("C_Initialize", err)
	}
	var errs []error
	for _, ts := range m.tokens {
		ts.loginOK = false
		if ts.label != "" {
			slot, err := findSlot(p, ts.label, 0)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ts.slot = slot
		}
		if err := m.openLoginSession(p, ts); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// relogin logs in again when an earlier re-initialisation could not.
func (m *module) relogin(p PKCS11, ts *tokenSession) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ts.loginOK {
		return nil
	}
	if ts.label != "" {
		slot, err := findSlot(p, ts.label, 0)
		if err != nil {
			return err
		}
		ts.slot = slot
	}
	return m.openLoginSession(p, ts)
}
