package e2e

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// usageOps are the operations a key's usage counts.
var usageOps = []string{"encrypt", "decrypt", "sign", "verify", "hmac", "datakey", "rewrap"}

// counts is what a key served, per operation.
type counts map[string]uint64

// usageRead is a key's usage as its read shows it: in all, and per
// version.
func usageRead(t *testing.T, v *vaultServer, key string) (counts, map[string]counts, string) {
	t.Helper()
	usage, _ := trustOK(t, v, "GET", "kms/keys/"+key, nil)["usage"].(map[string]interface{})
	if usage == nil {
		t.Fatalf("kms/keys/%s has no usage", key)
	}
	read := func(ops interface{}) counts {
		c := counts{}
		m, _ := ops.(map[string]interface{})
		for op, n := range m {
			var u uint64
			if _, err := fmt.Sscan(fmt.Sprint(n), &u); err != nil {
				t.Fatalf("kms/keys/%s usage: %s = %v", key, op, n)
			}
			c[op] = u
		}
		return c
	}
	perVersion := map[string]counts{}
	versions, _ := usage["versions"].(map[string]interface{})
	for ver, vu := range versions {
		perVersion[ver] = read(vu.(map[string]interface{})["operations"])
	}
	return read(usage["operations"]), perVersion, fmt.Sprint(usage["last_used"])
}

// reloadPlugin reloads the plugin's catalog entry as `vault plugin reload`
// does, which shuts each mount's backend down cleanly and starts a new
// plugin process, and waits for the old process to be gone.
func reloadPlugin(t *testing.T, v *vaultServer) {
	t.Helper()
	old := pluginPID(t, v.cmd.Process.Pid)
	trustOK(t, v, "PUT", "sys/plugins/reload/backend", map[string]interface{}{"plugin": "hsmkms"})
	waitFor(t, 30*time.Second, "the plugin process to be replaced", func() bool { return !processRunning(old) })
	if pid := pluginPID(t, v.cmd.Process.Pid); pid == old {
		t.Fatalf("plugin process %d still serves after the reload", pid)
	}
}

// usagePost sends one operation and wants a 200: every request of the
// usage tests counts.
func usagePost(t *testing.T, v *vaultServer, path string, body map[string]interface{}) map[string]interface{} {
	t.Helper()
	status, resp := v.raw("POST", "kms/"+path, v.token, body)
	data, _ := resp["data"].(map[string]interface{})
	if status != http.StatusOK || data == nil {
		t.Fatalf("POST kms/%s: %d %v", path, status, resp)
	}
	return data
}

// After 1,000 mixed requests (encrypt, a few of them batches, decrypt,
// sign, verify, hmac, datakey, rewrap) on an AES key rotated half-way, an
// EC key and an HMAC key, each key's usage counts exactly what it served,
// per operation and per version, and LIST's key_info shows the last use.
// After a clean reload of the plugin (a new process, which reads only what
// storage holds) the counts are still exact: what was counted since the
// last flush was written at the old process's clean shutdown.
func TestUsageCountersAreExactAcrossAReload(t *testing.T) {
	eachToken(t, testUsageCountersAreExactAcrossAReload)
}

func testUsageCountersAreExactAcrossAReload(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	for name, typ := range map[string]string{"aes": "aes256-gcm96", "ec": "ecdsa-p256", "mac": "hmac"} {
		trustOK(t, v, "POST", "kms/keys/"+name, map[string]interface{}{"type": typ})
	}
	want := map[string]counts{"aes": {}, "ec": {}, "mac": {}}
	// aes's uses before the rotation are version 1's, after it version 2's:
	// each request uses what was made just before it, in its half.
	wantAES := map[string]counts{"1": {}, "2": {}}
	version := "1"
	var ct, sig, mac, dk string
	input := b64("counted")
	for i := range 1000 {
		if i == 500 {
			trustOK(t, v, "POST", "kms/keys/aes/rotate", nil)
			version = "2"
		}
		var key, op string
		n := uint64(1)
		switch i % 10 {
		case 0:
			key, op = "aes", "encrypt"
			if i%100 == 0 {
				items := []interface{}{map[string]interface{}{"plaintext": input}, map[string]interface{}{"plaintext": input}, map[string]interface{}{"plaintext": input}}
				results := usagePost(t, v, "encrypt/aes", map[string]interface{}{"batch_input": items})["batch_results"].([]interface{})
				ct, n = fmt.Sprint(results[2].(map[string]interface{})["ciphertext"]), 3
			} else {
				ct = fmt.Sprint(usagePost(t, v, "encrypt/aes", map[string]interface{}{"plaintext": input})["ciphertext"])
			}
			if !strings.HasPrefix(ct, "vault:v"+version+":") {
				t.Fatalf("request %d: encrypt gave %q, want version %s", i, ct, version)
			}
		case 1:
			key, op = "aes", "decrypt"
			usagePost(t, v, "decrypt/aes", map[string]interface{}{"ciphertext": ct})
		case 2:
			key, op = "ec", "sign"
			sig = fmt.Sprint(usagePost(t, v, "sign/ec", map[string]interface{}{"input": input})["signature"])
		case 3:
			key, op = "ec", "verify"
			if usagePost(t, v, "verify/ec", map[string]interface{}{"input": input, "signature": sig})["valid"] != true {
				t.Fatalf("request %d: a signature does not verify", i)
			}
		case 4:
			key, op = "aes", "hmac"
			usagePost(t, v, "hmac/aes", map[string]interface{}{"input": input})
		case 5:
			key, op = "mac", "hmac"
			mac = fmt.Sprint(usagePost(t, v, "hmac/mac", map[string]interface{}{"input": input})["hmac"])
		case 6:
			key, op = "mac", "verify"
			if usagePost(t, v, "verify/mac", map[string]interface{}{"input": input, "hmac": mac})["valid"] != true {
				t.Fatalf("request %d: an hmac does not verify", i)
			}
		case 7:
			key, op = "aes", "datakey"
			dk = fmt.Sprint(usagePost(t, v, "datakey/wrapped/aes", map[string]interface{}{})["ciphertext"])
		case 8:
			key, op = "aes", "rewrap"
			usagePost(t, v, "rewrap/aes", map[string]interface{}{"ciphertext": ct})
		case 9:
			// datakey/decrypt counts as a decrypt.
			key, op = "aes", "decrypt"
			usagePost(t, v, "datakey/decrypt/aes", map[string]interface{}{"ciphertext": dk})
		}
		want[key][op] += n
		if key == "aes" {
			wantAES[version][op] += n
		}
	}

	check := func(when string) {
		t.Helper()
		for key, w := range want {
			got, perVersion, lastUsed := usageRead(t, v, key)
			for _, op := range usageOps {
				if got[op] != w[op] {
					t.Errorf("%s: %s's %s count is %d, want %d", when, key, op, got[op], w[op])
				}
			}
			if _, err := time.Parse(time.RFC3339Nano, lastUsed); err != nil {
				t.Errorf("%s: %s's last_used %q: %v", when, key, lastUsed, err)
			}
			if key != "aes" {
				continue
			}
			for ver, wv := range wantAES {
				for _, op := range usageOps {
					if perVersion[ver][op] != wv[op] {
						t.Errorf("%s: aes version %s's %s count is %d, want %d", when, ver, op, perVersion[ver][op], wv[op])
					}
				}
			}
		}
		_, info := listKeys(t, v, "kms", "")
		for key := range want {
			if ki, _ := info[key].(map[string]interface{}); ki == nil || ki["last_used"] == nil || ki["last_used"] == "" {
				t.Errorf("%s: LIST kms/keys key_info of %s has no last_used: %v", when, key, info[key])
			}
		}
	}
	check("after 1,000 requests")
	t.Logf("counted: %v; aes per version: %v", want, wantAES)
	reloadPlugin(t, v)
	check("after a clean reload")
	if raw, _ := os.ReadFile(v.logPath); strings.Contains(string(raw), "could not write the keys' usage") {
		t.Error("the plugin could not write the usage at its clean shutdown (see Vault's log)")
	}
}
