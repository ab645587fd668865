package hsmkms

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The compatibility fixtures (testdata/compat/<commit>/, see its README)
// hold what an earlier release left behind: its storage entries, its
// SoftHSM2 token, and values made with it, each with the request that
// checks it. This test knows the plugin only through Factory, paths and
// fields, so a refactor of the plugin's Go types cannot break it; only a
// change of what the plugin reads from storage or the token can.

// compatFixtureEnv and compatResultsEnv, set, make the test binary replay
// one fixture (a child process) and write its results.
const (
	compatFixtureEnv = "HSMKMS_COMPAT_FIXTURE"
	compatResultsEnv = "HSMKMS_COMPAT_RESULTS"
)

// compatCheck is one recorded value and the request that checks it; see
// the fixture README for the format.
type compatCheck struct {
	ID           string                 `json:"id"`
	Group        string                 `json:"group"`
	Key          string                 `json:"key"`
	Operation    string                 `json:"operation"`
	Path         string                 `json:"path"`
	Data         map[string]interface{} `json:"data"`
	Expect       map[string]interface{} `json:"expect"`
	ExpectStatus int                    `json:"expect_status"`
}

// compatResult is one check's outcome, as the child writes it.
type compatResult struct {
	ID     string `json:"id"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// compatSetupID marks the child's note on how it opened the fixture.
const compatSetupID = "<setup>"

// TestCompatibilityFixtures loads each fixture into the current code and
// replays its values: every decrypt gives the exact plaintext, every
// verify valid=true, every HMAC the same bytes, every data key its
// plaintext through both decrypt/:name and datakey/decrypt/:name. Subtests
// are <commit>/<group>; each failure names the key and the value.
//
// SoftHSM2 reads its one token directory once per process, at
// C_Initialize, and the root package's other tests may have loaded it
// already: so each fixture is replayed by a child process (this test
// binary, this test) whose module loads the fixture's token alone.
func TestCompatibilityFixtures(t *testing.T) {
	if dir := os.Getenv(compatFixtureEnv); dir != "" {
		replayCompatFixture(t, dir, os.Getenv(compatResultsEnv))
		return
	}
	metas, err := filepath.Glob(filepath.Join("testdata", "compat", "*", "meta.json"))
	if err != nil || len(metas) == 0 {
		t.Fatalf("no fixtures under testdata/compat (%v)", err)
	}
	for _, meta := range metas {
		dir, err := filepath.Abs(filepath.Dir(meta))
		if err != nil {
			t.Fatal(err)
		}
		t.Run(filepath.Base(dir), func(t *testing.T) { checkCompatFixture(t, dir) })
	}
}

func checkCompatFixture(t *testing.T, dir string) {
	checks := readCompatChecks(t, dir)
	results, output, runErr := runCompatChild(t, dir)
	if note, ok := results[compatSetupID]; ok {
		t.Log(note.Detail)
	}
	var groups []string
	byGroup := map[string][]compatCheck{}
	for _, c := range checks {
		if byGroup[c.Group] == nil {
			groups = append(groups, c.Group)
		}
		byGroup[c.Group] = append(byGroup[c.Group], c)
	}
	fixture := filepath.Base(dir)
	if runErr != nil || len(results) < len(checks)+1 {
		t.Errorf("fixture %s: the child process that replays it failed (%v); its output:\n%s", fixture, runErr, output)
	}
	for _, g := range groups {
		t.Run(g, func(t *testing.T) {
			var failed, missing []compatCheck
			for _, c := range byGroup[g] {
				r, ok := results[c.ID]
				switch {
				case !ok:
					missing = append(missing, c)
				case !r.OK:
					failed = append(failed, c)
					t.Errorf("fixture %s, key %s, value %s: %s %s: %s", fixture, c.Key, c.ID, c.Operation, c.Path, r.Detail)
				}
			}
			if len(missing) > 0 {
				t.Errorf("fixture %s: %d values not replayed, the child process stopped before them; the first: key %s, value %s",
					fixture, len(missing), missing[0].Key, missing[0].ID)
			}
			t.Logf("%d of %d values pass", len(byGroup[g])-len(failed)-len(missing), len(byGroup[g]))
		})
	}
}

func readCompatChecks(t *testing.T, dir string) []compatCheck {
	t.Helper()
	var values struct {
		Checks []compatCheck `json:"checks"`
	}
	readCompatJSON(t, filepath.Join(dir, "values.json"), &values)
	if len(values.Checks) == 0 {
		t.Fatalf("%s: values.json holds no checks", dir)
	}
	return values.Checks
}

// readCompatJSON decodes numbers as json.Number, as Vault's HTTP layer
// hands request bodies to a plugin.
func readCompatJSON(t *testing.T, path string, v interface{}) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// runCompatChild runs this test in a child process on one fixture and
// returns its results by check id, with its output for the report.
func runCompatChild(t *testing.T, dir string) (map[string]compatResult, string, error) {
	t.Helper()
	resultsPath := filepath.Join(t.TempDir(), "results.jsonl")
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestCompatibilityFixtures$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), compatFixtureEnv+"="+dir, compatResultsEnv+"="+resultsPath)
	out, runErr := cmd.CombinedOutput()
	results := map[string]compatResult{}
	f, err := os.Open(resultsPath)
	if err != nil {
		return results, string(out), runErr
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r compatResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("child result %q: %v", sc.Text(), err)
		}
		results[r.ID] = r
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return results, strings.TrimSpace(string(out)), runErr
}
