// The mechanics every compatibility generator shares: run the plugin of one
// commit in-process on a SoftHSM2 token, record each value with the request
// that checks it, dump storage, and replay the checks on a copy. This file
// knows only the HTTP-level API (paths, fields, answers), so it is copied
// unchanged into each fixture's gen/ directory; main.go says what to make.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	hsmkms "github.com/hsmkms/vault-plugin-secrets-hsmkms"
)

// mountPoint is what every request names as its mount.
const mountPoint = "kms/"

// mountAccessor is what Vault gives every request of the mount; from
// 16601bf on the plugin records it in a marker on the token.
const mountAccessor = "hsmkms_c0a7f166"

// check is one recorded value and the request that proves it still reads:
// the answer must be a success holding every field of Expect (a subset
// match; an empty Expect asks only for success), or an error of
// ExpectStatus when that is set.
type check struct {
	ID           string                 `json:"id"`
	Group        string                 `json:"group"`
	Key          string                 `json:"key"`
	Operation    string                 `json:"operation"`
	Path         string                 `json:"path"`
	Data         map[string]interface{} `json:"data,omitempty"`
	Expect       map[string]interface{} `json:"expect,omitempty"`
	ExpectStatus int                    `json:"expect_status,omitempty"`
}

type valuesFile struct {
	Commit     string  `json:"commit"`
	MountPoint string  `json:"mount_point"`
	Checks     []check `json:"checks"`
}

// fixtureMeta is what a test needs besides storage and values to open the
// fixture: the token and the mount's identity.
type fixtureMeta struct {
	Commit       string `json:"commit"`
	BackendUUID  string `json:"backend_uuid"`
	TokenLabel   string `json:"token_label"`
	PIN          string `json:"pin"`
	SOPIN        string `json:"so_pin"`
	Library      string `json:"library"`
	TokenArchive string `json:"token_archive"`
	Note         string `json:"note"`
}

// spec is one generator: the commit it is built from, the mount identity
// it uses, and what it makes.
type spec struct {
	Commit      string
	BackendUUID string
	// Prepare runs before the plugin loads the PKCS#11 module (e.g. to put
	// objects on the token for adopt, as a key ceremony would).
	Prepare func(library, label, pin string)
	// Populate makes the keys and values through the API.
	Populate func(r *recorder)
}

type mount struct {
	b logical.Backend
	s logical.Storage
}

func newMount(ctx context.Context, s logical.Storage, uuid string) *mount {
	conf := &logical.BackendConfig{
		StorageView: s,
		Logger:      hclog.New(&hclog.LoggerOptions{Name: "compatgen", Level: hclog.Warn, Output: os.Stderr}),
		System:      logical.TestSystemView(),
		Config:      map[string]string{},
		BackendUUID: uuid,
	}
	b, err := hsmkms.Factory(ctx, conf)
	if err != nil {
		log.Fatalf("Factory: %v", err)
	}
	return &mount{b: b, s: s}
}

// roundTrip gives v the shape an HTTP request or answer has: JSON, with
// numbers as json.Number as Vault's decoder leaves them.
func roundTrip(v interface{}) interface{} {
	raw, err := json.Marshal(v)
	if err != nil {
		log.Fatalf("encoding %v: %v", v, err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var out interface{}
	if err := dec.Decode(&out); err != nil {
		log.Fatalf("decoding %s: %v", raw, err)
	}
	return out
}

// do sends one request and returns the answer's data, its HTTP status and
// error message.
func (m *mount) do(op, path string, data map[string]interface{}) (map[string]interface{}, int, string) {
	req := &logical.Request{Operation: logical.Operation(op), Path: path, Storage: m.s, MountPoint: mountPoint, MountAccessor: mountAccessor}
	if data != nil {
		req.Data = roundTrip(data).(map[string]interface{})
	}
	resp, err := m.b.HandleRequest(context.Background(), req)
	status, _ := logical.RespondErrorCommon(req, resp, err)
	if status == 0 {
		status = 200
	}
	var out map[string]interface{}
	if resp != nil && resp.Data != nil {
		out, _ = roundTrip(resp.Data).(map[string]interface{})
	}
	msg := ""
	if e, ok := out["error"].(string); ok {
		msg = e
	} else if err != nil {
		msg = err.Error()
	}
	return out, status, msg
}

// must sends a request that has to succeed.
func (m *mount) must(op, path string, data map[string]interface{}) map[string]interface{} {
	out, status, msg := m.do(op, path, data)
	if status >= 300 {
		log.Fatalf("%s %s: HTTP %d: %s", op, path, status, msg)
	}
	return out
}

type recorder struct {
	*mount
	commit string
	checks []check
	ids    map[string]bool
}

func (r *recorder) add(c check) {
	if r.ids[c.ID] {
		log.Fatalf("check id %q used twice", c.ID)
	}
	r.ids[c.ID] = true
	if c.Operation == "" {
		c.Operation = "update"
	}
	if c.Data != nil {
		c.Data = roundTrip(c.Data).(map[string]interface{})
	}
	if c.Expect != nil {
		c.Expect = roundTrip(c.Expect).(map[string]interface{})
	}
	r.checks = append(r.checks, c)
}

// plain is the fixed plaintext of a value, so fixtures differ only in
// what the token made.
func (r *recorder) plain(id string) []byte {
	return []byte(fmt.Sprintf("hsmkms compatibility fixture %s: %s", r.commit, id))
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// match reports how got differs from want, where every field of want must
// be in got with an equal value and lists must have want's length.
func match(want, got interface{}) string {
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
				return fmt.Sprintf("%s: missing (answer: %v)", k, got)
			}
			if d := match(w[k], gv); d != "" {
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
			if d := match(w[i], g[i]); d != "" {
				return fmt.Sprintf("[%d]: %s", i, d)
			}
		}
		return ""
	}
	if !reflect.DeepEqual(want, got) {
		return fmt.Sprintf("want %v, got %v", want, got)
	}
	return ""
}

// replay runs every check and returns what failed.
func (m *mount) replay(checks []check) []string {
	var failed []string
	for _, c := range checks {
		got, status, msg := m.do(c.Operation, c.Path, c.Data)
		switch {
		case c.ExpectStatus != 0 && status != c.ExpectStatus:
			failed = append(failed, fmt.Sprintf("%s: HTTP %d (%s), want %d", c.ID, status, msg, c.ExpectStatus))
		case c.ExpectStatus == 0 && status >= 300:
			failed = append(failed, fmt.Sprintf("%s: HTTP %d: %s", c.ID, status, msg))
		case c.ExpectStatus == 0 && len(c.Expect) > 0:
			if d := match(c.Expect, got); d != "" {
				failed = append(failed, fmt.Sprintf("%s: %s", c.ID, d))
			}
		}
	}
	return failed
}

func writeJSON(path string, v interface{}) {
	raw, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		log.Fatalf("encoding %s: %v", path, err)
	}
	if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}

func readJSON(path string, v interface{}) {
	raw, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		log.Fatalf("%s: %v", path, err)
	}
}

// dumpStorage returns every entry, key to base64 of the value.
func dumpStorage(s *logical.InmemStorage) map[string]string {
	ctx := context.Background()
	keys, err := logical.CollectKeys(ctx, s)
	if err != nil {
		log.Fatalf("listing storage: %v", err)
	}
	out := map[string]string{}
	for _, k := range keys {
		e, err := s.Get(ctx, k)
		if err != nil || e == nil {
			log.Fatalf("reading storage %q: %v", k, err)
		}
		out[k] = b64(e.Value)
	}
	return out
}

func loadStorage(path string) *logical.InmemStorage {
	var entries map[string]string
	readJSON(path, &entries)
	s := &logical.InmemStorage{}
	for k, v := range entries {
		raw, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			log.Fatalf("storage %q: %v", k, err)
		}
		if err := s.Put(context.Background(), &logical.StorageEntry{Key: k, Value: raw}); err != nil {
			log.Fatal(err)
		}
	}
	return s
}

// run is main: "generate" makes a fixture in -out on a fresh token;
// "check" replays a fixture's values from a copy of its storage (and of
// its token, which the caller unpacked) with the same commit's plugin.
func run(sp spec) {
	log.SetFlags(0)
	if len(os.Args) < 2 {
		log.Fatal("usage: compatgen generate|check [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	out := fs.String("out", "", "fixture directory to write (generate) or read (check)")
	library := fs.String("library", "", "PKCS#11 module of SoftHSM2")
	label := fs.String("label", "", "token label")
	pin := fs.String("pin", "", "user PIN")
	soPIN := fs.String("so-pin", "", "SO PIN (recorded in meta.json)")
	if err := fs.Parse(os.Args[2:]); err != nil || *out == "" {
		log.Fatal("-out is required")
	}
	ctx := context.Background()
	switch os.Args[1] {
	case "generate":
		if *library == "" || *label == "" || *pin == "" {
			log.Fatal("generate needs -library, -label and -pin")
		}
		if sp.Prepare != nil {
			sp.Prepare(*library, *label, *pin)
		}
		s := &logical.InmemStorage{}
		r := &recorder{mount: newMount(ctx, s, sp.BackendUUID), commit: sp.Commit, ids: map[string]bool{}}
		r.must("update", "config", map[string]interface{}{
			"library": *library, "token_label": *label, "pin": *pin, "max_keys": 200,
		})
		sp.Populate(r)
		r.b.Cleanup(ctx)
		if err := os.MkdirAll(*out, 0o755); err != nil {
			log.Fatal(err)
		}
		writeJSON(filepath.Join(*out, "storage.json"), dumpStorage(s))
		writeJSON(filepath.Join(*out, "values.json"), valuesFile{Commit: sp.Commit, MountPoint: mountPoint, Checks: r.checks})
		writeJSON(filepath.Join(*out, "meta.json"), fixtureMeta{
			Commit: sp.Commit, BackendUUID: sp.BackendUUID, TokenLabel: *label, PIN: *pin, SOPIN: *soPIN,
			Library: *library, TokenArchive: "token.tar.gz",
			Note: "made by testdata/compat/regen.sh " + sp.Commit + "; throw-away token, the PINs are not secrets",
		})
		log.Printf("%s: %d checks", sp.Commit, len(r.checks))
	case "check":
		var values valuesFile
		readJSON(filepath.Join(*out, "values.json"), &values)
		var meta fixtureMeta
		readJSON(filepath.Join(*out, "meta.json"), &meta)
		m := newMount(ctx, loadStorage(filepath.Join(*out, "storage.json")), meta.BackendUUID)
		failed := m.replay(values.Checks)
		m.b.Cleanup(ctx)
		if len(failed) > 0 {
			log.Fatalf("%s: %d of %d checks fail with the plugin that made them:\n%s", sp.Commit, len(failed), len(values.Checks), strings.Join(failed, "\n"))
		}
		log.Printf("%s: all %d checks pass with the plugin that made them", sp.Commit, len(values.Checks))
	default:
		log.Fatalf("unknown mode %q", os.Args[1])
	}
}
