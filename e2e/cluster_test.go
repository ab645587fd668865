package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// A three-node Vault cluster on integrated raft storage, every node's
// plugin on one SoftHSM2 token. A key made on the active node is used at
// once through a standby (which forwards to the active node); a decrypt
// load runs through the standbys while the active node is killed with
// SIGKILL: errors come only while a new active node is elected, and
// afterwards every ciphertext made before and after decrypts exactly, on
// the new active node and through the standby, and the keys made on the
// old leader work.
func TestRaftClusterFailover(t *testing.T) {
	tok := newPrivateSoftHSM(t, "cluster", "cluster-pin-3141")
	nodes := startRaftCluster(t, tok, 3)
	leader := nodes[0]
	leader.registerAndMount("kms")
	leader.configure("kms")

	// Made on the active node, used at once through each standby.
	leader.cli("write", "kms/keys/shared", "type=aes256-gcm96")
	leader.cli("write", "kms/keys/signer", "type=ecdsa-p256")
	var before []ctPair
	for i, n := range nodes {
		for j := 0; j < 8; j++ {
			p := ctPair{pt: fmt.Sprintf("before the failover, node %d, %d", i, j)}
			if j%2 == 0 {
				p.ctx = b64(fmt.Sprint("ctx ", j))
			}
			p.ct = encryptOnce(t, n, "shared", p.pt, p.ctx)
			before = append(before, p)
		}
	}
	for _, n := range nodes {
		checkAllDecrypt(t, n, "shared", before)
	}
	sig := signNoRedirect(t, nodes[1], "signer", "signed before the failover")

	leaderPlugin := pluginPID(t, leader.cmd.Process.Pid)
	for i, n := range nodes {
		t.Logf("node%d: %s pid %d", i+1, n.addr, n.cmd.Process.Pid)
	}
	standbys := nodes[1:]
	l := startLoad(t, []string{standbys[0].addr, standbys[1].addr}, leader.token, "shared", before, 3, true)
	time.Sleep(time.Second)

	tKill := time.Now()
	pluginLived := killAndWatchPluginAsync(t, leader.cmd.Process.Pid, leaderPlugin)
	var active *vaultServer
	var tActive time.Time
	for deadline := time.Now().Add(60 * time.Second); active == nil && time.Now().Before(deadline); {
		for _, n := range standbys {
			if isActive(n) {
				active, tActive = n, time.Now()
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if active == nil {
		l.finish()
		t.Fatal("no new active node within 60 s of the leader's kill")
	}
	recovered, ok := l.waitSuccessSentAfter(tActive, 30*time.Second)
	time.Sleep(3 * time.Second)
	samples := l.finish()
	if lived := <-pluginLived; lived < 0 {
		t.Error("the killed leader's plugin did not exit within 10 s")
	} else {
		t.Logf("the killed leader's plugin exited %v after the kill", lived.Round(time.Millisecond))
	}

	var standby *vaultServer
	for _, n := range standbys {
		if n != active {
			standby = n
		}
	}
	after := startedIn(samples, tKill, time.Time{})
	var firstErr, lastErr time.Time
	for _, s := range after {
		if s.status != 200 {
			if firstErr.IsZero() || s.end.Before(firstErr) {
				firstErr = s.end
			}
			if s.end.After(lastErr) {
				lastErr = s.end
			}
		}
	}
	t.Logf("load: %d decrypts through the standbys; before the kill %s; after it %s", len(samples),
		statusCounts(startedIn(samples, time.Time{}, tKill)), statusCounts(after))
	for _, m := range distinctMessages(after) {
		t.Logf("error after the kill: %s", m)
	}
	t.Logf("election: new active node %s seen %v after the kill; errors answered from +%s to +%s; first success of a request sent after the new active node was seen: +%s",
		active.addr, tActive.Sub(tKill).Round(time.Millisecond), durationSince(firstErr, tKill), durationSince(lastErr, tKill),
		durationSince(recovered.end, tKill))
	if !ok {
		t.Fatalf("no decrypt through a standby succeeded within 30 s of the new active node: %s", lastMessages(after, 3))
	}

	for _, s := range endedBefore(samples, tKill) {
		if s.status != 200 || s.wrong != "" {
			t.Errorf("before the kill: %s %d %s %s", s.op, s.status, s.msg, s.wrong)
		}
	}
	for _, s := range samples {
		if s.wrong != "" {
			t.Errorf("%s at +%v: wrong answer: %s", s.op, s.start.Sub(tKill).Round(time.Millisecond), s.wrong)
		}
	}
	// The election window: from the kill to the new active node, plus the
	// time a standby takes to forward to it. No error after that.
	if !lastErr.IsZero() && lastErr.After(tActive.Add(3*time.Second)) {
		t.Errorf("errors went on %v after the new active node was seen", lastErr.Sub(tActive).Round(time.Millisecond))
	}
	if tActive.Sub(tKill) > 30*time.Second {
		t.Errorf("the election took %v", tActive.Sub(tKill))
	}
	// Through each standby: once it answered after the kill, it never fails
	// again.
	for _, n := range standbys {
		var mine []sample
		for _, s := range after {
			if s.addr == n.addr {
				mine = append(mine, s)
			}
		}
		first := firstSuccessEndedAfter(mine, tKill)
		if first.IsZero() {
			t.Errorf("no decrypt through %s succeeded after the kill", n.addr)
			continue
		}
		t.Logf("through %s (active after the failover: %v): first success +%v, statuses %s", n.addr, n == active,
			first.Sub(tKill).Round(time.Millisecond), statusCounts(mine))
		for _, s := range startedIn(mine, first, time.Time{}) {
			if s.status != 200 {
				t.Errorf("decrypt through %s sent %v after its first success after the kill: %d %s", n.addr,
					s.start.Sub(first).Round(time.Millisecond), s.status, s.msg)
			}
		}
	}

	// Every ciphertext, made before and after the failover, through the new
	// active node and through the standby; the old leader's keys work.
	var afterPairs []ctPair
	for i, n := range []*vaultServer{active, standby} {
		for j := 0; j < 8; j++ {
			p := ctPair{pt: fmt.Sprintf("after the failover, node %d, %d", i, j), ctx: b64("after")}
			p.ct = encryptOnce(t, n, "shared", p.pt, p.ctx)
			afterPairs = append(afterPairs, p)
		}
	}
	all := append(append([]ctPair{}, before...), afterPairs...)
	for _, n := range []*vaultServer{active, standby} {
		checkAllDecrypt(t, n, "shared", all)
		if !verifyNoRedirect(t, n, "signer", "signed before the failover", sig) {
			t.Errorf("a signature made before the failover does not verify through %s", n.addr)
		}
		if s := signNoRedirect(t, n, "signer", "signed after"); !verifyNoRedirect(t, n, "signer", "signed after", s) {
			t.Errorf("a signature made through %s after the failover does not verify", n.addr)
		}
	}
	if status, resp := standby.post("kms/keys/shared/rotate", map[string]interface{}{}); status != 200 && status != 204 {
		t.Fatalf("rotate through the standby: %d %v", status, resp)
	}
	v2 := encryptOnce(t, standby, "shared", "version 2", "")
	if !strings.HasPrefix(v2, "vault:v2:") {
		t.Fatalf("after a rotation through the standby: %s", v2)
	}
	checkAllDecrypt(t, active, "shared", append(all, ctPair{ct: v2, pt: "version 2"}))
	t.Logf("%d ciphertexts (%d before the failover, %d after) decrypt on the new active node and through the standby",
		len(all), len(before), len(afterPairs))
}

// startRaftCluster starts n Vault servers on integrated raft storage on
// loopback, the first initialised (one key share) and active, the others
// joined to it by retry_join and unsealed, all of them voters. Every node
// uses tok's SOFTHSM2_CONF.
func startRaftCluster(t *testing.T, tok *tokentest.Token, n int) []*vaultServer {
	t.Helper()
	nodes := make([]*vaultServer, n)
	for i := range nodes {
		nodes[i] = &vaultServer{t: t, tok: tok, port: freePort(t), dataDir: t.TempDir()}
	}
	start := func(i int) {
		v := nodes[i]
		join := ""
		if i > 0 {
			join = fmt.Sprintf("retry_join {\n    leader_api_addr = \"http://127.0.0.1:%d\"\n  }", nodes[0].port)
		}
		clusterPort := freePort(t)
		if err := os.MkdirAll(filepath.Join(v.dataDir, "raft"), 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(v.dataDir, "vault.hcl")
		writeFile(t, cfg, fmt.Sprintf(`
plugin_directory = %q
disable_mlock = true
api_addr = "http://127.0.0.1:%d"
cluster_addr = "https://127.0.0.1:%d"
storage "raft" {
  path = %q
  node_id = "node%d"
  performance_multiplier = 1
  %s
}
listener "tcp" {
  address = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable = true
}
`, pluginDir, v.port, clusterPort, filepath.Join(v.dataDir, "raft"), i+1, join, v.port, clusterPort))
		v.start(v.dataDir, "server", "-config="+cfg)
	}

	start(0)
	leader := nodes[0]
	out := leader.cli("operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
	var init struct {
		Keys      []string `json:"unseal_keys_b64"`
		RootToken string   `json:"root_token"`
	}
	if err := json.Unmarshal([]byte(out), &init); err != nil {
		t.Fatalf("operator init: %v: %s", err, out)
	}
	unsealKey := init.Keys[0]
	for _, v := range nodes {
		v.token = init.RootToken
	}
	leader.client.SetToken(init.RootToken)
	unsealNode(t, leader, unsealKey)
	leader.waitActive()
	// Joined nodes become voters once they have been healthy for the
	// stabilization time (10 s by default).
	leader.cli("write", "sys/storage/raft/autopilot/configuration", "server_stabilization_time=1s")
	for i := 1; i < n; i++ {
		start(i)
		nodes[i].client.SetToken(init.RootToken)
	}
	for _, v := range nodes[1:] {
		unsealNode(t, v, unsealKey)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		voters, standbys := 0, 0
		var conf struct {
			Data struct {
				Config struct {
					Servers []struct {
						NodeID string `json:"node_id"`
						Voter  bool   `json:"voter"`
					} `json:"servers"`
				} `json:"config"`
			} `json:"data"`
		}
		if status, raw, err := sendRaw(http.DefaultClient, "GET", leader.addr+"/v1/sys/storage/raft/configuration", leader.token, nil); err == nil && status == 200 && json.Unmarshal(raw, &conf) == nil {
			for _, s := range conf.Data.Config.Servers {
				if s.Voter {
					voters++
				}
			}
		}
		for _, v := range nodes[1:] {
			if knowsLeader(v, leader.addr) {
				standbys++
			}
		}
		if voters == n && standbys == n-1 {
			return nodes
		}
		if time.Now().After(deadline) {
			t.Fatalf("raft cluster not formed within 60 s: %d voters of %d, %d standbys know the leader (%+v)", voters, n, standbys, conf.Data.Config.Servers)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// unsealNode gives v the unseal key until it says it is unsealed (a node
// joining by retry_join answers the leader's challenge with it first).
func unsealNode(t *testing.T, v *vaultServer, key string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"key": key})
	var last string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		var st struct {
			Sealed bool `json:"sealed"`
		}
		status, raw, err := sendRaw(http.DefaultClient, "GET", v.addr+"/v1/sys/seal-status", "", nil)
		if err == nil && status == 200 && json.Unmarshal(raw, &st) == nil && !st.Sealed {
			return
		}
		status, raw, err = sendRaw(http.DefaultClient, "PUT", v.addr+"/v1/sys/unseal", "", body)
		last = fmt.Sprintf("%d %s %v", status, raw, err)
	}
	t.Fatalf("%s did not unseal within 60 s: %s", v.addr, last)
}

// knowsLeader reports whether v is a standby that names leaderAddr as the
// active node.
func knowsLeader(v *vaultServer, leaderAddr string) bool {
	var leader struct {
		IsSelf        bool   `json:"is_self"`
		LeaderAddress string `json:"leader_address"`
	}
	status, raw, err := sendRaw(http.DefaultClient, "GET", v.addr+"/v1/sys/leader", "", nil)
	return err == nil && status == 200 && json.Unmarshal(raw, &leader) == nil && !leader.IsSelf && leader.LeaderAddress == leaderAddr
}

// isActive reports whether v is the active node of its cluster.
func isActive(v *vaultServer) bool {
	var leader struct {
		IsSelf bool `json:"is_self"`
	}
	if status, raw, err := sendRaw(http.DefaultClient, "GET", v.addr+"/v1/sys/leader", "", nil); err != nil || status != 200 ||
		json.Unmarshal(raw, &leader) != nil {
		return false
	}
	return leader.IsSelf
}

// killAndWatchPluginAsync kills the Vault process vaultPID and reports on
// the channel how long its plugin process pid lived on (-1: more than 10 s).
func killAndWatchPluginAsync(t *testing.T, vaultPID, pid int) <-chan time.Duration {
	t.Helper()
	if err := syscall.Kill(vaultPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	tKill := time.Now()
	out := make(chan time.Duration, 1)
	go func() {
		for time.Since(tKill) < 10*time.Second {
			if !processRunning(pid) {
				out <- time.Since(tKill)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		out <- -1
	}()
	return out
}

// signNoRedirect signs input with key through v (a standby forwards it).
func signNoRedirect(t *testing.T, v *vaultServer, key, input string) string {
	t.Helper()
	status, resp := v.post("kms/sign/"+key, map[string]interface{}{"input": b64(input)})
	if status != 200 {
		t.Fatalf("sign with %s through %s: %d %v", key, v.addr, status, resp)
	}
	return resp["data"].(map[string]interface{})["signature"].(string)
}

func verifyNoRedirect(t *testing.T, v *vaultServer, key, input, sig string) bool {
	t.Helper()
	status, resp := v.post("kms/verify/"+key, map[string]interface{}{"input": b64(input), "signature": sig})
	if status != 200 {
		t.Fatalf("verify with %s through %s: %d %v", key, v.addr, status, resp)
	}
	return resp["data"].(map[string]interface{})["valid"] == true
}
