package hsmkms

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The shipped Prometheus files: the alert rules, their unit tests and the
// example scrape config.
const (
	promDir        = "docs/prometheus"
	alertRules     = "hsmkms-alerts.yml"
	alertRuleTests = "hsmkms-alerts_test.yml"
	promConfig     = "prometheus.yml"
)

type ruleFile struct {
	Groups []struct {
		Rules []struct {
			Alert string `yaml:"alert"`
			Expr  string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTestFile struct {
	Tests []struct {
		AlertRuleTest []struct {
			Alertname string        `yaml:"alertname"`
			ExpAlerts []interface{} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func needPromtool(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Skipf("promtool is not installed (%v): scripts/deps.sh installs Debian's prometheus package, which has it", err)
	}
	return bin
}

func readYAML(t *testing.T, path string, into interface{}) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func promtool(t *testing.T, bin, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Every shipped alert fires on the synthetic series made for it and stays
// quiet on the ones made not to trigger it (promtool test rules), and each
// firing case catches an alert that could never fire.
func TestAlertRulesFireOnlyWhenTheyShould(t *testing.T) {
	bin := needPromtool(t)
	var rules ruleFile
	readYAML(t, filepath.Join(promDir, alertRules), &rules)
	var tests ruleTestFile
	readYAML(t, filepath.Join(promDir, alertRuleTests), &tests)

	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
		}
	}
	for _, want := range []string{"HSMKMSHSMUnreachable", "HSMKMSLoginRefused", "HSMKMSPoolExhausted", "HSMKMSHighLatency", "HSMKMSRewrapStalled"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("%s ships no %s alert", alertRules, want)
		}
	}
	fires, quiet := map[string]int{}, map[string]int{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if !slices.Contains(alerts, a.Alertname) {
				t.Errorf("%s tests %s, which %s does not have", alertRuleTests, a.Alertname, alertRules)
			}
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	for _, a := range alerts {
		if fires[a] == 0 || quiet[a] == 0 {
			t.Errorf("%s: %d cases where it fires and %d where it must not; want at least one of each", a, fires[a], quiet[a])
		}
	}

	if out, err := promtool(t, bin, promDir, "check", "rules", alertRules); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	out, err := promtool(t, bin, promDir, "test", "rules", alertRuleTests)
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("promtool test rules %s:\n%s", alertRuleTests, out)

	// The tests must be able to fail: with one alert's expression made
	// one that never fires, its firing case fails.
	for _, a := range alerts {
		t.Run("without "+a, func(t *testing.T) {
			dir := t.TempDir()
			var doc yaml.Node
			raw, err := os.ReadFile(filepath.Join(promDir, alertRules))
			if err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(raw, &doc); err != nil {
				t.Fatal(err)
			}
			if !replaceExpr(&doc, a, "vector(0) > 1") {
				t.Fatalf("no expr found for %s", a)
			}
			broken, err := yaml.Marshal(&doc)
			if err != nil {
				t.Fatal(err)
			}
			testFile, err := os.ReadFile(filepath.Join(promDir, alertRuleTests))
			if err != nil {
				t.Fatal(err)
			}
			writeTestFile(t, filepath.Join(dir, alertRules), broken)
			writeTestFile(t, filepath.Join(dir, alertRuleTests), testFile)
			out, err := promtool(t, bin, dir, "test", "rules", alertRuleTests)
			if err == nil || !strings.Contains(out, a) {
				t.Fatalf("promtool test rules passed (or did not name %s) with %s never firing: %v\n%s", a, a, err, out)
			}
		})
	}
}

// replaceExpr sets the expr of the rule that raises alert.
func replaceExpr(n *yaml.Node, alert, expr string) bool {
	if n.Kind == yaml.MappingNode {
		names := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "alert" && n.Content[i+1].Value == alert {
				names = true
			}
		}
		if names {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == "expr" {
					n.Content[i+1].Value, n.Content[i+1].Style = expr, 0
					return true
				}
			}
		}
	}
	for _, c := range n.Content {
		if replaceExpr(c, alert, expr) {
			return true
		}
	}
	return false
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The scrape config the README shows is one Prometheus accepts, with the
// rules it names.
func TestExampleScrapeConfigIsValid(t *testing.T) {
	bin := needPromtool(t)
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join(promDir, promConfig))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := os.ReadFile(filepath.Join(promDir, alertRules))
	if err != nil {
		t.Fatal(err)
	}
	// promtool checks that the files the config names exist.
	config := string(raw)
	for _, f := range []string{"/etc/prometheus/hsmkms-metrics-token", "/etc/prometheus/vault-ca.pem"} {
		if !strings.Contains(config, f) {
			t.Fatalf("%s no longer names %s", promConfig, f)
		}
		local := filepath.Join(dir, filepath.Base(f))
		writeTestFile(t, local, []byte("placeholder"))
		config = strings.ReplaceAll(config, f, local)
	}
	writeTestFile(t, filepath.Join(dir, promConfig), []byte(config))
	writeTestFile(t, filepath.Join(dir, alertRules), rules)
	if out, err := promtool(t, bin, dir, "check", "config", promConfig); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
}
