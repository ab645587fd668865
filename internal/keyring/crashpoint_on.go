//go:build hsmkms_crashpoints

package keyring

import (
	"os"
	"syscall"
	"time"
)

// crashPoint kills the plugin process with SIGKILL when HSMKMS_CRASH_AT
// names this point: a build for the e2e tests (-tags hsmkms_crashpoints),
// which prove on a real Vault what a kill -9 at that moment leaves behind.
func crashPoint(name string) {
	if os.Getenv("HSMKMS_CRASH_AT") == name {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
}

// RollbackMinAge lets the e2e tests lower the WAL rollback's minimum age
// (HSMKMS_WAL_ROLLBACK_MIN_AGE, a Go duration), so that Vault's rollback,
// which runs once a minute, rolls a crash back within the test.
func RollbackMinAge() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("HSMKMS_WAL_ROLLBACK_MIN_AGE")); err == nil && d > 0 {
		return d
	}
	return WALRollbackMinAge
}
