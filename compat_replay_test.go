package hsmkms

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// compatMeta is a fixture's meta.json.
type compatMeta struct {
	Commit       string `json:"commit"`
	BackendUUID  string `json:"backend_uuid"`
	TokenLabel   string `json:"token_label"`
	PIN          string `json:"pin"`
	Library      string `json:"library"`
	TokenArchive string `json:"token_archive"`
}

// replayCompatFixture is the child's side: it opens the fixture's token and
// storage with the current plugin, replays every check in file order and
// writes one result line per check to resultsPath as it goes, so that a
// crash still shows how far it got.
func replayCompatFixture(t *testing.T, dir, resultsPath string) {
	var meta compatMeta
	readCompatJSON(t, filepath.Join(dir, "meta.json"), &meta)
	checks := readCompatChecks(t, dir)
	out, err := os.Create(resultsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	write := func(r compatResult) {
		line, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := out.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
	}

	// Nothing in this process has loaded SoftHSM2 yet (TestMain only runs
	// softhsm2-util), so the module will read this configuration.
	tokens := filepath.Join(t.TempDir(), "tokens")
	untarCompatToken(t, filepath.Join(dir, meta.TokenArchive), tokens)
	conf := filepath.Join(filepath.Dir(tokens), "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)

	ctx := context.Background()
	storage := loadCompatStorage(t, filepath.Join(dir, "storage.json"))
	bc := logical.TestBackendConfig()
	bc.StorageView = storage
	bc.BackendUUID = meta.BackendUUID
	bc.Logger = hclog.New(&hclog.LoggerOptions{Name: "compat-" + meta.Commit, Level: hclog.Warn})
	b, err := Factory(ctx, bc)
	if err != nil {
		t.Fatalf("Factory on the fixture's storage: %v", err)
	}
	defer b.Cleanup(ctx)
	m := compatMount{b: b, s: storage}

	write(compatResult{ID: compatSetupID, OK: true, Detail: useLocalLibrary(t, m, meta)})
	for _, c := range checks {
		detail := m.replayRecovering(c)
		write(compatResult{ID: c.ID, OK: detail == "", Detail: detail})
	}
}

// replayRecovering is replay, with a panic in the plugin reported as the
// check's failure: under Vault it would kill the plugin process.
func (m compatMount) replayRecovering(c compatCheck) (detail string) {
	defer func() {
		if p := recover(); p != nil {
			detail = fmt.Sprintf("the plugin panicked: %v", p)
		}
	}()
	return m.replay(c)
}

// untarCompatToken unpacks the token archive (one SoftHSM2 token
// directory) under dir.
func untarCompatToken(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", archive, err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", archive, err)
		}
		name := filepath.Clean(h.Name)
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			t.Fatalf("%s: entry %q leaves the token directory", archive, h.Name)
		}
		path := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(path, 0o700)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(path, data, 0o600)
			}
		default:
			t.Fatalf("%s: entry %q is neither a file nor a directory", archive, h.Name)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func loadCompatStorage(t *testing.T, path string) *logical.InmemStorage {
	t.Helper()
	var entries map[string]string
	readCompatJSON(t, path, &entries)
	s := &logical.InmemStorage{}
	for k, v := range entries {
		raw, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			t.Fatalf("storage entry %q: %v", k, err)
		}
		if err := s.Put(context.Background(), &logical.StorageEntry{Key: k, Value: raw}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// useLocalLibrary points the mount at this machine's SoftHSM2 module when
// the fixture was made where it lives elsewhere, through the config API
// alone, as an operator would after moving a mount. On the machine that
// made the fixture nothing is written, so the stored config is read as an
// upgrade in place reads it.
func useLocalLibrary(t *testing.T, m compatMount, meta compatMeta) string {
	t.Helper()
	lib, err := tokentest.SoftHSMLibrary()
	if err != nil {
		t.Fatal(err)
	}
	got, status, msg := m.do("read", "config", nil)
	if status != 200 {
		t.Fatalf("read config: HTTP %d: %s", status, msg)
	}
	if got["library"] == lib {
		return fmt.Sprintf("fixture %s: stored config used as it is (library %s)", meta.Commit, lib)
	}
	if _, status, msg := m.do("update", "config", map[string]interface{}{"library": lib, "token_label": meta.TokenLabel, "pin": meta.PIN}); status != 200 {
		t.Fatalf("config library=%s: HTTP %d: %s", lib, status, msg)
	}
	return fmt.Sprintf("fixture %s: config library rewritten from %v to %s", meta.Commit, got["library"], lib)
}

// compatMount talks to a backend as Vault's HTTP layer does.
type compatMount struct {
	b logical.Backend
	s logical.Storage
}

// do sends one request and returns the answer's data (as JSON would carry
// it), its HTTP status and error message.
func (m compatMount) do(op, path string, data map[string]interface{}) (map[string]interface{}, int, string) {
	req := &logical.Request{Operation: logical.Operation(op), Path: path, Data: data, Storage: m.s, MountPoint: "kms/"}
	resp, err := m.b.HandleRequest(context.Background(), req)
	status, _ := logical.RespondErrorCommon(req, resp, err)
	if status == 0 {
		status = 200
	}
	var out map[string]interface{}
	if resp != nil && resp.Data != nil {
		raw, merr := json.Marshal(resp.Data)
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if merr != nil || dec.Decode(&out) != nil {
			return nil, 500, fmt.Sprintf("the answer does not encode as JSON: %v", merr)
		}
	}
	msg := ""
	if e, ok := out["error"].(string); ok {
		msg = e
	} else if err != nil {
		msg = err.Error()
	}
	return out, status, msg
}

// replay runs one check and says what is wrong, or "".
func (m compatMount) replay(c compatCheck) string {
	got, status, msg := m.do(c.Operation, c.Path, c.Data)
	switch {
	case c.ExpectStatus != 0:
		if status != c.ExpectStatus {
			return fmt.Sprintf("HTTP %d (%s), want %d", status, msg, c.ExpectStatus)
		}
		return ""
	case status >= 300:
		return fmt.Sprintf("HTTP %d: %s", status, msg)
	case len(c.Expect) == 0:
		return ""
	}
	return compatMatch(c.Expect, got)
}

// compatMatch says how got differs from want: every field of want must be
// in got with an equal value, and lists must have want's length.
func compatMatch(want, got interface{}) string {
	switch w := want.(type) {
	case map[string]interface{}:
		g, ok := got.(map[string]interface{})
		if !ok {
			return fmt.Sprintf("want an object, got %v", got)
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			gv, ok := g[k]
			if !ok {
				return fmt.Sprintf("%s is missing from the answer %v", k, got)
			}
			if d := compatMatch(w[k], gv); d != "" {
				return k + ": " + d
			}
		}
		return ""
	case []interface{}:
		g, ok := got.([]interface{})
		if !ok || len(g) != len(w) {
			return fmt.Sprintf("want a list of %d, got %v", len(w), got)
		}
		for i := range w {
			if d := compatMatch(w[i], g[i]); d != "" {
				return fmt.Sprintf("[%d] %s", i, d)
			}
		}
		return ""
	}
	if !reflect.DeepEqual(want, got) {
		return fmt.Sprintf("want %v, got %v", want, got)
	}
	return ""
}
