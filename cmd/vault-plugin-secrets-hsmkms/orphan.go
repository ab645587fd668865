package main

import (
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// orphanCheckInterval is how often the plugin looks for its Vault.
const orphanCheckInterval = time.Second

// exitWhenOrphaned ends the plugin when the Vault process that started it
// is gone (killed with SIGKILL, say): the plugin is then re-parented, and
// nobody would ever stop it. It would stay logged in to the HSM and hold
// sessions. The PKCS#11 modules are finalised first, which closes every
// session and logs out.
func exitWhenOrphaned(logger hclog.Logger) {
	parent := os.Getppid()
	go func() {
		for range time.Tick(orphanCheckInterval) {
			if os.Getppid() != parent {
				logger.Warn("Vault, the parent process, is gone; closing HSM sessions and exiting", "parent_pid", parent)
				hsm.Shutdown()
				os.Exit(0)
			}
		}
	}()
}
