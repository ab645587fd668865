//go:build !hsmkms_crashpoints

package keyring

import "time"

// crashPoint marks a place where the e2e tests kill the plugin (see
// crashpoint_on.go); a release build never stops there.
func crashPoint(string) {}

// RollbackMinAge is how old a WAL entry must be before the rollback
// touches it.
func RollbackMinAge() time.Duration { return WALRollbackMinAge }
