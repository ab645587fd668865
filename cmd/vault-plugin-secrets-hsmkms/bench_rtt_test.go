package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const (
	modulePath = "github.com/hsmkms/vault-plugin-secrets-hsmkms"
	benchTag   = "hsmkms_benchrtt"
	rttEnv     = "HSMKMS_BENCH_HSM_RTT"
)

// The simulated network HSM is in the bench's build only: built as a
// release is (no tags), the plugin links no internal/netsim and compiles
// no file that reads HSMKMS_BENCH_HSM_RTT; with the bench's tag it does
// both, which shows the check can see them.
func TestSimulatedNetworkOnlyInBenchBuild(t *testing.T) {
	for _, tc := range []struct {
		tags  string
		bench bool
	}{{"", false}, {benchTag, true}} {
		out, err := exec.Command("go", "list", "-deps", "-tags", tc.tags,
			"-f", "{{.ImportPath}}\t{{.Dir}}\t{{join .GoFiles \",\"}},{{join .CgoFiles \",\"}}", ".").CombinedOutput()
		if err != nil {
			t.Fatalf("go list -tags %q: %v\n%s", tc.tags, err, out)
		}
		netsim, readers := false, []string{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			fields := strings.Split(line, "\t")
			if len(fields) != 3 {
				t.Fatalf("go list line %q", line)
			}
			pkg, dir, files := fields[0], fields[1], fields[2]
			if !strings.HasPrefix(pkg, modulePath) {
				continue
			}
			netsim = netsim || pkg == modulePath+"/internal/netsim"
			for _, f := range strings.Split(files, ",") {
				if f == "" {
					continue
				}
				src, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(string(src), rttEnv) {
					readers = append(readers, pkg+"/"+f)
				}
			}
		}
		t.Logf("tags %q: netsim %v, files naming %s: %v", tc.tags, netsim, rttEnv, readers)
		if netsim != tc.bench {
			t.Errorf("tags %q: internal/netsim linked: %v, want %v", tc.tags, netsim, tc.bench)
		}
		if want := map[bool]int{false: 0, true: 1}[tc.bench]; len(readers) != want {
			t.Errorf("tags %q: files naming %s: %v, want %d", tc.tags, rttEnv, readers, want)
		}
	}
}
