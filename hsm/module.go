package hsm

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/pkcs11"
)

// The process-wide module registry. PKCS#11 state belongs to the process:
// C_Initialize once per module and C_Login once per token, whatever number of
// Vault mounts (ServeMultiplex runs them all in one process) use them. Every
// entry is reference-counted and torn down by its last user.
var modules = struct {
	sync.Mutex
	byPath map[string]*module
	// owners are the users (Vault mounts) alive in this process, whether
	// or not they have opened a token yet: housekeeping must never take
	// their objects for orphans.
	owners map[string]int
}{byPath: map[string]*module{}, owners: map[string]int{}}

// RegisterOwner records that owner (a Vault mount) lives in this process
// until the returned function is called.
func RegisterOwner(owner string) (unregister func()) {
	modules.Lock()
	modules.owners[owner]++
	modules.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			modules.Lock()
			defer modules.Unlock()
			if modules.owners[owner]--; modules.owners[owner] <= 0 {
				delete(modules.owners, owner)
			}
		})
	}
}

// OwnerAlive reports whether owner is registered in this process.
func OwnerAlive(owner string) bool {
	modules.Lock()
	defer modules.Unlock()
	return modules.owners[owner] > 0
}

// recoveryBackoff is the least time between two attempts to re-initialise
// a module that could not be: an outage costs the HSM two attempts a
// second, not one per request, and the mount heals within a second of the
// HSM's return.
const recoveryBackoff = 500 * time.Millisecond

// pinCompareInterval is the least time between two PIN comparisons that
// failed for one token: a holder of one mount's config cannot guess the
// PIN of another mount's login at the speed of the process.
const pinCompareInterval = time.Second

// module is one loaded PKCS#11 library.
type module struct {
	path     string
	initArgs string
	binding  *miekgBinding
	refs     int // guarded by modules.Mutex

	// mu is held for reading by every PKCS#11 call and for writing while
	// the module is re-initialised, so no call runs across C_Finalize.
	mu           sync.RWMutex
	generation   uint64                   // bumped by every re-initialisation
	initialised  bool                     // false after a C_Initialize that failed
	unloaded     bool                     // set by the last release
	nextRecovery time.Time                // no re-initialisation before then
	attempts     uint64                   // recovery attempts made, for callers waiting on one
	tokens       map[string]*tokenSession // by tokenKey; guarded by mu
	// oaepModes keep each token's RSA-OAEP probe result beyond its login
	// (probing makes an RSA key pair); guarded by mu.
	oaepModes map[string]OAEPMode
}

// tokenSession is this process's login to one token: one session kept open
// so the token does not log the process out, shared by every client of the
// token and counted.
type tokenSession struct {
	key     string            // the registry key: the label, or the slot when no label was given
	label   string            // "" when the token was chosen by slot
	slot    uint              // found again by label after a re-initialisation
	pin     string            // kept to log in again after a re-initialisation
	refs    int               // guarded by module.mu (write)
	owners  map[string]int    // clients by Config.Owner
	names   map[string]string // Config.OwnerName by Config.Owner
	session pkcs11.SessionHandle
	loginOK bool  // false when the last (re-)login failed
	lastErr error // why, when loginOK is false

	// After the token refused the PIN, no login is tried before
	// pinRetryAt (or a config write with a PIN): a real HSM locks the PIN
	// after a few failures, for every application on the partition.
	pinRefused   error
	pinRetryAt   time.Time
	loginBackoff time.Duration
	lastMismatch time.Time

	// lostAt and refusedAt are when the token stopped answering and when
	// it refused the PIN, zero while it does neither: each outage and
	// each refusal is logged once, at its start and at its end.
	lostAt, refusedAt time.Time

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
	m := &module{path: path, initArgs: initArgs, binding: b, refs: 1, tokens: map[string]*tokenSession{}, oaepModes: map[string]OAEPMode{}}
	p := view(m)
	if err := p.Initialize(); err != nil && !isSuccess(err) {
		b.unload()
		return nil, nil, fmt.Errorf("%w: C_Initialize: %w", ErrLibrary, err)
	}
	m.initialised = true
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
	if modules.byPath[m.path] == m {
		delete(modules.byPath, m.path)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unloaded = true
	_ = m.binding.Finalize()
	m.binding.unload()
}

// Shutdown finalises every loaded module, which closes all sessions and
// logs out of every token, for a process about to exit. Clients still open
// get ErrClosed from then on.
func Shutdown() {
	modules.Lock()
	defer modules.Unlock()
	for path, m := range modules.byPath {
		m.mu.Lock()
		m.unloaded = true
		_ = m.binding.Finalize()
		m.mu.Unlock()
		delete(modules.byPath, path)
	}
}

// findSlot returns the slot of the token named by label, or slotID when
// label is empty. Callers hold m.mu.
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
		if trimPadded(info.Label) == label {
			return slot, nil
		}
	}
	if label != "" {
		return 0, fmt.Errorf("%w: no token labelled %q", ErrTokenNotFound, label)
	}
	return 0, fmt.Errorf("%w: no token in slot %d", ErrTokenNotFound, slotID)
}

// login returns the process's login to the token cfg names, logging in if
// no client of this process has. A module whose token is not found is
// re-initialised once first: modules such as SoftHSM read their tokens at
// C_Initialize, so a token made (or brought back) since is otherwise
// invisible.
//
// A PIN that differs from the one this process logged in with is never
// compared by asking the token (it would answer CKR_USER_ALREADY_LOGGED_IN
// whatever it was given). When every user of the login is cfg.Owner (the
// same mount writing a new PIN after the token's PIN changed), the process
// logs out and in with the new PIN; otherwise the PIN is refused, naming
// the mounts that share the login.
func (m *module) login(p PKCS11, cfg Config, log hclog.Logger) (*tokenSession, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.unloaded {
		return nil, ErrClosed
	}
	key := tokenKey(cfg)
	if ts, ok := m.tokens[key]; ok {
		if err := m.checkPIN(p, ts, cfg, log); err != nil {
			return nil, err
		}
		ts.refs++
		ts.owners[cfg.Owner]++
		ts.names[cfg.Owner] = cfg.OwnerName
		return ts, nil
	}
	// Errors of other tokens' logins during a re-initialisation are theirs.
	if !m.initialised {
		_ = m.reinitialiseLocked(p, log)
	}
	slot, err := findSlot(p, cfg.TokenLabel, cfg.Slot)
	if errors.Is(err, ErrTokenNotFound) {
		log.Info("token not found; re-initialising the module to look again", "library", m.path, "token", key)
		_ = m.reinitialiseLocked(p, log)
		slot, err = findSlot(p, cfg.TokenLabel, cfg.Slot)
	}
	if err != nil {
		return nil, err
	}
	ts := &tokenSession{key: key, label: cfg.TokenLabel, slot: slot, pin: cfg.PIN, refs: 1,
		owners: map[string]int{cfg.Owner: 1}, names: map[string]string{cfg.Owner: cfg.OwnerName}, loginBackoff: cfg.LoginBackoff}
	ts.quirks.oaep = m.oaepModes[key]
	if err := m.openLoginSession(p, ts); err != nil {
		if classify(err) == classPIN {
			log.Error("the token refused the PIN", "token", key, "error", err)
		}
		return nil, err
	}
	m.tokens[key] = ts
	return ts, nil
}

// checkPIN lets a client share an existing login. Callers hold m.mu.
func (m *module) checkPIN(p PKCS11, ts *tokenSession, cfg Config, log hclog.Logger) error {
	if cfg.LoginBackoff > 0 {
		ts.loginBackoff = cfg.LoginBackoff
	}
	if subtle.ConstantTimeCompare([]byte(ts.pin), []byte(cfg.PIN)) == 1 {
		if !ts.loginOK {
			// A config write with the PIN lifts a remembered refusal.
			ts.pinRefused, ts.pinRetryAt = nil, time.Time{}
		}
		return nil
	}
	now := time.Now()
	if now.Sub(ts.lastMismatch) < pinCompareInterval {
		return fmt.Errorf("%w: another PIN was refused for this token less than %v ago; try again later", ErrPINIncorrect, pinCompareInterval)
	}
	if others := otherOwners(ts, cfg.Owner); len(others) > 0 || cfg.Owner == "" {
		ts.lastMismatch = now
		return fmt.Errorf("%w: differs from the PIN this process is logged in with for %s; "+
			"the token's login is shared, so every mount on it must give the same PIN", ErrPINIncorrect, describeOwners(ts, others))
	}
	// Only this mount uses the login: log in with the new PIN. The module
	// is re-initialised for it, since some modules (SoftHSM) keep the
	// token's PIN in memory and would judge the new one by the old. One
	// login is tried with the new PIN; if the token refuses it, the
	// previous PIN is logged in again at once, so the previous config
	// stays in force (that costs a second failure only when the token no
	// longer takes the old PIN either).
	old := ts.pin
	ts.pin, ts.pinRefused = cfg.PIN, nil
	_ = m.reinitialiseLocked(p, log)
	if ts.loginOK {
		log.Info("logged in to the token with a new PIN", "token", ts.key)
		return nil
	}
	refused := ts.lastErr
	ts.pin, ts.pinRefused, ts.lastMismatch = old, nil, now
	if m.initialised && classify(refused) == classPIN {
		if err := m.reloginLocked(p, ts); err != nil {
			log.Error("the previous PIN is refused too; the mount is logged out", "token", ts.key, "error", err)
		}
		m.noteHealth(ts, log)
	}
	return refused
}

func otherOwners(ts *tokenSession, owner string) []string {
	var out []string
	for o, n := range ts.owners {
		if o != owner && n > 0 {
			out = append(out, o)
		}
	}
	sort.Strings(out)
	return out
}

func describeOwners(ts *tokenSession, owners []string) string {
	var named []string
	for _, o := range owners {
		switch {
		case ts.names[o] != "":
			named = append(named, ts.names[o])
		case o != "":
			named = append(named, o)
		}
	}
	if len(named) == 0 {
		return "another client"
	}
	return "mounts " + strings.Join(named, ", ")
}

// openLoginSession opens the token's long-lived session and logs in on it,
// unless the token refused the PIN too recently. Callers hold m.mu for
// writing.
func (m *module) openLoginSession(p PKCS11, ts *tokenSession) error {
	if ts.pinRefused != nil && time.Now().Before(ts.pinRetryAt) {
		ts.loginOK, ts.lastErr = false, fmt.Errorf("%w; no login is tried before %s or the next config write",
			ts.pinRefused, ts.pinRetryAt.UTC().Format(time.RFC3339))
		return ts.lastErr
	}
	sh, err := p.OpenSession(ts.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		ts.loginOK, ts.lastErr = false, call("C_OpenSession", err)
		return ts.lastErr
	}
	if err := p.Login(sh, pkcs11.CKU_USER, ts.pin); err != nil && !isSuccess(err) {
		_ = p.CloseSession(sh)
		ts.loginOK = false
		if classify(err) == classPIN {
			ts.pinRefused, ts.pinRetryAt = pinError(err), time.Now().Add(ts.loginBackoffOrDefault())
			ts.lastErr = ts.pinRefused
			return ts.lastErr
		}
		ts.lastErr = call("C_Login", err)
		return ts.lastErr
	}
	ts.session, ts.loginOK, ts.lastErr, ts.pinRefused = sh, true, nil, nil
	return nil
}

// DefaultLoginBackoff is how long the plugin waits after the token refused
// the PIN before it tries to log in again.
const DefaultLoginBackoff = time.Minute

func (ts *tokenSession) loginBackoffOrDefault() time.Duration {
	if ts.loginBackoff > 0 {
		return ts.loginBackoff
	}
	return DefaultLoginBackoff
}

func (m *module) logout(p PKCS11, ts *tokenSession, owner string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ts.refs--
	ts.owners[owner]--
	if ts.refs > 0 {
		return
	}
	delete(m.tokens, ts.key)
	if ts.loginOK && !m.unloaded {
		_ = p.Logout(ts.session)
		_ = p.CloseSession(ts.session)
	}
}

// recover brings the module and the token's login back. After a
// device-level error seen in generation seen (deviceErr), it re-initialises
// the module at once, unless another caller already did since. Otherwise
// (the module or the login is still down from an earlier failure) it
// respects the backoffs: no attempt within recoveryBackoff of a failed one,
// no login within the login backoff of a refused PIN; a token whose login
// alone is down is logged in again, and the module is re-initialised only
// if the token cannot be found. Every re-initialisation finds the tokens
// again by label and logs them back in. Session handles from older
// generations are never used again (not even closed: their numbers may now
// belong to new sessions); object handles are checked before they are used
// again (see findObject).
func (m *module) recover(ctx context.Context, p PKCS11, ts *tokenSession, seen uint64, deviceErr bool, log hclog.Logger) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.unloaded {
		return ErrClosed
	}
	healthy := m.initialised && ts.loginOK
	if healthy && (m.generation != seen || !deviceErr) {
		return nil // recovered by another caller meanwhile
	}
	if deviceErr && ts.lostAt.IsZero() {
		ts.lostAt = time.Now()
		log.Warn("HSM lost: the token stopped answering; re-initialising the module", "token", ts.key, "library", m.path)
	}
	defer m.noteHealth(ts, log)
	if !healthy && m.initialised && ts.pinRefused != nil && time.Now().Before(ts.pinRetryAt) {
		return m.openLoginSession(p, ts) // explains the refusal; no login is tried
	}
	if !healthy {
		// Within the backoff, wait for the next attempt (made by this
		// caller or another) rather than fail at once: a request sent
		// after the HSM came back then succeeds, and the HSM still sees
		// one attempt per interval.
		for seq := m.attempts; time.Now().Before(m.nextRecovery); {
			wait := time.Until(m.nextRecovery)
			m.mu.Unlock()
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				m.mu.Lock()
				if ts.lastErr != nil {
					return fmt.Errorf("%w (waiting for the next attempt: %w)", ts.lastErr, ctx.Err())
				}
				return ctx.Err()
			case <-timer.C:
			}
			m.mu.Lock()
			if m.unloaded {
				return ErrClosed
			}
			if m.attempts != seq {
				if m.initialised && ts.loginOK {
					return nil
				}
				return ts.lastErr
			}
		}
		m.attempts++
		if m.initialised {
			err := m.reloginLocked(p, ts)
			if err == nil || !errors.Is(err, ErrTokenNotFound) {
				if err != nil {
					m.nextRecovery = time.Now().Add(recoveryBackoff)
				}
				return err
			}
		}
	}
	m.attempts++
	err := m.reinitialiseLocked(p, log)
	if err == nil && !ts.loginOK {
		err = ts.lastErr
	}
	if err != nil {
		m.nextRecovery = time.Now().Add(recoveryBackoff)
	}
	return err
}

// reloginLocked finds the token again and logs in. Callers hold m.mu for
// writing.
func (m *module) reloginLocked(p PKCS11, ts *tokenSession) error {
	if ts.label != "" {
		slot, err := findSlot(p, ts.label, 0)
		if err != nil {
			ts.lastErr = err
			return err
		}
		ts.slot = slot
	}
	return m.openLoginSession(p, ts)
}

// reinitialiseLocked finalises and initialises the module and logs every
// token in again. Callers hold m.mu for writing.
func (m *module) reinitialiseLocked(p PKCS11, log hclog.Logger) error {
	_ = p.Finalize()
	m.generation++
	m.initialised = false
	for _, ts := range m.tokens {
		ts.loginOK = false
	}
	if err := p.Initialize(); err != nil && !isSuccess(err) {
		err = call("C_Initialize", err)
		for _, ts := range m.tokens {
			ts.lastErr = err
		}
		log.Warn("re-initialising the PKCS#11 module failed", "library", m.path, "error", err)
		return err
	}
	m.initialised = true
	var errs []error
	for _, ts := range m.tokens {
		old := ts.slot
		err := m.reloginLocked(p, ts)
		m.noteHealth(ts, log)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ts.slot != old {
			log.Info("token found in another slot", "token", ts.key, "old_slot", old, "slot", ts.slot)
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		log.Warn("re-initialised the PKCS#11 module; some tokens are not back", "library", m.path, "generation", m.generation, "error", err)
	} else {
		log.Info("re-initialised the PKCS#11 module and logged in again", "library", m.path, "generation", m.generation)
	}
	return err
}

// noteHealth logs the token's lifecycle events, each once at its start
// and at its end: the HSM lost and regained (with the outage's length),
// the PIN refused and a login made again. Callers hold m.mu for writing.
func (m *module) noteHealth(ts *tokenSession, log hclog.Logger) {
	now := time.Now()
	if m.initialised && ts.loginOK {
		if !ts.refusedAt.IsZero() {
			log.Info("login resumed: the token accepted the PIN", "token", ts.key, "refused_for", now.Sub(ts.refusedAt).Round(time.Millisecond).String())
			ts.refusedAt = time.Time{}
		}
		if !ts.lostAt.IsZero() {
			log.Info("HSM regained: the token answers again", "token", ts.key, "library", m.path, "outage", now.Sub(ts.lostAt).Round(time.Millisecond).String())
			ts.lostAt = time.Time{}
		}
		return
	}
	if ts.pinRefused != nil {
		if ts.refusedAt.IsZero() {
			ts.refusedAt = now
			log.Error("login refused: the token refused the PIN; no login is tried before the backoff ends or the next config write with a PIN",
				"token", ts.key, "retry_at", ts.pinRetryAt.UTC().Format(time.RFC3339), "error", ts.pinRefused)
		}
		return
	}
	if ts.lostAt.IsZero() {
		ts.lostAt = now
		log.Warn("HSM lost: the token does not answer", "token", ts.key, "library", m.path, "error", ts.lastErr)
	}
}
