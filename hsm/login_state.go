package hsm

import "errors"

// LoginState is where a client's token login stands, as the last call
// found it: the client does not probe the token to answer.
type LoginState string

const (
	// LoginOK: the module is initialised and the token logged in.
	LoginOK LoginState = "ok"
	// LoginUnreachable: the module or the token is down (the last
	// re-initialisation or login failed for a reason other than the PIN).
	LoginUnreachable LoginState = "unreachable"
	// LoginPINRefused: the token refused the PIN; no login is tried until
	// the login backoff ends or a config write gives the PIN again.
	LoginPINRefused LoginState = "pin_refused"
	// LoginPINLocked: the token locked the PIN; an administrator must
	// unlock it.
	LoginPINLocked LoginState = "pin_locked"
)

// LoginStates are every LoginState, for callers that report each.
func LoginStates() []LoginState {
	return []LoginState{LoginOK, LoginUnreachable, LoginPINRefused, LoginPINLocked}
}

// LoginStateOf is the state an error from Open, or from a client's call,
// shows the login to be in.
func LoginStateOf(err error) LoginState {
	switch {
	case err == nil:
		return LoginOK
	case errors.Is(err, ErrPINLocked):
		return LoginPINLocked
	case errors.Is(err, ErrPINIncorrect) || classify(err) == classPIN:
		return LoginPINRefused
	}
	return LoginUnreachable
}

// LoginState reports the state of the client's login, shared with every
// client of the same token in the process.
func (c *Client) LoginState() LoginState {
	c.mod.mu.RLock()
	defer c.mod.mu.RUnlock()
	switch {
	case c.isClosed() || c.mod.unloaded || !c.mod.initialised:
		return LoginUnreachable
	case c.token.loginOK:
		return LoginOK
	case c.token.pinRefused != nil:
		return LoginStateOf(c.token.pinRefused)
	case c.token.lastErr != nil:
		return LoginStateOf(c.token.lastErr)
	}
	return LoginUnreachable
}
