// Package softhsmtest makes throw-away SoftHSM2 tokens for tests. Tests of
// cryptography run against a real token, never a fake; a machine without
// SoftHSM2 fails them rather than skipping (`make test` installs it).
package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Token is a SoftHSM2 token in a directory of its own.
type Token struct {
	Dir     string // holds softhsm2.conf and tokens/
	Conf    string // the SOFTHSM2_CONF path
	Library string
	Label   string
	PIN     string
	SOPIN   string
}

// LibraryCandidates are where Debian and others install SoftHSM2's module.
var LibraryCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// Library returns the SoftHSM2 module's path, or an error saying how to
// install it.
func Library() (string, error) {
	if p := os.Getenv("HSMKMS_TEST_LIBRARY"); p != "" {
		return p, nil
	}
	for _, p := range LibraryCandidates {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("SoftHSM2 not found in %v: run `make deps` (apt-get install softhsm2)", LibraryCandidates)
}

// New makes a token labelled label in a fresh directory under dir and
// points SOFTHSM2_CONF at it. SoftHSM reads that variable once, at
// C_Initialize, so a test process uses one configuration for all its tokens:
// call New for further tokens with the same dir.
func New(dir, label, pin string) (*Token, error) {
	lib, err := Library()
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	t := &Token{Dir: dir, Conf: conf, Library: lib, Label: label, PIN: pin, SOPIN: pin + "-so"}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", t.SOPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("softhsm2-util --init-token: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return nil, err
	}
	return t, nil
}

// Spec names a token to make: its label and PIN.
type Spec struct{ Label, PIN string }

// RunWithTokens is a TestMain body: it makes the tokens in a fresh
// directory, hands them to use, runs the tests and removes the directory. A
// machine without SoftHSM2 fails here rather than skipping.
func RunWithTokens(m interface{ Run() int }, use func([]*Token), specs ...Spec) int {
	dir, err := os.MkdirTemp("", "hsmkms-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	tokens := make([]*Token, len(specs))
	for i, s := range specs {
		if tokens[i], err = New(dir, s.Label, s.PIN); err != nil {
			fmt.Fprintln(os.Stderr, "making SoftHSM tokens:", err)
			return 1
		}
	}
	use(tokens)
	return m.Run()
}
