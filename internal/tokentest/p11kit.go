package tokentest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// P11KitProxyCandidates are where Debian (package libp11-kit0, with
// p11-kit-modules) and others install p11-kit's proxy module, which loads
// every module registered with p11-kit and shows their slots as its own.
var P11KitProxyCandidates = []string{
	"/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so",
	"/usr/lib/aarch64-linux-gnu/p11-kit-proxy.so",
	"/usr/lib64/p11-kit-proxy.so",
	"/usr/lib/p11-kit-proxy.so",
}

// P11KitModuleDirs are where p11-kit reads module registrations (the
// package and system directories; a user's ~/.config/pkcs11/modules is
// ignored for root).
var P11KitModuleDirs = []string{"/usr/share/p11-kit/modules", "/etc/pkcs11/modules"}

// P11KitLabelSuffix ends the label of every token made by NewP11Kit. The
// proxy loads the very SoftHSM2 library a SoftHSM2 token uses (one
// instance per process, reading one SOFTHSM2_CONF), so both kinds' tokens
// share one token directory and must not share labels.
const P11KitLabelSuffix = "-p11kit"

// P11KitProxy returns p11-kit-proxy.so's path, or an error saying how to
// install it.
func P11KitProxy() (string, error) {
	return firstExisting(P11KitProxyCandidates, "p11-kit-proxy.so", "p11-kit p11-kit-modules")
}

// NewP11Kit makes one SoftHSM2 token per spec, labelled spec.Label +
// P11KitLabelSuffix, to be reached through p11-kit-proxy.so: Library is the
// proxy, which finds SoftHSM2 by the module file SoftHSM2's package
// installs. The tokens are made by NewSoftHSM in dir, which must be the
// directory of the process's other SoftHSM2 tokens if it has any (see
// Dir). The proxy's SoftHSM2 reads SOFTHSM2_CONF from the environment of
// the process that loads it, like a directly loaded one.
func NewP11Kit(dir string, specs ...Spec) ([]*Token, error) {
	proxy, err := P11KitProxy()
	if err != nil {
		return nil, err
	}
	lib, err := SoftHSMLibrary()
	if err != nil {
		return nil, err
	}
	if err := softHSMRegisteredWithP11Kit(lib); err != nil {
		return nil, err
	}
	tokens := make([]*Token, len(specs))
	for i, s := range specs {
		t, err := NewSoftHSM(dir, s.Label+P11KitLabelSuffix, s.PIN)
		if err != nil {
			return nil, err
		}
		t.Kind, t.Library = P11Kit, proxy
		tokens[i] = t
	}
	return tokens, nil
}

// softHSMRegisteredWithP11Kit checks that a module file registers lib (the
// same file, whatever the path says) with p11-kit, so that a missing
// registration fails here with its cause rather than as a token not found.
func softHSMRegisteredWithP11Kit(lib string) error {
	want, err := os.Stat(lib)
	if err != nil {
		return err
	}
	for _, dir := range P11KitModuleDirs {
		files, _ := filepath.Glob(filepath.Join(dir, "*.module"))
		for _, f := range files {
			module, err := moduleOf(f)
			if err != nil || module == "" || !filepath.IsAbs(module) {
				continue
			}
			if got, err := os.Stat(module); err == nil && os.SameFile(got, want) {
				return nil
			}
		}
	}
	return fmt.Errorf("no p11-kit module file in %v registers SoftHSM2 (%s): install SoftHSM2 from its package (softhsm2), which installs softhsm2.module", P11KitModuleDirs, lib)
}

// moduleOf reads the module: setting of a p11-kit module file.
func moduleOf(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, value, ok := strings.Cut(s.Text(), ":")
		if ok && strings.TrimSpace(name) == "module" {
			return strings.TrimSpace(value), nil
		}
	}
	return "", s.Err()
}
