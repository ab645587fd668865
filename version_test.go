package hsmkms

import (
	"regexp"
	"testing"
)

// semverWithV is what Vault accepts as a plugin version (scripts/lib.sh's
// check_version refuses anything else at build time).
var semverWithV = regexp.MustCompile(`^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// TestBackendReportsItsVersion: the version Vault reads from the plugin is
// the build's, and a semantic version Vault accepts (a plain `go build`
// reports v0.0.0-dev; the release test checks a version set by -ldflags).
func TestBackendReportsItsVersion(t *testing.T) {
	if !semverWithV.MatchString(version) {
		t.Fatalf("version %q is not a semantic version with a leading v", version)
	}
	if got := newBackend(nil).PluginVersion().Version; got != version {
		t.Fatalf("PluginVersion() = %q, want %q", got, version)
	}
}
