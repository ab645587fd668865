package e2e

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
	"time"
)

// Data encrypted before a restart of Vault (persistent storage, unseal, the
// same token) decrypts after it, with the plugin re-opening the HSM from its
// stored config (for NSS, init_args included).
func TestDataSurvivesVaultRestart(t *testing.T) {
	eachToken(t, testDataSurvivesVaultRestart)
}

func testDataSurvivesVaultRestart(t *testing.T, tok *tokentest.Token) {
	dataDir := t.TempDir()
	port := freePort(t)
	v, unsealKey, rootToken := startPersistentVault(t, tok, dataDir, port, "", "")
	v.registerAndMount("kms")
	v.configure("kms")
	v.cli("write", "kms/keys/durable", "type=aes256-gcm96")
	var cts []string
	for i := 1; i <= 3; i++ {
		cts = append(cts, strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms/encrypt/durable",
			"plaintext="+b64(fmt.Sprint("survives restarts ", i)), "context="+b64("ctx"))))
		if i < 3 {
			v.cli("write", "-f", "kms/keys/durable/rotate")
		}
	}
	v.cli("write", "kms/keys/signer", "type=ecdsa-p384")
	sig := strings.TrimSpace(v.cli("write", "-field=signature", "kms/sign/signer", "input="+b64("signed before")))
	v.stop()

	v2, _, _ := startPersistentVault(t, tok, dataDir, port, unsealKey, rootToken)
	for i, ct := range cts {
		out := strings.TrimSpace(v2.cli("write", "-field=plaintext", "kms/decrypt/durable", "ciphertext="+ct, "context="+b64("ctx")))
		if out != b64(fmt.Sprint("survives restarts ", i+1)) {
			t.Fatalf("version %d after restart: %q", i+1, out)
		}
	}
	if out := strings.TrimSpace(v2.cli("write", "-field=valid", "kms/verify/signer", "input="+b64("signed before"), "signature="+sig)); out != "true" {
		t.Fatalf("signature made before the restart: valid=%s", out)
	}
	if !strings.HasPrefix(strings.TrimSpace(v2.cli("write", "-field=ciphertext", "kms/encrypt/durable", "plaintext="+b64("x"))), "vault:v3:") {
		t.Fatal("the latest version after restart is not v3")
	}
	// Config and keys are both still there; the PIN still is not readable.
	if out := v2.cli("read", "-format=json", "kms/config"); strings.Contains(out, tok.PIN) {
		t.Fatal("config read shows the PIN after restart")
	}
	secret, err := v2.client.Logical().Read("kms/config")
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := secret.Data["token"].(map[string]interface{}); secret.Data["init_args"] != tok.InitArgs || info["label"] != tok.Label {
		t.Fatalf("config after restart: init_args %q, token %v", secret.Data["init_args"], secret.Data["token"])
	}
	v2.cli("write", "kms/keys/after-restart", "type=aes128-gcm96")
}

// Vault restarts a plugin process that died; the next request succeeds.
func TestPluginProcessKilledIsRestartedByVault(t *testing.T) {
	eachToken(t, testPluginProcessKilledIsRestartedByVault)
}

func testPluginProcessKilledIsRestartedByVault(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/k", "type=aes256-gcm96")
	ct := strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms/encrypt/k", "plaintext="+b64("before the crash")))

	pid := pluginPID(t, v.cmd.Process.Pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Wait until the process is gone, so the next request meets the dead plugin.
	for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(100 * time.Millisecond)
	}

	out, err := v.cliErr("write", "-field=plaintext", "kms/decrypt/k", "ciphertext="+ct)
	if err != nil {
		t.Fatalf("first request after the plugin was killed failed: %v\n%s", err, out)
	}
	if strings.TrimSpace(out) != b64("before the crash") {
		t.Fatalf("decrypt after plugin restart: %q", out)
	}
	if newPID := pluginPID(t, v.cmd.Process.Pid); newPID == pid {
		t.Fatalf("plugin pid unchanged (%d): it was not restarted", pid)
	}
}

// pluginPID finds the plugin process started by the Vault with pid parent.
func pluginPID(t *testing.T, parent int) int {
	t.Helper()
	var out []byte
	var err error
	for i := 0; i < 50; i++ {
		out, err = exec.Command("pgrep", "-P", strconv.Itoa(parent), "-f", pluginName).Output()
		if err == nil && len(strings.Fields(string(out))) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 1 {
		t.Fatalf("plugin processes under vault %d: %q (%v)", parent, out, err)
	}
	pid, err := strconv.Atoi(fields[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}
