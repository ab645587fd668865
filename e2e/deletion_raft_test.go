package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// On a three-node raft cluster the purge is the active node's: the keys
// are deleted through a standby, the active node is killed (SIGKILL) in
// the middle of the window, and the new active node still has both keys
// pending with their dates; one is cancelled through the remaining standby
// and its old ciphertexts decrypt; the other is purged after its date,
// once: one purge event in all three nodes' logs, in the new active node's,
// and no object of it left on the token.
func TestDeletionOnARaftCluster(t *testing.T) {
	tok := newPrivateSoftHSM(t, "deletion", "deletion-pin-2718")
	// This process reads the private token: SoftHSM2 finds it through
	// SOFTHSM2_CONF, read at each C_Initialize.
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	nodes := startRaftCluster(t, tok, 3)
	leader, standbys := nodes[0], nodes[1:]
	leader.registerAndMount("kms")
	// Long enough for a kill and an election on a loaded machine.
	const window = 60 * time.Second
	leader.configure("kms", "deletion_window=60s")
	uuid := mountUUID(t, leader, "kms")
	leader.cli("write", "kms/keys/gone", "type=aes256-gcm96")
	leader.cli("write", "kms/keys/kept", "type=aes256-gcm96")
	var gonePairs, keptPairs []ctPair
	for i, n := range nodes {
		gonePairs = append(gonePairs, ctPair{pt: fmt.Sprint("gone, node ", i)})
		gonePairs[i].ct = encryptOnce(t, n, "gone", gonePairs[i].pt, "")
		keptPairs = append(keptPairs, ctPair{pt: fmt.Sprint("kept, node ", i)})
		keptPairs[i].ct = encryptOnce(t, n, "kept", keptPairs[i].pt, "")
	}
	ids := delIDs(t, trustOK(t, leader, "GET", "kms/keys/gone", nil))
	prefix := "hsmkms/" + uuid + "/gone/"
	readToken(t, tok, ids, prefix).wantAll(t, "gone before the delete")

	// Deleted through a standby, which forwards to the active node.
	dates := map[string]string{}
	before := time.Now().UTC().Truncate(time.Second)
	for _, name := range []string{"gone", "kept"} {
		if status, resp := standbys[0].post("kms/keys/"+name+"/deactivate", map[string]interface{}{}); status != http.StatusOK {
			t.Fatalf("deactivate %s through a standby: %d %v", name, status, resp)
		}
		status, raw, err := sendRaw(noRedirectClient, "DELETE", standbys[0].addr+"/v1/kms/keys/"+name, leader.token, nil)
		if err != nil || status != http.StatusOK || !strings.Contains(string(raw), "pending_deletion") {
			t.Fatalf("DELETE kms/keys/%s through a standby: %d %s %v", name, status, raw, err)
		}
		dates[name] = fmt.Sprint(trustOK(t, leader, "GET", "kms/keys/"+name, nil)["deletion_date"])
		if d, err := time.Parse(time.RFC3339, dates[name]); err != nil || d.Before(before.Add(window)) || d.After(time.Now().Add(window)) {
			t.Fatalf("%s: deletion_date %s (%v); want %v after its delete", name, dates[name], err, window)
		}
	}
	date, err := time.Parse(time.RFC3339, dates["gone"])
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range standbys {
		out, _ := exec.Command("pgrep", "-P", fmt.Sprint(n.cmd.Process.Pid), "-f", pluginName).Output()
		t.Logf("standby %s: plugin processes %q (a standby forwards requests and runs no mount)", n.addr, strings.Fields(string(out)))
	}

	pluginLived := killAndWatchPluginAsync(t, leader.cmd.Process.Pid, pluginPID(t, leader.cmd.Process.Pid))
	tKill := time.Now()
	var active, standby *vaultServer
	for deadline := time.Now().Add(60 * time.Second); active == nil; time.Sleep(100 * time.Millisecond) {
		for i, n := range standbys {
			if isActive(n) {
				active, standby = n, standbys[1-i]
			}
		}
		if active == nil && time.Now().After(deadline) {
			t.Fatal("no new active node within 60 s of the leader's kill")
		}
	}
	if lived := <-pluginLived; lived < 0 {
		t.Error("the killed leader's plugin did not exit within 10 s")
	}
	t.Logf("new active node %s %v after the kill", active.addr, time.Since(tKill).Round(time.Millisecond))
	if now := time.Now(); !now.Before(date) {
		t.Fatalf("the failover ended at %s, after the deletion date %s: the window must be longer for the test to say anything", now.UTC().Format(time.RFC3339), dates["gone"])
	}
	for name, want := range dates {
		var data map[string]interface{}
		waitFor(t, 30*time.Second, "the new active node to serve "+name, func() bool {
			status, resp := active.raw("GET", "kms/keys/"+name, active.token, nil)
			data, _ = resp["data"].(map[string]interface{})
			return status == http.StatusOK
		})
		if data["state"] != "pending_deletion" || data["deletion_date"] != want {
			t.Errorf("%s on the new active node: state %v deletion_date %v; want pending_deletion %s", name, data["state"], data["deletion_date"], want)
		}
	}
	readToken(t, tok, ids, prefix).wantAll(t, "gone after the failover")

	// Until the remaining standby has found the new active node it
	// redirects (307) rather than forwards.
	waitFor(t, 60*time.Second, "the remaining standby to forward to the new active node", func() bool {
		status, _, err := sendRaw(noRedirectClient, "GET", standby.addr+"/v1/kms/keys/kept", standby.token, nil)
		return err == nil && status == http.StatusOK
	})
	for _, op := range []string{"cancel_deletion", "activate"} {
		if status, resp := standby.post("kms/keys/kept/"+op, map[string]interface{}{}); status != http.StatusOK {
			t.Fatalf("%s kept through the standby: %d %v", op, status, resp)
		}
	}
	checkAllDecrypt(t, standby, "kept", keptPairs)
	checkAllDecrypt(t, active, "kept", keptPairs)

	purged := waitPurged(t, active, "kms", []string{"gone"}, date.Add(purgeWait))
	t.Logf("gone was purged %v after its deletion date", purged.Sub(date).Round(time.Second))
	readToken(t, tok, ids, prefix).wantNone(t, "gone after the purge")
	total := 0
	for i, n := range nodes {
		events := purgeEvents(t, n.logPath, "gone")
		total += len(events)
		role := map[bool]string{true: "the new active node", false: "a standby or the killed leader"}[n == active]
		t.Logf("node%d (%s): %d purge event(s) for gone", i+1, role, len(events))
		if n != active && len(events) != 0 {
			t.Errorf("node%d, not the active node, logged the purge: %q", i+1, events)
		}
		raw, err := os.ReadFile(n.logPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range pluginLines(string(raw)) {
			if strings.Contains(line, "[ERROR]") && strings.Contains(strings.ToLower(line), "purg") {
				t.Errorf("node%d logged a purge error: %s", i+1, line)
			}
		}
	}
	if total != 1 {
		t.Errorf("%d purge events for gone across the cluster's logs; want exactly one", total)
	}
	checkAllDecrypt(t, active, "kept", keptPairs)
	for _, p := range gonePairs {
		status, resp := active.post("kms/decrypt/gone", map[string]interface{}{"ciphertext": p.ct})
		if status/100 != 4 {
			t.Errorf("decrypt with the purged gone: %d %v; want a 4xx", status, resp)
		}
	}
}
