package hsmkms

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// The one error convention (docs/DESIGN.md): below the handlers, a
// caller's mistake is an error with a UserMessage (keyring.UserError,
// hsm.InputError, wire's parse errors), whatever layer made it; the HSM's
// failure is hsm.ErrUnavailable and its kin; anything else is internal,
// wrapped with %w. Handlers answer every error through respondError, and
// batch items through itemFailure, which both classify through failure.

// userMessenger is an error the caller caused and can fix; its message is
// what the caller is told.
type userMessenger interface{ UserMessage() string }

// decryptFailedMsg says a ciphertext did not open, and nothing of why.
const decryptFailedMsg = "ciphertext could not be decrypted: it was altered, made by another key, or the context, associated_data or encryption_context differ"

// failure classifies err: the HTTP status it is answered with and the
// message the caller sees.
func failure(err error) (int, string) {
	var um userMessenger
	switch {
	case errors.Is(err, hsm.ErrDecrypt):
		return http.StatusBadRequest, decryptFailedMsg
	case errors.As(err, &um):
		return http.StatusBadRequest, um.UserMessage()
	case errors.Is(err, errNotConfigured):
		return http.StatusBadRequest, err.Error()
	case hsmUnavailable(err):
		return http.StatusServiceUnavailable, err.Error()
	}
	return http.StatusInternalServerError, err.Error()
}

// respondError answers a single request's error: the caller's mistakes are
// 400s that say what to fix, an HSM that failed twice is a 503, the rest
// is internal (500).
func respondError(op string, err error) (*logical.Response, error) {
	switch status, msg := failure(err); status {
	case http.StatusBadRequest:
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	case http.StatusServiceUnavailable:
		return nil, logical.CodedError(status, fmt.Sprintf("%s: %s", op, msg))
	}
	return nil, fmt.Errorf("%s: %w", op, err)
}

// itemFailure turns a batch item's error into its result.
func itemFailure(err error) batchResult {
	status, msg := failure(err)
	switch status {
	case http.StatusBadRequest:
		return batchResult{Error: msg}
	case http.StatusServiceUnavailable:
		return batchResult{Error: msg, internal: true, unavailable: true}
	}
	return batchResult{Error: fmt.Sprintf("internal error: %v", err), internal: true}
}

// singleFailure answers a single request whose one item failed.
func singleFailure(op string, r batchResult) (*logical.Response, error) {
	if r.unavailable {
		return nil, logical.CodedError(http.StatusServiceUnavailable, fmt.Sprintf("%s: %s", op, r.Error))
	}
	if r.internal {
		return nil, fmt.Errorf("%s: %s", op, r.Error)
	}
	return logical.ErrorResponse(r.Error), logical.ErrInvalidRequest
}

// within places a caller's mistake in the list item or field it is about
// ("keys[2]: jwk is not valid JSON"); any other error passes unchanged.
func within(where string, err error) error {
	var um userMessenger
	if errors.As(err, &um) {
		return keyring.FieldErrorf(where, "%s", um.UserMessage())
	}
	return err
}

// hsmUnavailable reports the errors that mean the HSM (not the caller, not
// the plugin) failed: answered 503, so clients retry.
func hsmUnavailable(err error) bool {
	// A key object or token not found is the HSM's state, not the caller's
	// fault: a request racing an outage can see it before the module is
	// re-initialised (the key's metadata says the object exists).
	return errors.Is(err, hsm.ErrUnavailable) || errors.Is(err, hsm.ErrPoolTimeout) || errors.Is(err, hsm.ErrClosed) ||
		errors.Is(err, errHSMOpen) || errors.Is(err, hsm.ErrKeyNotFound) || errors.Is(err, hsm.ErrTokenNotFound)
}
