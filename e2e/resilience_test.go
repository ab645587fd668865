package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The token's files disappear for 5 s under a steady encrypt/decrypt load,
// as when a network HSM drops off, and come back: clients get 503 and
// nothing else meanwhile, the mount heals by itself within about a second
// of the token's return (no reload, no config write, the same plugin
// process), and every ciphertext made before or during the outage decrypts.
func TestTokenDirectoryAwayUnderLoad(t *testing.T) {
	tok := newPrivateSoftHSM(t, "away", "away-pin-8642")
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/load", "type=aes256-gcm96")
	before := makeCiphertexts(t, v, "load", 20)
	pid := pluginPID(t, v.cmd.Process.Pid)

	// SoftHSM reads every directory under its tokens directory as a token
	// at C_Initialize, so a sibling inside it would be found again at the
	// first re-initialisation: the token goes next to the tokens directory.
	tokenDir := softHSMTokenDir(t, tok.Dir)
	away := filepath.Join(tok.Dir, "away-"+filepath.Base(tokenDir))
	restored := false
	t.Cleanup(func() {
		if !restored {
			_ = os.Rename(away, tokenDir)
		}
	})

	l := startLoad(t, []string{v.addr}, v.token, "load", before, 3, false)
	time.Sleep(time.Second)
	tAway := time.Now()
	if err := os.Rename(tokenDir, away); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	tBack := time.Now()
	if err := os.Rename(away, tokenDir); err != nil {
		t.Fatal(err)
	}
	restored = true
	recovered, ok := l.waitSuccessSentAfter(tBack, 15*time.Second)
	time.Sleep(2 * time.Second)
	samples := l.finish()

	t.Logf("load: %d requests; before the outage %s; token away (by start) %s; after its return %s",
		len(samples), statusCounts(startedIn(samples, time.Time{}, tAway)),
		statusCounts(startedIn(samples, tAway, tBack)), statusCounts(startedIn(samples, tBack, time.Time{})))
	t.Logf("plugin log: %s", pluginLogSummary(t, v))
	if !ok {
		t.Fatalf("no request sent after the token's return succeeded within 15 s (statuses after it: %s; last: %s)",
			statusCounts(startedIn(samples, tBack, time.Time{})), lastMessages(startedIn(samples, tBack, time.Time{}), 3))
	}
	recovery := recovered.end.Sub(tBack)
	anyAfter := firstSuccessEndedAfter(samples, tBack)
	t.Logf("recovery: first success of a request sent after the token's return %v after it (sent at +%v); first success answered after the return: +%v",
		recovery.Round(time.Millisecond), recovered.start.Sub(tBack).Round(time.Millisecond), anyAfter.Sub(tBack).Round(time.Millisecond))
	t.Logf("outage: longest request %v; successes during it %d",
		longest(startedIn(samples, tAway, tBack)).Round(time.Millisecond), count(startedIn(samples, tAway, tBack), 200))

	for _, s := range endedBefore(samples, tAway) {
		if s.status != 200 || s.wrong != "" {
			t.Errorf("before the outage: %s %d %s %s", s.op, s.status, s.msg, s.wrong)
		}
	}
	for _, s := range samples {
		switch {
		case s.wrong != "":
			t.Errorf("%s at +%v: wrong answer: %s", s.op, s.start.Sub(tAway).Round(time.Millisecond), s.wrong)
		case s.status != 200 && s.status != http.StatusServiceUnavailable:
			t.Errorf("%s at +%v: %d %s, want 200 or 503", s.op, s.start.Sub(tAway).Round(time.Millisecond), s.status, s.msg)
		}
	}
	if n := count(startedIn(samples, tAway, tBack), http.StatusServiceUnavailable); n == 0 {
		t.Errorf("no request got a 503 while the token was away: the outage was not seen")
	}
	if recovery > 3*time.Second {
		t.Errorf("recovery took %v after the token's return, want under 3 s", recovery)
	}
	for _, s := range startedIn(samples, recovered.end, time.Time{}) {
		if s.status != 200 {
			t.Errorf("%s sent %v after the recovery: %d %s", s.op, s.start.Sub(recovered.end).Round(time.Millisecond), s.status, s.msg)
		}
	}
	if now := pluginPID(t, v.cmd.Process.Pid); now != pid {
		t.Errorf("plugin pid %d, was %d: the mount was healed by a new process, not by itself", now, pid)
	}
	all := append(append([]ctPair{}, before...), l.made...)
	checkAllDecrypt(t, v, "load", all)
	t.Logf("%d ciphertexts (%d made before the load, %d during it) decrypt after the outage", len(all), len(before), len(l.made))
}

// SIGKILL of the plugin process under load: clients may get errors until
// Vault has started a new one, then requests succeed again and every
// ciphertext made before decrypts. No good request gets a 4xx or a wrong
// plaintext.
func TestPluginKilledUnderLoad(t *testing.T) {
	tok := newPrivateSoftHSM(t, "killed", "killed-pin-9753")
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/load", "type=aes256-gcm96")
	before := makeCiphertexts(t, v, "load", 20)
	pid := pluginPID(t, v.cmd.Process.Pid)

	l := startLoad(t, []string{v.addr}, v.token, "load", before, 3, false)
	time.Sleep(time.Second)
	tKill := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	recovered, ok := l.waitSuccessSentAfter(tKill, 30*time.Second)
	time.Sleep(2 * time.Second)
	samples := l.finish()

	after := startedIn(samples, tKill, time.Time{})
	t.Logf("load: %d requests; before the kill %s; after it %s", len(samples),
		statusCounts(startedIn(samples, time.Time{}, tKill)), statusCounts(after))
	for _, m := range distinctMessages(after) {
		t.Logf("error after the kill: %s", m)
	}
	if !ok {
		t.Fatalf("no request sent after the kill succeeded within 30 s: %s", lastMessages(after, 3))
	}
	var lastErr time.Time
	for _, s := range after {
		if s.status != 200 && s.end.After(lastErr) {
			lastErr = s.end
		}
	}
	t.Logf("first success of a request sent after the kill: %v after it; last error answered at +%v; longest request after the kill %v",
		recovered.end.Sub(tKill).Round(time.Millisecond), durationSince(lastErr, tKill), longest(after).Round(time.Millisecond))

	for _, s := range endedBefore(samples, tKill) {
		if s.status != 200 || s.wrong != "" {
			t.Errorf("before the kill: %s %d %s %s", s.op, s.status, s.msg, s.wrong)
		}
	}
	for _, s := range samples {
		switch {
		case s.wrong != "":
			t.Errorf("%s at +%v: wrong answer: %s", s.op, s.start.Sub(tKill).Round(time.Millisecond), s.wrong)
		case s.status == 0:
			t.Errorf("%s at +%v: no answer from Vault: %s", s.op, s.start.Sub(tKill).Round(time.Millisecond), s.msg)
		case s.status >= 400 && s.status < 500:
			t.Errorf("%s at +%v: %d %s for a good request", s.op, s.start.Sub(tKill).Round(time.Millisecond), s.status, s.msg)
		}
	}
	if recovered.end.Sub(tKill) > 15*time.Second {
		t.Errorf("requests succeeded again only %v after the kill", recovered.end.Sub(tKill))
	}
	// Once a request succeeded on the new process, none fails.
	for _, s := range startedIn(samples, recovered.end, time.Time{}) {
		if s.status != 200 {
			t.Errorf("%s sent %v after the first success on the new process: %d %s", s.op,
				s.start.Sub(recovered.end).Round(time.Millisecond), s.status, s.msg)
		}
	}
	if now := pluginPID(t, v.cmd.Process.Pid); now == pid {
		t.Errorf("plugin pid unchanged (%d): it was not restarted", pid)
	}
	all := append(append([]ctPair{}, before...), l.made...)
	checkAllDecrypt(t, v, "load", all)
	t.Logf("%d ciphertexts (%d made before the load, %d during it) decrypt after the restart", len(all), len(before), len(l.made))
}

// softHSMTokenDir is the one token directory (a UUID) under dir/tokens.
func softHSMTokenDir(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "tokens"))
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(dir, "tokens", e.Name()))
		}
	}
	if len(dirs) != 1 {
		t.Fatalf("token directories under %s: %v, want one", dir, dirs)
	}
	return dirs[0]
}

// ctPair is a ciphertext with what it must decrypt to.
type ctPair struct{ ct, pt, ctx string }

// makeCiphertexts encrypts n plaintexts with key, half of them with a
// context.
func makeCiphertexts(t *testing.T, v *vaultServer, key string, n int) []ctPair {
	t.Helper()
	var out []ctPair
	for i := 0; i < n; i++ {
		p := ctPair{pt: fmt.Sprintf("made before, %d, at %d", i, time.Now().UnixNano())}
		if i%2 == 1 {
			p.ctx = b64(fmt.Sprint("context ", i))
		}
		p.ct = encryptOnce(t, v, key, p.pt, p.ctx)
		out = append(out, p)
	}
	return out
}

func encryptOnce(t *testing.T, v *vaultServer, key, pt, ctx string) string {
	t.Helper()
	body := map[string]interface{}{"plaintext": b64(pt)}
	if ctx != "" {
		body["context"] = ctx
	}
	status, resp := v.post("kms/encrypt/"+key, body)
	if status != 200 {
		t.Fatalf("encrypt with %s on %s: %d %v", key, v.addr, status, resp)
	}
	return resp["data"].(map[string]interface{})["ciphertext"].(string)
}

// checkAllDecrypt decrypts every pair through v, in batches of 100, and
// fails t for any that does not give exactly its plaintext.
func checkAllDecrypt(t *testing.T, v *vaultServer, key string, pairs []ctPair) {
	t.Helper()
	for start := 0; start < len(pairs); start += 100 {
		end := min(start+100, len(pairs))
		var items []map[string]interface{}
		for _, p := range pairs[start:end] {
			item := map[string]interface{}{"ciphertext": p.ct}
			if p.ctx != "" {
				item["context"] = p.ctx
			}
			items = append(items, item)
		}
		status, resp := v.post("kms/decrypt/"+key, map[string]interface{}{"batch_input": items})
		if status != 200 {
			t.Fatalf("decrypting %d ciphertexts through %s: %d %v", len(items), v.addr, status, resp)
		}
		results, _ := resp["data"].(map[string]interface{})["batch_results"].([]interface{})
		if len(results) != len(items) {
			t.Fatalf("decrypt batch through %s: %d results for %d items", v.addr, len(results), len(items))
		}
		for i, r := range results {
			m, _ := r.(map[string]interface{})
			p := pairs[start+i]
			if got, _ := base64.StdEncoding.DecodeString(fmt.Sprint(m["plaintext"])); string(got) != p.pt {
				t.Errorf("%s through %s: %q (error %v), want %q", p.ct, v.addr, got, m["error"], p.pt)
			}
		}
	}
}

// sample is one request of a load.
type sample struct {
	op, addr   string
	start, end time.Time
	status     int    // 0 when no HTTP answer came
	msg        string // the response's errors, or the transport error
	wrong      string // what was wrong with a 200 answer
}

// cryptoLoad runs a few workers against one key: each decrypts a random
// ciphertext made before the load and, unless decryptOnly, encrypts a new
// plaintext and decrypts what it got. Every request is recorded.
type cryptoLoad struct {
	token, key  string
	before      []ctPair
	decryptOnly bool
	client      *http.Client
	stop        chan struct{}
	stopOnce    sync.Once
	wg          sync.WaitGroup

	mu      sync.Mutex
	samples []sample
	made    []ctPair // ciphertexts the load got (read after finish)
}

func startLoad(t *testing.T, addrs []string, token, key string, before []ctPair, workers int, decryptOnly bool) *cryptoLoad {
	l := &cryptoLoad{
		token: token, key: key, before: before, decryptOnly: decryptOnly,
		client: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}, CheckRedirect: noRedirects},
		stop:   make(chan struct{}),
	}
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go l.work(w, addrs[w%len(addrs)])
	}
	t.Cleanup(func() { l.finish() })
	return l
}

// finish stops the workers and returns every sample, in start order.
func (l *cryptoLoad) finish() []sample {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]sample(nil), l.samples...)
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out
}

func (l *cryptoLoad) work(w int, addr string) {
	defer l.wg.Done()
	rng := rand.New(rand.NewSource(int64(w)))
	for i := 0; ; i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		l.decrypt(addr, l.before[rng.Intn(len(l.before))])
		if l.decryptOnly {
			continue
		}
		p := ctPair{pt: fmt.Sprintf("load %d/%d", w, i)}
		if i%3 == 0 {
			p.ctx = b64(fmt.Sprint("load context ", w))
		}
		if p.ct = l.encrypt(addr, p); p.ct != "" {
			l.mu.Lock()
			l.made = append(l.made, p)
			l.mu.Unlock()
			l.decrypt(addr, p)
		}
	}
}

func (l *cryptoLoad) encrypt(addr string, p ctPair) string {
	body := map[string]interface{}{"plaintext": b64(p.pt)}
	if p.ctx != "" {
		body["context"] = p.ctx
	}
	s, data := l.do(addr, "encrypt", body)
	ct, _ := data["ciphertext"].(string)
	if s.status == 200 && !strings.HasPrefix(ct, "vault:v1:") {
		s.wrong = fmt.Sprintf("encrypt answered ciphertext %q", ct)
		ct = ""
	}
	if s.status != 200 {
		ct = ""
	}
	l.record(s)
	return ct
}

func (l *cryptoLoad) decrypt(addr string, p ctPair) {
	body := map[string]interface{}{"ciphertext": p.ct}
	if p.ctx != "" {
		body["context"] = p.ctx
	}
	s, data := l.do(addr, "decrypt", body)
	if s.status == 200 {
		got, err := base64.StdEncoding.DecodeString(fmt.Sprint(data["plaintext"]))
		if err != nil || string(got) != p.pt {
			s.wrong = fmt.Sprintf("%s decrypted to %q, want %q", p.ct, got, p.pt)
		}
	}
	l.record(s)
}

func (l *cryptoLoad) record(s sample) {
	l.mu.Lock()
	l.samples = append(l.samples, s)
	l.mu.Unlock()
}

// do sends one operation and returns its sample (not yet recorded) and
// the response's data.
func (l *cryptoLoad) do(addr, op string, body map[string]interface{}) (sample, map[string]interface{}) {
	b, _ := json.Marshal(body)
	s := sample{op: op, addr: addr, start: time.Now()}
	status, raw, err := sendRaw(l.client, "POST", addr+"/v1/kms/"+op+"/"+l.key, l.token, b)
	s.end, s.status = time.Now(), status
	if err != nil {
		s.msg = err.Error()
		return s, nil
	}
	var resp struct {
		Data   map[string]interface{} `json:"data"`
		Errors []string               `json:"errors"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil && status == 200 {
		s.wrong = fmt.Sprintf("undecodable 200 body %q", tail(string(raw), 200))
	}
	if status != 200 {
		s.msg = strings.Join(resp.Errors, "; ")
		if s.msg == "" {
			s.msg = tail(string(raw), 300)
		}
		s.msg = strings.Join(strings.Fields(s.msg), " ")
	}
	return s, resp.Data
}

// waitSuccessSentAfter waits, at most limit, for a request sent after t0
// to succeed, and returns the first one (by answer time).
func (l *cryptoLoad) waitSuccessSentAfter(t0 time.Time, limit time.Duration) (sample, bool) {
	deadline := time.Now().Add(limit)
	for {
		l.mu.Lock()
		var first sample
		found := false
		for _, s := range l.samples {
			if s.status == 200 && s.wrong == "" && !s.start.Before(t0) && (!found || s.end.Before(first.end)) {
				first, found = s, true
			}
		}
		l.mu.Unlock()
		if found {
			// Requests answered a moment later may still end earlier
			// than this one: look once more after they had time to be
			// recorded.
			time.Sleep(50 * time.Millisecond)
			l.mu.Lock()
			for _, s := range l.samples {
				if s.status == 200 && s.wrong == "" && !s.start.Before(t0) && s.end.Before(first.end) {
					first = s
				}
			}
			l.mu.Unlock()
			return first, true
		}
		if time.Now().After(deadline) {
			return sample{}, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// noRedirects makes a client return a redirect as the answer: a standby
// that cannot forward a request redirects to the active node, and the
// tests must see that rather than follow it.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

var noRedirectClient = &http.Client{Timeout: 60 * time.Second, CheckRedirect: noRedirects}

// post sends body as JSON to v without following redirects and returns the
// status and the decoded answer.
func (v *vaultServer) post(path string, body interface{}) (int, map[string]interface{}) {
	v.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		v.t.Fatal(err)
	}
	status, raw, err := sendRaw(noRedirectClient, "POST", v.addr+"/v1/"+path, v.token, b)
	if err != nil {
		v.t.Fatalf("POST %s on %s: %v", path, v.addr, err)
	}
	var decoded map[string]interface{}
	if err := json.Unmarshal(raw, &decoded); err != nil {
		decoded = map[string]interface{}{"raw": string(raw)}
	}
	return status, decoded
}

// sendRaw sends one request with body as it is (nil: none) and returns the
// status and the body of the answer; redirects are not followed.
func sendRaw(c *http.Client, method, url, token string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("X-Vault-Token", token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// startedIn are the samples sent in [from, to); a zero bound is open.
func startedIn(samples []sample, from, to time.Time) []sample {
	var out []sample
	for _, s := range samples {
		if (from.IsZero() || !s.start.Before(from)) && (to.IsZero() || s.start.Before(to)) {
			out = append(out, s)
		}
	}
	return out
}

// endedBefore are the samples answered before t.
func endedBefore(samples []sample, t time.Time) []sample {
	var out []sample
	for _, s := range samples {
		if s.end.Before(t) {
			out = append(out, s)
		}
	}
	return out
}

func firstSuccessEndedAfter(samples []sample, t0 time.Time) time.Time {
	var first time.Time
	for _, s := range samples {
		if s.status == 200 && s.end.After(t0) && (first.IsZero() || s.end.Before(first)) {
			first = s.end
		}
	}
	return first
}

func count(samples []sample, status int) int {
	n := 0
	for _, s := range samples {
		if s.status == status {
			n++
		}
	}
	return n
}

func longest(samples []sample) time.Duration {
	var d time.Duration
	for _, s := range samples {
		d = max(d, s.end.Sub(s.start))
	}
	return d
}

func durationSince(t, t0 time.Time) string {
	if t.IsZero() {
		return "(none)"
	}
	return t.Sub(t0).Round(time.Millisecond).String()
}

// statusCounts says how many samples had each status, "200×n 503×m".
func statusCounts(samples []sample) string {
	counts := map[int]int{}
	for _, s := range samples {
		counts[s.status]++
	}
	var keys []int
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		name := fmt.Sprint(k)
		if k == 0 {
			name = "no-answer"
		}
		parts = append(parts, fmt.Sprintf("%s×%d", name, counts[k]))
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return strings.Join(parts, " ")
}

// distinctMessages are the failed samples' status and message, each once,
// with how often they came.
func distinctMessages(samples []sample) []string {
	counts := map[string]int{}
	var order []string
	for _, s := range samples {
		if s.status == 200 {
			continue
		}
		k := fmt.Sprintf("%s %d %s", s.op, s.status, s.msg)
		if counts[k] == 0 {
			order = append(order, k)
		}
		counts[k]++
	}
	var out []string
	for _, k := range order {
		out = append(out, fmt.Sprintf("%s (×%d)", k, counts[k]))
	}
	return out
}

func lastMessages(samples []sample, n int) string {
	var out []string
	for i := len(samples) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, fmt.Sprintf("%s %d %s", samples[i].op, samples[i].status, samples[i].msg))
	}
	return strings.Join(out, " | ")
}

// pluginLogSummary is the plugin's warnings and errors in the Vault log,
// each distinct line once with its count (timestamps removed).
func pluginLogSummary(t *testing.T, v *vaultServer) string {
	t.Helper()
	raw, err := os.ReadFile(v.logPath)
	if err != nil {
		return err.Error()
	}
	counts := map[string]int{}
	var order []string
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.Contains(line, pluginName) && !strings.Contains(line, "hsmkms") {
			continue
		}
		if !strings.Contains(line, "[WARN]") && !strings.Contains(line, "[ERROR]") && !strings.Contains(line, "[INFO]") {
			continue
		}
		if i := strings.Index(line, " ["); i > 0 {
			line = line[i+1:]
		}
		if len(line) > 400 {
			line = line[:400] + "…"
		}
		if counts[line] == 0 {
			order = append(order, line)
		}
		counts[line]++
	}
	var b strings.Builder
	for _, l := range order {
		fmt.Fprintf(&b, "\n  %s (×%d)", l, counts[l])
	}
	if b.Len() == 0 {
		return "(nothing)"
	}
	return b.String()
}

// kill -9 of Vault leaves its plugin process behind, re-parented; the
// plugin notices its parent is gone and exits by itself, closing its HSM
// sessions, within 10 s.
func TestPluginExitsWhenVaultIsKilled(t *testing.T) {
	tok := newPrivateSoftHSM(t, "orphan", "orphan-pin-1470")
	v := startDevVault(t, tok)
	v.configure("kms")
	v.cli("write", "kms/keys/k", "type=aes256-gcm96")
	encryptOnce(t, v, "k", "logged in and holding sessions", "")
	vaultPID := v.cmd.Process.Pid
	pid := pluginPID(t, vaultPID)
	gone := killAndWatchPlugin(t, vaultPID, pid)
	t.Logf("plugin %d exited %v after its Vault %d was killed", pid, gone.Round(time.Millisecond), vaultPID)
}

// killAndWatchPlugin kills the Vault process vaultPID with SIGKILL (not its
// process group) and waits for its plugin process pid to exit by itself;
// it fails t after 10 s and returns how long the plugin lived on.
func killAndWatchPlugin(t *testing.T, vaultPID, pid int) time.Duration {
	t.Helper()
	if !processRunning(pid) {
		t.Fatalf("plugin %d is not running before the kill", pid)
	}
	tKill := time.Now()
	if err := syscall.Kill(vaultPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	reparented := false
	for time.Since(tKill) < 10*time.Second {
		if !processRunning(pid) {
			if !reparented {
				t.Logf("plugin %d exited before it was seen re-parented", pid)
			}
			return time.Since(tKill)
		}
		if ppid, ok := parentPID(pid); ok && ppid != vaultPID {
			reparented = true
		}
		time.Sleep(20 * time.Millisecond)
	}
	ppid, _ := parentPID(pid)
	t.Fatalf("plugin %d still running 10 s after its Vault %d was killed (parent now %d)", pid, vaultPID, ppid)
	return 0
}

// processRunning reports whether pid is alive: it exists and is not a
// zombie (an exited process its new parent has not reaped yet).
func processRunning(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	state, _, ok := procStat(pid)
	return ok && state != "Z" && state != "X"
}

func parentPID(pid int) (int, bool) {
	_, ppid, ok := procStat(pid)
	return ppid, ok
}

// procStat reads a process's state and parent from /proc/<pid>/stat.
func procStat(pid int) (state string, ppid int, ok bool) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, false
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, false
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 2 {
		return "", 0, false
	}
	if _, err := fmt.Sscan(fields[1], &ppid); err != nil {
		return "", 0, false
	}
	return fields[0], ppid, true
}
