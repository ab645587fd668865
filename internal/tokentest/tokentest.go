// Package tokentest makes throw-away PKCS#11 tokens for tests, of two
// independent implementations: SoftHSM2 and NSS softokn. Tests of
// cryptography run against real tokens, never a fake; a machine without
// either implementation fails them rather than skipping (`make test`
// installs both).
package tokentest

import (
	"fmt"
	"os"
)

// Kind names a PKCS#11 implementation.
type Kind string

const (
	SoftHSM2 Kind = "softhsm2"
	NSS      Kind = "nss"
)

// Kinds are the implementations every test run covers.
var Kinds = []Kind{SoftHSM2, NSS}

// Token is one token ready for use: what a client needs to open it.
type Token struct {
	Kind    Kind
	Dir     string // the token's own files
	Library string // the PKCS#11 module
	Label   string
	PIN     string
	SOPIN   string
	// Conf is the SOFTHSM2_CONF path of a SoftHSM2 token ("" for NSS).
	Conf string
	// InitArgs is the C_Initialize parameter string an NSS token needs
	// ("" for SoftHSM2). It describes every NSS token made by the same
	// New call, since the module is initialised once per process.
	InitArgs string
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
	}
	return nil, fmt.Errorf("unknown token kind %q", kind)
}

// RunWithTokens is a TestMain body: for every kind in Kinds it makes the
// tokens in a fresh directory, hands them to use (keyed by kind), runs the
// tests and removes the directory. A machine without an implementation
// fails here rather than skipping.
func RunWithTokens(m interface{ Run() int }, use func(map[Kind][]*Token), specs ...Spec) int {
	dir, err := os.MkdirTemp("", "hsmkms-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	all := map[Kind][]*Token{}
	for _, kind := range Kinds {
		tokens, err := New(kind, fmt.Sprintf("%s/%s", dir, kind), specs...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "making %s tokens: %v\n", kind, err)
			return 1
		}
		all[kind] = tokens
	}
	use(all)
	return m.Run()
}
