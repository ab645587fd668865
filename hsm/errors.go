package hsm

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Sentinel errors. Callers test them with errors.Is; the PKCS#11 return value
// stays in the chain (as pkcs11.Error) for logs and errors.As.
var (
	// ErrLibrary: the PKCS#11 module could not be loaded or initialised.
	ErrLibrary = errors.New("PKCS#11 library could not be loaded")
	// ErrTokenNotFound: no token with the configured label or slot.
	ErrTokenNotFound = errors.New("token not found")
	// ErrPINIncorrect: the token (or this process's login to it) refused the PIN.
	ErrPINIncorrect = errors.New("the token refused the PIN")
	// ErrPINLocked: the token locked the PIN; an administrator must unlock it.
	ErrPINLocked = errors.New("the token's PIN is locked")
	// ErrKeyNotFound: no object with that CKA_ID on the token.
	ErrKeyNotFound = errors.New("key object not found on the token")
	// ErrDecrypt: the ciphertext, its IV, tag or associated data did not
	// authenticate. Deliberately says nothing about which part was wrong.
	ErrDecrypt = errors.New("ciphertext could not be decrypted")
	// ErrInvalidInput: an input the HSM would reject (or that we refuse before
	// the HSM sees it because some HSMs would not).
	ErrInvalidInput = errors.New("invalid input")
	// ErrUnavailable: the HSM failed, was retried once on a fresh session or a
	// re-initialised module, and failed again.
	ErrUnavailable = errors.New("HSM unavailable")
	// ErrPoolTimeout: no session became free before the deadline.
	ErrPoolTimeout = errors.New("timed out waiting for an HSM session")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("HSM client closed")
	// ErrInitArgsConflict: the module is loaded in this process with another
	// C_Initialize parameter string.
	ErrInitArgsConflict = errors.New("the PKCS#11 module is loaded with other init_args")
	// ErrGCMUnusable: the token's AES-GCM failed the self-test, so the
	// plugin cannot use it without risking ciphertexts it cannot decrypt.
	ErrGCMUnusable = errors.New("the token's AES-GCM failed the self-test")
)

// InputError is an input the HSM would reject, or that hsm refuses before
// the HSM sees it because some HSMs would not: the caller's to fix. Reason
// is what the caller is told, whole; callers never trim it. It is
// ErrInvalidInput for errors.Is, and keeps the error it came from.
type InputError struct {
	Reason   string
	err      error // what the reason was made from, if anything
	sentinel error // a narrower sentinel (ErrAdopt), if any
}

func (e *InputError) Error() string { return ErrInvalidInput.Error() + ": " + e.Reason }

// UserMessage is what the caller is told.
func (e *InputError) UserMessage() string { return e.Reason }

func (e *InputError) Is(target error) bool {
	return target == ErrInvalidInput || (e.sentinel != nil && target == e.sentinel)
}

func (e *InputError) Unwrap() error { return e.err }

// inputErrorf makes an InputError; a %w in format keeps that error in the
// chain.
func inputErrorf(format string, args ...interface{}) error {
	made := fmt.Errorf(format, args...)
	return &InputError{Reason: made.Error(), err: errors.Unwrap(made)}
}

// errorClass says what the client does after a PKCS#11 call failed.
type errorClass int

const (
	classNone    errorClass = iota
	classOther              // report as is; the session stays usable
	classSession            // this session is broken: drop it, retry once on a fresh one
	classHandle             // a cached object handle is stale: forget it, retry once
	classDevice             // the module or token went away: re-initialise, log in, retry once
	classCaller             // the caller's input was wrong: report, never retry
	classPIN                // the PIN was refused or locked: never retry
)

func pkcs11Code(err error) (pkcs11.Error, bool) {
	var code pkcs11.Error
	if errors.As(err, &code) {
		return code, true
	}
	return 0, false
}

func classify(err error) errorClass {
	if err == nil {
		return classNone
	}
	if errors.Is(err, ErrDecrypt) || errors.Is(err, ErrInvalidInput) || errors.Is(err, errAmbiguousTag) {
		// An ambiguous tag costs no session: the session still answers
		// (authFailureAsGeneralError), and decryptGCM looks again.
		return classCaller
	}
	if errors.Is(err, ErrPINIncorrect) || errors.Is(err, ErrPINLocked) {
		return classPIN
	}
	var lost sessionLost
	if errors.As(err, &lost) {
		return classSession
	}
	code, ok := pkcs11Code(err)
	if !ok {
		return classOther
	}
	switch code {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_OPERATION_ACTIVE, pkcs11.CKR_GENERAL_ERROR:
		return classSession
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID,
		pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		// The KEK's handle goes stale like any other (a token that
		// lost its storage answers this to C_UnwrapKey).
		return classHandle
	case pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID:
		return classDevice
	case pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_SIGNATURE_INVALID,
		pkcs11.CKR_SIGNATURE_LEN_RANGE:
		return classCaller
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_INVALID,
		pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_EXPIRED:
		return classPIN
	}
	return classOther
}

// sessionLost marks an unexpected error after which the session itself was
// found gone: the call is treated as a session failure.
type sessionLost struct{ err error }

func (e sessionLost) Error() string { return e.err.Error() }
func (e sessionLost) Unwrap() error { return e.err }

// reloginFailed marks a failure to log in again after a re-initialisation.
type reloginFailed struct{ err error }

func (e reloginFailed) Error() string { return "logging in again: " + e.err.Error() }
func (e reloginFailed) Unwrap() error { return e.err }

// isSuccess reports the return values that mean "already done".
func isSuccess(err error) bool {
	code, ok := pkcs11Code(err)
	return ok && (code == pkcs11.CKR_USER_ALREADY_LOGGED_IN ||
		code == pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)
}

func pinError(err error) error {
	code, _ := pkcs11Code(err)
	if code == pkcs11.CKR_PIN_LOCKED {
		return fmt.Errorf("%w: %w", ErrPINLocked, err)
	}
	return fmt.Errorf("%w: %w", ErrPINIncorrect, err)
}

// call names the PKCS#11 function that failed, keeping the code in the chain.
func call(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", name, err)
}
