package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// metricsPolicy lets a token scrape kms/ and do nothing else.
const metricsPolicy = `path "kms/metrics" { capabilities = ["read"] }`

// The encrypt counter as Prometheus stores it.
const encryptQuery = `hsmkms_requests_total{job="hsmkms",operation="encrypt",outcome="2xx"}`

// scrapeVault GETs mount's metrics from addr as Prometheus does, with the
// token as a bearer token, and never follows a redirect: the node asked
// answers (a standby by forwarding to the active node).
func scrapeVault(t *testing.T, addr, mount, token string) (int, string, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", addr+"/v1/"+mount+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := noRedirectClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s/metrics on %s: %v", mount, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), body
}

// counterIn is the value of the series of name with exactly labels in a
// scrape's text.
func counterIn(t *testing.T, body []byte, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing the metrics: %v\n%s", err, body)
	}
	for _, m := range families[name].GetMetric() {
		if sameLabels(m.GetLabel(), labels) {
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func sameLabels(got []*dto.LabelPair, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, l := range got {
		if want[l.GetName()] != l.GetValue() {
			return false
		}
	}
	return true
}

// Debian's Prometheus scrapes a real Vault with a token whose only policy
// is read on kms/metrics, as the README's scrape config does; after N
// encrypts its HTTP API answers N for the encrypt counter. promtool lints
// the raw output: every problem it reports is a failure (the names are
// ours, there is no warning to accept). A token without the policy is
// refused (403), by Vault directly and in Prometheus's scrape.
func TestPrometheusScrapesVault(t *testing.T) {
	prometheus, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skipf("prometheus is not installed (%v): scripts/deps.sh installs Debian's prometheus package", err)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skipf("promtool is not installed (%v): scripts/deps.sh installs Debian's prometheus package", err)
	}
	v := startDevVault(t, softHSM())
	v.configure("kms")
	v.cli("write", "kms/keys/prom-aes", "type=aes256-gcm96")
	// A wrapped key and a KEK rotation, so that the cache and rewrap
	// figures are in the output promtool lints.
	v.cli("write", "kms/keys/prom-wrapped", "type=aes256-gcm96", "residency=wrapped")
	v.cli("write", "kms/encrypt/prom-wrapped", "plaintext="+b64("wrapped"))
	v.cli("write", "-f", "kms/config/kek/rotate")
	scrapeToken := v.tokenWithPolicy("hsmkms-metrics", metricsPolicy)
	otherToken := v.tokenWithPolicy("prom-encrypt-only", `path "kms/encrypt/prom-aes" { capabilities = ["update"] }`)

	status, contentType, body := scrapeVault(t, v.addr, "kms", scrapeToken)
	if status != http.StatusOK || !strings.HasPrefix(contentType, "text/plain; version=0.0.4") {
		t.Fatalf("scrape with the metrics token: %d %q\n%s", status, contentType, body)
	}
	if _, ok := counterIn(t, body, "hsmkms_requests_total", map[string]string{"operation": "encrypt", "outcome": "2xx"}); !ok {
		t.Fatalf("no encrypt counter after one encrypt:\n%s", body)
	}
	for _, s := range []string{"prom-aes", "prom-wrapped", softHSM().PIN, b64("wrapped")} {
		if bytes.Contains(body, []byte(s)) {
			t.Errorf("the metrics show %q", s)
		}
	}
	lint := exec.Command(promtool, "check", "metrics")
	lint.Stdin = bytes.NewReader(body)
	if out, err := lint.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	} else {
		t.Logf("promtool check metrics: no problem in %d lines", bytes.Count(body, []byte("\n")))
	}
	for name, tok := range map[string]string{"a token without the policy": otherToken, "no token": ""} {
		if status, _, body := scrapeVault(t, v.addr, "kms", tok); status != http.StatusForbidden {
			t.Errorf("scrape with %s: %d, want 403\n%s", name, status, body)
		}
	}
	if status, resp := v.raw("POST", "kms/encrypt/prom-aes", scrapeToken, map[string]interface{}{"plaintext": b64("x")}); status != http.StatusForbidden {
		t.Errorf("encrypt with the metrics token: %d %v, want 403", status, resp)
	}

	prom := startPrometheus(t, prometheus, v, map[string]string{"hsmkms": scrapeToken, "hsmkms-denied": otherToken})
	// The one encrypt so far (the wrapped key's) is counted before N more.
	before := prom.waitFor(t, encryptQuery, func(v float64) bool { return v == 1 })
	const n = 25
	for i := range n {
		if status, resp := v.raw("POST", "kms/encrypt/prom-aes", v.token, map[string]interface{}{"plaintext": b64(fmt.Sprint("scraped ", i))}); status != http.StatusOK {
			t.Fatalf("encrypt %d: %d %v", i, status, resp)
		}
	}
	after := prom.waitFor(t, encryptQuery, func(v float64) bool { return v >= before+n })
	if after-before != n {
		t.Fatalf("Prometheus counted %v encrypts, want %d", after-before, n)
	}
	t.Logf("Prometheus's %s: %v before, %v after %d encrypts", encryptQuery, before, after, n)

	if up := prom.waitFor(t, `up{job="hsmkms-denied"}`, func(v float64) bool { return v == 0 }); up != 0 {
		t.Fatalf("up of the job with a token lacking the policy: %v", up)
	}
	if lastErr := prom.targetError(t, "hsmkms-denied"); !strings.Contains(lastErr, "403") {
		t.Errorf("the denied job's last scrape error %q does not say 403", lastErr)
	}
	if lastErr := prom.targetError(t, "hsmkms"); lastErr != "" {
		t.Errorf("the metrics job's last scrape error: %q", lastErr)
	}
}

// promServer is one Prometheus process.
type promServer struct {
	addr string
	cmd  *exec.Cmd
	log  string
}

// startPrometheus starts Prometheus with a temporary config scraping the
// dev Vault's kms/metrics every second, one job per token, with a
// temporary storage directory, on a free port.
func startPrometheus(t *testing.T, bin string, v *vaultServer, tokens map[string]string) *promServer {
	t.Helper()
	dir := t.TempDir()
	var jobs strings.Builder
	for job, tok := range tokens {
		tokenFile := filepath.Join(dir, job+".token")
		writeFile(t, tokenFile, tok)
		fmt.Fprintf(&jobs, `
  - job_name: %s
    metrics_path: /v1/kms/metrics
    authorization:
      type: Bearer
      credentials_file: %s
    static_configs:
      - targets: ["127.0.0.1:%d"]
`, job, tokenFile, v.port)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	writeFile(t, cfg, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:"+jobs.String())
	p := &promServer{addr: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), log: filepath.Join(dir, "prometheus.log")}
	logFile, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+strings.TrimPrefix(p.addr, "http://"))
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		if t.Failed() {
			log, _ := os.ReadFile(p.log)
			t.Logf("prometheus log:\n%s", tail(string(log), 4000))
		}
	})
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if resp, err := http.Get(p.addr + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(p.log)
			t.Fatalf("prometheus exited:\n%s", tail(string(log), 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready at %s within 60 s", p.addr)
		}
	}
}

// query runs an instant PromQL query through Prometheus's HTTP API and
// returns the value of its single result, if it has exactly one.
func (p *promServer) query(t *testing.T, q string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer resp.Body.Close()
	var out struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value [2]interface{} `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Status != "success" {
		t.Fatalf("query %s: %v (status %q)", q, err, out.Status)
	}
	if len(out.Data.Result) != 1 {
		return 0, false
	}
	s, _ := out.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("query %s: value %v", q, out.Data.Result[0].Value)
	}
	return v, true
}

// waitFor polls q (Prometheus scrapes every second) until its value
// satisfies ok, for at most a minute, and returns it.
func (p *promServer) waitFor(t *testing.T, q string, ok func(float64) bool) float64 {
	t.Helper()
	last, seen := 0.0, false
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if last, seen = p.query(t, q); seen && ok(last) {
			return last
		}
	}
	t.Fatalf("Prometheus's %s was %v (present: %v) after a minute; targets: %s", q, last, seen, p.targets(t))
	return 0
}

type promTarget struct {
	Labels    map[string]string `json:"labels"`
	Health    string            `json:"health"`
	LastError string            `json:"lastError"`
}

func (p *promServer) activeTargets(t *testing.T) []promTarget {
	t.Helper()
	resp, err := http.Get(p.addr + "/api/v1/targets?state=active")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Data struct {
			ActiveTargets []promTarget `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Data.ActiveTargets
}

func (p *promServer) targets(t *testing.T) string {
	b, _ := json.Marshal(p.activeTargets(t))
	return string(b)
}

// targetError is the last scrape error of job's target.
func (p *promServer) targetError(t *testing.T, job string) string {
	t.Helper()
	for _, tg := range p.activeTargets(t) {
		if tg.Labels["job"] == job {
			return tg.LastError
		}
	}
	t.Fatalf("no target of job %s: %s", job, p.targets(t))
	return ""
}

// In Vault's HA a standby forwards every request to the active node, the
// scrape included: each node's address answers the active node's plugin's
// figures, which count the requests sent through every node.
func TestPrometheusMetricsThroughAStandbyAreTheActiveNodes(t *testing.T) {
	tok := newPrivateSoftHSM(t, "metrics", "metrics-pin-2718")
	nodes := startRaftCluster(t, tok, 2)
	leader, standby := nodes[0], nodes[1]
	leader.registerAndMount("kms")
	leader.configure("kms")
	leader.cli("write", "kms/keys/ha", "type=aes256-gcm96")
	scrapeToken := leader.tokenWithPolicy("hsmkms-metrics", metricsPolicy)
	for i, n := range []*vaultServer{leader, leader, leader, standby, standby} {
		if status, resp := n.post("kms/encrypt/ha", map[string]interface{}{"plaintext": b64(fmt.Sprint("ha ", i))}); status != http.StatusOK {
			t.Fatalf("encrypt %d through %s: %d %v", i, n.addr, status, resp)
		}
	}
	encrypts := map[string]string{"operation": "encrypt", "outcome": "2xx"}
	for _, n := range nodes {
		status, _, body := scrapeVault(t, n.addr, "kms", scrapeToken)
		if status != http.StatusOK {
			t.Fatalf("scrape through %s: %d\n%s", n.addr, status, body)
		}
		if got, _ := counterIn(t, body, "hsmkms_requests_total", encrypts); got != 5 {
			t.Errorf("encrypts counted in the scrape through %s: %v, want 5 (3 sent to the active node, 2 through the standby)", n.addr, got)
		}
	}
}
