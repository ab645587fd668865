package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// makeNSSToken is `hsmkms-bench make-nss-token -dir DIR -label LABEL`: it
// makes a scratch NSS softokn token in DIR with a random user PIN, writes
// the PIN to DIR/pin and NSS's C_Initialize parameter string to
// DIR/init-args (both 0600, for `vault write ... pin=@file
// init_args=@file` and the raw figures), and prints the module's path. NSS
// has no daemon and no configuration file: the parameter string is the
// whole configuration.
func makeNSSToken(args []string) error {
	fs := flag.NewFlagSet("make-nss-token", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory for the token (made if missing)")
	label := fs.String("label", "hsmkms", "token label")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("make-nss-token: -dir is required")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return err
	}
	secret := make([]byte, 12)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	pin := hex.EncodeToString(secret)
	toks, err := tokentest.NewNSS(abs, tokentest.Spec{Label: *label, PIN: pin})
	if err != nil {
		return err
	}
	tok := toks[0]
	if err := os.WriteFile(filepath.Join(abs, "pin"), []byte(pin), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(abs, "init-args"), []byte(tok.InitArgs), 0o600); err != nil {
		return err
	}
	fmt.Println(tok.Library)
	return nil
}
