package e2e

import (
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// TestCryptoSuiteOnOpenBao runs the crypto suite's bodies, unchanged, on
// OpenBao v2.4.0 dev servers with the same plugin binary: onOpenBao makes
// startDevVault start `bao server -dev` and v.cli run the bao CLI. Each body
// runs on both tokens in parallel, as on Vault.
func TestCryptoSuiteOnOpenBao(t *testing.T) {
	onOpenBao(t)
	checkIsOpenBao(t)
	for _, body := range []struct {
		name string
		f    func(*testing.T, *tokentest.Token)
	}{
		{"keys_and_crypto", testKeysAndCryptoThroughVault},
		{"contexts_and_tampering", testContextsAndTamperingThroughVault},
		{"batch_of_hundred", testBatchOfHundredThroughVault},
		{"key_lifecycle_rules", testKeyLifecycleRulesThroughVault},
		{"config", testConfigThroughVault},
	} {
		t.Run(body.name, func(t *testing.T) { eachToken(t, body.f) })
	}
}

// checkIsOpenBao proves that the suite's servers are OpenBao, so that the
// suite passing cannot be Vault passing it a second time: the binary says
// it is OpenBao v2.4.0, and a server started under onOpenBao reports
// OpenBao's version in sys/seal-status and has the plugin in its catalog.
// The catalog read does not show env; the nss bodies show that it reached
// the plugin, since NSS's module lies outside the default library
// directories.
func checkIsOpenBao(t *testing.T) {
	out, err := exec.Command(baoBin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "OpenBao v2.4.0") {
		t.Fatalf("%s version: %v %q, want OpenBao v2.4.0", baoBin, err, out)
	}
	v := startDevVault(t, softHSM())
	if v.flavour != openBaoFlavour || v.bin() != baoBin {
		t.Fatalf("startDevVault under onOpenBao started %s (%s)", v.name(), v.bin())
	}
	status, resp := v.raw("GET", "sys/seal-status", "", nil)
	if status != http.StatusOK || resp["version"] != "2.4.0" {
		t.Fatalf("seal-status: %d %v, want OpenBao's version 2.4.0", status, resp)
	}
	status, resp = v.raw("GET", "sys/plugins/catalog/secret/hsmkms?version="+pluginVersion, v.token, nil)
	data, _ := resp["data"].(map[string]interface{})
	if status != http.StatusOK || data["sha256"] != pluginSHA || data["command"] != pluginName {
		t.Fatalf("catalog entry: %d %v", status, resp)
	}
	// The CLI the bodies drive is OpenBao's too.
	if out := v.cli("version"); !strings.HasPrefix(out, "OpenBao v2.4.0") {
		t.Fatalf("v.cli version: %q", out)
	}
}
