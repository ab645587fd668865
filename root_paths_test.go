package hsmkms

import (
	"strings"
	"testing"
)

// vaultRootPath is how Vault's router decides that a request to a mount
// needs sudo (vault/router.go, RootPath over pathsToRadix; OpenBao's is
// the same): the longest root entry that starts the path decides, matched
// exactly, or as a prefix when it ends in '*'. There is no segment
// wildcard: a '+' in a root entry is a literal '+' to the router, though
// ACL policies and the OpenAPI generator read it as one segment, which is
// how a root entry can be shown as sudo and never be enforced.
func vaultRootPath(roots []string, path string) bool {
	match, prefix, found := "", false, false
	for _, r := range roots {
		p := strings.TrimSuffix(r, "*")
		if strings.HasPrefix(path, p) && (!found || len(p) > len(match)) {
			match, prefix, found = p, strings.HasSuffix(r, "*"), true
		}
	}
	return found && (prefix || match == path)
}

// Every operation the API says needs sudo needs it in Vault: the router's
// matching, applied to the plugin's root paths, covers it, and covers none
// of the paths a key's everyday users call.
func TestSudoPathsAreRootPathsToVaultsRouter(t *testing.T) {
	b := newBackend(nil)
	roots := b.Backend.PathsSpecial.Root
	for _, r := range roots {
		if strings.Contains(r, "+") {
			t.Errorf("root path %q: Vault's router takes '+' literally, so no request ever needs sudo for it", r)
		}
	}
	for _, p := range []string{"config", "config/kek/rotate", "config/kek/trim", "tidy", "purge/app1", "purge/a.b-c_d"} {
		if b.Backend.Route(p) == nil {
			t.Errorf("%s: no such path in the plugin", p)
		}
		if !vaultRootPath(roots, p) {
			t.Errorf("%s: the API says sudo, but Vault's router would not ask for it with root paths %q", p, roots)
		}
	}
	for _, p := range []string{"keys", "keys/app1", "keys/app1/config", "keys/app1/rotate", "keys/app1/cancel_deletion",
		"keys/purge", "encrypt/app1", "decrypt/purge", "config/keys", "status"} {
		if vaultRootPath(roots, p) {
			t.Errorf("%s needs sudo with root paths %q; a key's users must not need it", p, roots)
		}
	}
	// No way to purge is left outside the root paths.
	if b.Backend.Route("keys/app1/purge") != nil {
		t.Error("keys/:name/purge still exists: Vault cannot ask sudo for it")
	}
}
