package e2e

import (
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// An operator follows a mount's life in Vault's log: every lifecycle event
// is there, as the plugin's hclog key/value pairs, once, with what names
// it (the key, the KEK version, the outage's length), and no secret (the
// PIN, a wrong PIN, a plaintext) is anywhere in the log.
func TestLifecycleEventsInVaultsLog(t *testing.T) {
	const pin, wrongPIN = "events-pin-5173", "wrong-pin-9046"
	tok := newPrivateSoftHSM(t, "events", pin)
	v := startDevVault(t, tok)
	v.configure("kms")
	const plaintext = "the plaintext of the events test"
	b64 := base64.StdEncoding.EncodeToString([]byte(plaintext))

	v.cli("write", "kms/keys/ev", "type=aes256-gcm96")
	v.cli("write", "-f", "kms/keys/ev/rotate")
	v.cli("write", "kms/encrypt/ev", "plaintext="+b64)
	v.cli("write", "kms/keys/ev/config", "deletion_allowed=true")
	v.cli("delete", "kms/keys/ev")
	v.cli("write", "-f", "kms/purge/ev")
	v.configure("kms", "deletion_window=0s")
	v.cli("write", "kms/keys/gone", "type=ecdsa-p256", "deletion_allowed=true")
	v.cli("delete", "kms/keys/gone")
	v.cli("write", "kms/keys/wrapped", "type=aes256-gcm96", "residency=wrapped")
	v.cli("write", "-f", "kms/config/kek/rotate")

	// The HSM away and back: SoftHSM finds its token again at the next
	// re-initialisation once the directory is back.
	tokenDir := softHSMTokenDir(t, tok.Dir)
	away := filepath.Join(tok.Dir, "away-"+filepath.Base(tokenDir))
	if err := os.Rename(tokenDir, away); err != nil {
		t.Fatal(err)
	}
	if status, resp := v.post("kms/encrypt/wrapped", map[string]any{"plaintext": b64}); status != http.StatusServiceUnavailable {
		os.Rename(away, tokenDir)
		t.Fatalf("encrypt with the token away: %d %v, want 503", status, resp)
	}
	if err := os.Rename(away, tokenDir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "an encrypt to succeed after the token's return", func() bool {
		status, _ := v.post("kms/encrypt/wrapped", map[string]any{"plaintext": b64})
		return status == http.StatusOK
	})

	// A config write with a PIN the token refuses: the token's refusal is
	// logged, the previous PIN is logged in again, and the write fails.
	if out, err := v.cliErr(v.configArgs("kms", withPIN(tok, wrongPIN), "deletion_window=0s")...); err == nil {
		t.Fatalf("config with a wrong PIN was accepted:\n%s", out)
	}
	v.cli("write", "kms/encrypt/wrapped", "plaintext="+b64)

	log, err := os.ReadFile(v.logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := pluginLines(string(log))
	// Vault writes a plugin's key/value pairs in an order of its own.
	for _, want := range []struct {
		event, key string
		names      []string
	}{
		{"key created", "key=ev", []string{"type=aes256-gcm96", "version=1"}},
		{"key rotated", "key=ev", []string{"version=2"}},
		{"key scheduled for deletion", "key=ev", []string{"deletion_date="}},
		{"key purged", "key=ev", nil},
		{"key deleted", "key=gone", nil},
		{"KEK rotated", "kek_version=2", nil},
		{"KEK rewrap finished", "kek_version=2", []string{"rewrapped=1"}},
		{"HSM lost", "token=label:events", nil},
		{"HSM regained", "token=label:events", []string{"outage="}},
		{"login refused", "token=label:events", []string{"retry_at="}},
		{"login resumed", "token=label:events", []string{"refused_for="}},
	} {
		var found []string
		for _, line := range matching(lines, want.event) {
			if strings.Contains(line, " "+want.key+" ") {
				found = append(found, line)
			}
		}
		if len(found) != 1 {
			t.Errorf("%d %q events naming %s in Vault's log, want one: %q", len(found), want.event, want.key, found)
			continue
		}
		for _, field := range want.names {
			if !strings.Contains(found[0], " "+field) {
				t.Errorf("the %q event does not name %s: %s", want.event, field, found[0])
			}
		}
	}
	for _, secret := range []string{pin, wrongPIN, plaintext, b64} {
		if strings.Contains(string(log), secret) {
			t.Errorf("Vault's log holds a secret (%d bytes)", len(secret))
		}
	}
	if t.Failed() {
		t.Logf("the plugin's lines in Vault's log:\n%s", strings.Join(lines, "\n"))
	}
}

// pluginLevel matches the hclog lines Vault writes for this plugin's
// logger at info, warn or error.
var pluginLevel = regexp.MustCompile(`\[(INFO|WARN|ERROR)\] +secrets\.hsmkms\.`)

func pluginLines(log string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if pluginLevel.MatchString(line) {
			out = append(out, line)
		}
	}
	return out
}

// matching returns the lines whose message is event: the text after the
// logger's name starts with it.
func matching(lines []string, event string) []string {
	var out []string
	for _, line := range lines {
		if _, msg, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(msg, event) {
			out = append(out, line)
		}
	}
	return out
}

func withPIN(tok *tokentest.Token, pin string) *tokentest.Token {
	other := *tok
	other.PIN = pin
	return &other
}

// waitFor polls cond until it holds or limit passes: the condition is a
// server's answer, which sends no signal this process could wait on.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
