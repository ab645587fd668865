package tokentest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// NSSLibraryCandidates are where Debian and others install NSS's software
// token (package libnss3).
var NSSLibraryCandidates = []string{
	"/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
	"/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
	"/usr/lib64/libsoftokn3.so",
	"/usr/lib/libsoftokn3.so",
}

// NSSLibrary returns NSS softokn's path, or an error saying how to install
// it.
func NSSLibrary() (string, error) {
	return firstExisting(NSSLibraryCandidates, "NSS softokn", "libnss3")
}

// nssFirstSlot is the slot id of the first extra token in the parameter
// string; NSS keeps 1 to 3 for its own internal slots.
const nssFirstSlot = 4

// NSSInitArgs is the C_Initialize parameter string for NSS tokens in the
// given database directories, labelled with the given labels, in slots 4,
// 5, ... NSS has no configuration file: the string is the whole config.
func NSSInitArgs(dirs, labels []string) string {
	var tokens []string
	for i := range dirs {
		tokens = append(tokens, fmt.Sprintf("0x%x=[configdir='sql:%s' tokenDescription='%s']", nssFirstSlot+i, dirs[i], labels[i]))
	}
	return fmt.Sprintf("configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags='' tokens=<%s>",
		dirs[0], strings.Join(tokens, " "))
}

// NewNSS makes one NSS softokn token per spec, each a database directory
// under dir, and sets each user PIN through PKCS#11 alone: a new NSS token
// takes an SO login with an empty PIN, then C_InitPIN. Every token returned
// carries the one parameter string that describes them all.
func NewNSS(dir string, specs ...Spec) ([]*Token, error) {
	lib, err := NSSLibrary()
	if err != nil {
		return nil, err
	}
	dirs := make([]string, len(specs))
	labels := make([]string, len(specs))
	for i, s := range specs {
		dirs[i] = filepath.Join(dir, s.Label)
		labels[i] = s.Label
		if err := os.MkdirAll(dirs[i], 0o700); err != nil {
			return nil, err
		}
	}
	args := NSSInitArgs(dirs, labels)
	p := pkcs11.New(lib)
	if p == nil {
		return nil, fmt.Errorf("loading %s failed", lib)
	}
	defer p.Destroy()
	cargs := append([]byte(args), 0)
	if err := p.Initialize(pkcs11.InitializeWithReserved(unsafe.Pointer(&cargs[0]))); err != nil {
		return nil, fmt.Errorf("NSS C_Initialize: %w", err)
	}
	defer p.Finalize()
	tokens := make([]*Token, len(specs))
	for i, s := range specs {
		if err := initNSSPIN(p, uint(nssFirstSlot+i), s.PIN); err != nil {
			return nil, fmt.Errorf("NSS token %s: %w", s.Label, err)
		}
		tokens[i] = &Token{Kind: NSS, Dir: dirs[i], Library: lib, Label: s.Label, PIN: s.PIN, InitArgs: args}
	}
	return tokens, nil
}

func initNSSPIN(p *pkcs11.Ctx, slot uint, pin string) error {
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("C_OpenSession: %w", err)
	}
	defer p.CloseSession(sh)
	if err := p.Login(sh, pkcs11.CKU_SO, ""); err != nil {
		return fmt.Errorf("SO login: %w", err)
	}
	if err := p.InitPIN(sh, pin); err != nil {
		return fmt.Errorf("C_InitPIN: %w", err)
	}
	return p.Logout(sh)
}
