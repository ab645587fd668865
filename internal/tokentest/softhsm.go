package tokentest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SoftHSMLibraryCandidates are where Debian and others install SoftHSM2's
// module.
var SoftHSMLibraryCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// SoftHSMLibrary returns the SoftHSM2 module's path, or an error saying how
// to install it.
func SoftHSMLibrary() (string, error) {
	if p := os.Getenv("HSMKMS_TEST_LIBRARY"); p != "" {
		return p, nil
	}
	return firstExisting(SoftHSMLibraryCandidates, "SoftHSM2", "softhsm2")
}

func firstExisting(candidates []string, name, pkg string) (string, error) {
	for _, p := range candidates {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in %v: run `make deps` (apt-get install %s)", name, candidates, pkg)
}

// NewSoftHSM makes a SoftHSM2 token labelled label in dir and points
// SOFTHSM2_CONF at it. SoftHSM reads that variable once, at C_Initialize,
// so a test process uses one configuration for all its tokens: call
// NewSoftHSM for further tokens with the same dir.
func NewSoftHSM(dir, label, pin string) (*Token, error) {
	lib, err := SoftHSMLibrary()
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
	t := &Token{Kind: SoftHSM2, Dir: dir, Conf: conf, Library: lib, Label: label, PIN: pin, SOPIN: pin + "-so"}
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
