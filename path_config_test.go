package hsmkms

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestConfigReadNeverShowsPIN(t *testing.T) {
	m := configuredMount(t, nil)
	resp := m.mustOK(logical.ReadOperation, "config", nil)
	if _, ok := resp.Data["pin"]; ok {
		t.Fatal("config read returned the pin field")
	}
	if strings.Contains(dump(resp.Data), testToken.PIN) {
		t.Fatal("config read contains the PIN's value")
	}
	token, ok := resp.Data["token"].(map[string]interface{})
	if !ok || token["label"] != testToken.Label || token["manufacturer"] == "" {
		t.Fatalf("token description: %v", resp.Data["token"])
	}
	for field, want := range map[string]interface{}{"pool_size": 16, "max_keys": 20, "max_plaintext_bytes": 4096, "default_key": "default"} {
		if resp.Data[field] != want {
			t.Errorf("%s = %v, want %v", field, resp.Data[field], want)
		}
	}
	if resp.Data["pin_set"] != true {
		t.Errorf("pin_set = %v", resp.Data["pin_set"])
	}
}

func TestConfigWrongPINKeepsPreviousConfig(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "keys/k", nil)
	ct := encrypt(t, m, "k", "before", nil)

	m.mustFail(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": "0000",
	}, "the token refused the PIN")
	m.mustFail(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": "no-such-token", "pin": testToken.PIN,
	}, "no token labelled")

	if got := decrypt(t, m, "k", ct, nil); got != "before" {
		t.Fatalf("after refused configs, decrypt gave %q", got)
	}
	resp := m.mustOK(logical.ReadOperation, "config", nil)
	if resp.Data["token_label"] != testToken.Label {
		t.Fatalf("stored config changed: %v", resp.Data)
	}
}

// Two mounts share one process (ServeMultiplex): the second naming the same
// token with another PIN is refused although the process is logged in.
func TestSecondMountWithWrongPINIsRefused(t *testing.T) {
	first := configuredMount(t, nil)
	second := newMount(t)
	second.mustFail(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": "1111",
	}, "the token refused the PIN")
	second.mustOK(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN,
	})
	// Closing one mount keeps the other's login.
	second.b.clean(t.Context())
	first.mustOK(logical.UpdateOperation, "keys/after-close", nil)
	encrypt(t, first, "after-close", "x", nil)
}

func TestConfigTuningKeepsPIN(t *testing.T) {
	m := configuredMount(t, nil)
	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{"pool_size": 4, "max_keys": 7})
	resp := m.mustOK(logical.ReadOperation, "config", nil)
	if resp.Data["pool_size"] != 4 || resp.Data["max_keys"] != 7 {
		t.Fatalf("tuned config: %v", resp.Data)
	}
	// Changing the token needs the PIN again.
	m.mustFail(logical.UpdateOperation, "config", map[string]interface{}{"token_label": otherToken.Label}, "pin is required")
}

func TestConfigRejectsBadValues(t *testing.T) {
	m := newMount(t)
	base := func(extra map[string]interface{}) map[string]interface{} {
		d := map[string]interface{}{"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN}
		for k, v := range extra {
			d[k] = v
		}
		return d
	}
	m.mustFail(logical.UpdateOperation, "config", base(map[string]interface{}{"pool_size": 0}), "pool_size")
	m.mustFail(logical.UpdateOperation, "config", base(map[string]interface{}{"max_keys": -1}), "max_keys")
	m.mustFail(logical.UpdateOperation, "config", base(map[string]interface{}{"max_plaintext_bytes": 0}), "max_plaintext_bytes")
	m.mustFail(logical.UpdateOperation, "config", base(map[string]interface{}{"default_key": "../x"}), "default_key")
	m.mustFail(logical.UpdateOperation, "config", base(map[string]interface{}{"default_residency": "cloud"}), "default_residency")
	m.mustFail(logical.UpdateOperation, "config", base(map[string]interface{}{"slot": 0}), "not both")
	m.mustFail(logical.UpdateOperation, "config", map[string]interface{}{"token_label": "x", "pin": "1"}, "library is required")
	m.mustFail(logical.UpdateOperation, "config", map[string]interface{}{"library": testToken.Library, "token_label": testToken.Label}, "pin is required")
	if resp, _ := m.do(logical.ReadOperation, "config", nil); resp != nil {
		t.Fatalf("refused writes stored a config: %v", resp.Data)
	}
	// Crypto before any config says what to do.
	m.mustFail(logical.UpdateOperation, "keys/k", nil, "write the config path first")
}

func TestConfigLibraryAllowList(t *testing.T) {
	allowedDir := t.TempDir()
	outside := t.TempDir()
	evil := filepath.Join(outside, "evil.so")
	if err := os.WriteFile(evil, []byte("not a module"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A symlink inside the allowed directory that points out of it.
	if err := os.Symlink(evil, filepath.Join(allowedDir, "lib.so")); err != nil {
		t.Fatal(err)
	}
	// A symlink outside that points at SoftHSM inside the allowed list.
	realLib, err := filepath.EvalSymlinks(testToken.Library)
	if err != nil {
		t.Fatal(err)
	}
	inward := filepath.Join(outside, "softhsm-link.so")
	if err := os.Symlink(realLib, inward); err != nil {
		t.Fatal(err)
	}
	m := newMountWithAllowList(t, []string{allowedDir, filepath.Dir(realLib)})
	try := func(lib string) map[string]interface{} {
		return map[string]interface{}{"library": lib, "token_label": testToken.Label, "pin": testToken.PIN}
	}
	m.mustFail(logical.UpdateOperation, "config", try("/tmp/evil.so"), "does not exist")
	m.mustFail(logical.UpdateOperation, "config", try(evil), "outside the directories")
	m.mustFail(logical.UpdateOperation, "config", try("evil.so"), "not an absolute path")
	m.mustFail(logical.UpdateOperation, "config", try("../../usr/lib/softhsm/libsofthsm2.so"), "not an absolute path")
	m.mustFail(logical.UpdateOperation, "config", try(filepath.Join(allowedDir, "lib.so")), "outside the directories")
	m.mustFail(logical.UpdateOperation, "config", try(allowedDir), "not a regular file")
	m.mustOK(logical.UpdateOperation, "config", try(inward))
}

func TestCheckLibraryPathPrefixIsNotEnough(t *testing.T) {
	root := t.TempDir()
	allowed := filepath.Join(root, "pkcs11")
	sibling := filepath.Join(root, "pkcs11-evil")
	for _, d := range []string{allowed, sibling} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lib := filepath.Join(sibling, "x.so")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := checkLibraryPath(lib, []string{allowed}); err == nil {
		t.Fatal("a sibling directory sharing the allowed prefix was accepted")
	}
}

func TestLibraryAllowListFromEnvironment(t *testing.T) {
	t.Setenv(LibraryDirsEnv, "/opt/hsm/lib:/usr/lib/pkcs11")
	dirs, err := libraryAllowList()
	if err != nil || len(dirs) != 2 || dirs[0] != "/opt/hsm/lib" {
		t.Fatalf("dirs %v err %v", dirs, err)
	}
	t.Setenv(LibraryDirsEnv, "relative/dir")
	if _, err := libraryAllowList(); err == nil {
		t.Fatal("a relative directory was accepted")
	}
}

func TestPathHelpOnEveryPathAndField(t *testing.T) {
	m := newMount(t)
	for _, p := range m.b.Paths {
		if p.HelpSynopsis == "" || p.HelpDescription == "" {
			t.Errorf("path %q has no help", p.Pattern)
		}
		for name, f := range p.Fields {
			if f.Description == "" {
				t.Errorf("path %q field %q has no description", p.Pattern, name)
			}
		}
	}
	resp, err := m.do(logical.HelpOperation, "encrypt/x", nil)
	if err != nil || resp == nil || !strings.Contains(dump(resp.Data), "encrypt") {
		t.Fatalf("path-help encrypt: %v %v", err, resp)
	}
}
