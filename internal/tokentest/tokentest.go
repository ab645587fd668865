// Package tokentest makes throw-away PKCS#11 tokens for tests, of two
// independent implementations, SoftHSM2 and NSS softokn, and SoftHSM2
// reached through p11-kit's proxy module, as Debian, Fedora and RHEL
// register modules system-wide. Tests of cryptography run against real
// tokens, never a fake; a machine without an implementation fails them
// rather than skipping (`make test` installs them).
package tokentest

import (
	"fmt"
	"os"
	"path/filepath"
)

// Kind names a PKCS#11 implementation.
type Kind string

const (
	SoftHSM2 Kind = "softhsm2"
	NSS      Kind = "nss"
	// P11Kit is SoftHSM2 loaded by p11-kit-proxy.so: the proxy hands out
	// a function list of its own, maps slots and sessions, and forwards
	// every call.
	P11Kit Kind = "p11kit"
)

// Kinds are the implementations every test run covers.
var Kinds = []Kind{SoftHSM2, NSS}

// KindsWithP11Kit are Kinds plus SoftHSM2 through p11-kit's proxy, for the
// tests of what a module loader in between can change: the hsm package's
// and the e2e crypto suite.
var KindsWithP11Kit = []Kind{SoftHSM2, NSS, P11Kit}

// Dir is the directory under root where tokens of kind are made. SoftHSM2
// reads one SOFTHSM2_CONF per process, and p11-kit's proxy loads the same
// SoftHSM2 library, so both SoftHSM2 kinds share one directory.
func Dir(root string, kind Kind) string {
	if kind == P11Kit {
		kind = SoftHSM2
	}
	return filepath.Join(root, string(kind))
}

// Token is one token ready for use: what a client needs to open it.
type Token struct {
	Kind    Kind
	Dir     string // the token's own files
	Library string // the PKCS#11 module
	Label   string
	PIN     string
	SOPIN   string
	// Conf is the SOFTHSM2_CONF path of a SoftHSM2 token, reached
	// directly or through p11-kit ("" for NSS).
	Conf string
	// InitArgs is the C_Initialize parameter string an NSS token needs
	// ("" for SoftHSM2). It describes every NSS token made by the same
	// New call, since the module is initialised once per process.
	InitArgs string
}

// Implementation is the token implementation behind the module the token
// is loaded by: SoftHSM2 for a P11Kit token. What a token does (its quirks,
// its mechanisms) is its implementation's.
func (t *Token) Implementation() Kind {
	if t.Kind == P11Kit {
		return SoftHSM2
	}
	return t.Kind
}

// Spec names a token to make: its label and PIN.
type Spec struct{ Label, PIN string }

// New makes one token per spec, all of kind, in fresh directories under
// dir. Tokens of one kind made by one call can be used together in one
// process.
func New(kind Kind, dir string, specs ...Spec) ([]*Token, error) {
	switch kind {
	case SoftHSM2:
		tokens := make([]*Token, len(specs))
		for i, s := range specs {
			t, err := NewSoftHSM(dir, s.Label, s.PIN)
			if err != nil {
				return nil, err
			}
			tokens[i] = t
		}
		return tokens, nil
	case NSS:
		return NewNSS(dir, specs...)
	case P11Kit:
		return NewP11Kit(dir, specs...)
	}
	return nil, fmt.Errorf("unknown token kind %q", kind)
}

// RunWithTokens is a TestMain body: for every kind in Kinds it makes the
// tokens in a fresh directory, hands them to use (keyed by kind), runs the
// tests and removes the directory. A machine without an implementation
// fails here rather than skipping.
func RunWithTokens(m interface{ Run() int }, use func(map[Kind][]*Token), specs ...Spec) int {
	return RunWithTokenKinds(m, Kinds, use, specs...)
}

// RunWithTokenKinds is RunWithTokens for the given kinds.
func RunWithTokenKinds(m interface{ Run() int }, kinds []Kind, use func(map[Kind][]*Token), specs ...Spec) int {
	dir, err := os.MkdirTemp("", "hsmkms-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	all := map[Kind][]*Token{}
	for _, kind := range kinds {
		tokens, err := New(kind, Dir(dir, kind), specs...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "making %s tokens: %v\n", kind, err)
			return 1
		}
		all[kind] = tokens
	}
	use(all)
	return m.Run()
}
