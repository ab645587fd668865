package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// Issue 17's two-process checks: one Vault, two catalog entries of the
// same plugin binary, so two plugin processes, with mounts on one token.
// What one process may do to another's objects must be decided by the
// token and Vault's sys/mounts, never by what one process happens to know.

// entryEnv marks a catalog entry's plugin process, so the test can tell
// the processes apart in /proc.
const entryEnv = "HSMKMS_E2E_ENTRY="

// registerEntry registers command (in the plugin directory, with SHA-256
// sum sha) in the catalog as secret plugin name, with env added to the
// library directories and the entry's mark.
func (v *vaultServer) registerEntry(name, command, sha string, env ...string) {
	v.t.Helper()
	status, resp := v.raw("PUT", "sys/plugins/catalog/secret/"+name, v.token, map[string]interface{}{
		"sha256":  sha,
		"command": command,
		"env":     append([]string{"HSMKMS_LIBRARY_DIRS=" + libraryDirs, entryEnv + name}, env...),
	})
	if status != http.StatusNoContent && status != http.StatusOK {
		v.t.Fatalf("registering %s in the catalog: %d %v", name, status, resp)
	}
}

// entryPIDs are the live plugin processes of catalog entry name under v
// whose environment holds every one of env too.
func entryPIDs(v *vaultServer, name string, env ...string) []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		state, ppid, ok := procStat(pid)
		if !ok || ppid != v.cmd.Process.Pid || state == "Z" {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		has := strings.Split(string(raw), "\x00")
		if slices.Contains(has, entryEnv+name) && !slices.ContainsFunc(env, func(e string) bool { return !slices.Contains(has, e) }) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// entryPID is the one plugin process of catalog entry name (with env in
// its environment); Vault may still be starting it.
func entryPID(t *testing.T, v *vaultServer, name string, env ...string) int {
	t.Helper()
	var pids []int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if pids = entryPIDs(v, name, env...); len(pids) == 1 {
			return pids[0]
		}
	}
	t.Fatalf("plugin processes of catalog entry %s with %v: %v, want one", name, env, pids)
	return 0
}

// trustCall sends one request and fails t on a 5xx: no input in these
// tests may get one.
func trustCall(t *testing.T, v *vaultServer, method, path, token string, body map[string]interface{}) (int, map[string]interface{}) {
	t.Helper()
	status, resp := v.raw(method, path, token, body)
	if status >= 500 {
		t.Errorf("%s %s: %d %v; no request of this test may get a 5xx", method, path, status, resp)
	}
	return status, resp
}

// trustRefused wants a 400 whose message holds every one of want.
func trustRefused(t *testing.T, v *vaultServer, what, method, path, token string, body map[string]interface{}, want ...string) string {
	t.Helper()
	status, resp := trustCall(t, v, method, path, token, body)
	msg := fmt.Sprint(resp["errors"])
	t.Logf("%s: %d %s", what, status, msg)
	if status != http.StatusBadRequest {
		t.Errorf("%s: %s %s answered %d %v, want 400", what, method, path, status, resp)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: message %q does not name %q", what, msg, w)
		}
	}
	return msg
}

// trustOK posts body to path and wants a 2xx; it returns the data.
func trustOK(t *testing.T, v *vaultServer, method, path string, body map[string]interface{}) map[string]interface{} {
	t.Helper()
	status, resp := trustCall(t, v, method, path, v.token, body)
	if status/100 != 2 {
		t.Fatalf("%s %s: %d %v", method, path, status, resp)
	}
	data, _ := resp["data"].(map[string]interface{})
	return data
}

// sealed is a plaintext a key sealed, to be opened again after each change.
type sealed struct {
	mount, key, ct, pt string
}

func sealSample(t *testing.T, v *vaultServer, mount, key, text string) sealed {
	t.Helper()
	pt := b64(text)
	ct := fmt.Sprint(trustOK(t, v, "POST", mount+"/encrypt/"+key, map[string]interface{}{"plaintext": pt})["ciphertext"])
	if !strings.HasPrefix(ct, "vault:v") {
		t.Fatalf("%s/encrypt/%s gave %q", mount, key, ct)
	}
	return sealed{mount, key, ct, pt}
}

// open decrypts the ciphertext and wants exactly its plaintext back.
func (s sealed) open(t *testing.T, v *vaultServer) {
	t.Helper()
	got := trustOK(t, v, "POST", s.mount+"/decrypt/"+s.key, map[string]interface{}{"ciphertext": s.ct})["plaintext"]
	if got != s.pt {
		t.Errorf("%s/decrypt/%s of %.24s…: %v, want %s", s.mount, s.key, s.ct, got, s.pt)
	}
}

// lookInto makes mount's plugin process search the token (a dry-run
// tidy) and wants it to see the object labelled label. SoftHSM 2.6.1
// loses sight of another process's new objects for good once its own
// process writes to the token after them: the write updates the token's
// generation counter past the other's change, so it never re-reads the
// token directory. A search before its next write re-reads it.
func lookInto(t *testing.T, v *vaultServer, mount, label string) {
	t.Helper()
	for _, entry := range trustOK(t, v, "POST", mount+"/tidy", nil)["other_mounts"].(map[string]interface{}) {
		for _, o := range entry.(map[string]interface{})["objects"].([]interface{}) {
			if o.(map[string]interface{})["label"] == label {
				return
			}
		}
	}
	t.Fatalf("%s/ does not see %s on the token", mount, label)
}

// statusPart is one part of GET mount/status.
func statusPart(t *testing.T, v *vaultServer, mount, part string) map[string]interface{} {
	t.Helper()
	m, ok := trustOK(t, v, "GET", mount+"/status", nil)[part].(map[string]interface{})
	if !ok {
		t.Fatalf("%s/status has no %s", mount, part)
	}
	return m
}

func fileSHA256(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:]), nil
}

// mountUUID is the uuid a mount's objects carry, as its own tidy says.
func mountUUID(t *testing.T, v *vaultServer, mount string) string {
	t.Helper()
	uuid := fmt.Sprint(trustOK(t, v, "POST", mount+"/tidy", nil)["mount_uuid"])
	if len(uuid) != 36 {
		t.Fatalf("%s/tidy: mount_uuid %q", mount, uuid)
	}
	return uuid
}

// tokenObject is one object on the token as this process reads it.
type tokenObject struct {
	label, id string
	class     uint
}

// tokenObjects are the token's objects whose labels start with prefix,
// sorted by label, id and class.
func tokenObjects(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, prefix string) []tokenObject {
	t.Helper()
	var out []tokenObject
	for _, h := range wrFind(t, p11, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}) {
		attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
		})
		if err != nil || !strings.HasPrefix(string(attrs[0].Value), prefix) {
			continue
		}
		out = append(out, tokenObject{string(attrs[0].Value), hex.EncodeToString(attrs[1].Value), uint(wrULong(attrs[2].Value))})
	}
	slices.SortFunc(out, func(a, b tokenObject) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	})
	return out
}

// ceremonyKEK makes a KEK as an HSM's tools would, from this process
// before any plugin opens tok: AES-256, wrap and unwrap only, sensitive,
// never extractable, labelled label. It is destroyed when t ends, after
// the Vault servers t starts later have stopped.
func ceremonyKEK(t *testing.T, tok *tokentest.Token, label string) []byte {
	t.Helper()
	c := &ceremony{tok: tok}
	t.Cleanup(func() { c.clearToken(t) })
	id := c.newID(t)
	p11, sh, done := ceremonySession(t, tok)
	defer done()
	template := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	if _, err := p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, template); err != nil {
		t.Fatalf("generating the ceremony KEK %s: %v", label, err)
	}
	return id
}

// checkNoPluginExit wants no plugin panic and no plugin process exit in
// v's log: every mount of the test stays mounted until it ends, but for
// b/, whose catalog entry still serves b2/.
func checkNoPluginExit(t *testing.T, v *vaultServer) {
	t.Helper()
	raw, err := os.ReadFile(v.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, "panic") || strings.Contains(line, "plugin process exited") {
			t.Errorf("Vault's log: %s", line)
		}
	}
}

// twoProcs is the world of TestTwoPluginProcesses: mounts a/ (entry
// hsmkms-a) and b/ (entry hsmkms-b) on one token, a2/ and b2/ (one per
// entry) on a KEK made by the HSM's tools.
type twoProcs struct {
	v             *vaultServer
	tok           *tokentest.Token
	p11           *pkcs11.Ctx
	sh            pkcs11.SessionHandle
	uuidA, uuidB  string
	pidA, pidB    int
	kekL          string // the ceremony KEK's label
	kekLID        []byte
	samplesA      []sealed // a/'s, opened after every step
	samplesB      []sealed // b/'s, opened until b/ is unmounted
	samplesShared []sealed // a2/'s, and b2/'s after the restore
	objectsOfB    []tokenObject
	limitedToken  string // may use a/ and b/, not read sys/mounts
	backupOfWA    string // a/'s wrapped key wa
	kekLabelA     string // a/'s own KEK, version 1
	kekIDA        []byte
	clusterID     string
	accessorB     string
	slot          string // the token's slot, as the plugin sees it
	deletedB      bool
}

// TestTwoPluginProcesses runs mounts of two catalog entries, so two plugin
// processes, on one token, and checks through HTTP that neither process
// can take, use or destroy what the other's mounts own: tidy, kek_label,
// adopt and restore. Every answer is checked: no 5xx, and at the end both
// plugin processes are the ones that started (no crash).
func TestTwoPluginProcesses(t *testing.T) {
	eachToken(t, testTwoPluginProcesses)
}

func testTwoPluginProcesses(t *testing.T, tok *tokentest.Token) {
	tag := make([]byte, 4)
	if _, err := rand.Read(tag); err != nil {
		t.Fatal(err)
	}
	w := &twoProcs{tok: tok, kekL: "ceremony-kek-" + hex.EncodeToString(tag)}
	// Before any plugin process opens the token.
	w.kekLID = ceremonyKEK(t, tok, w.kekL)

	v := startDevVault(t, tok)
	w.v = v
	v.registerEntry("hsmkms-a", pluginName, pluginSHA)
	v.registerEntry("hsmkms-b", pluginName, pluginSHA)
	for _, m := range []struct{ path, entry string }{{"a", "hsmkms-a"}, {"b", "hsmkms-b"}, {"a2", "hsmkms-a"}, {"b2", "hsmkms-b"}} {
		v.cli("secrets", "enable", "-path="+m.path, m.entry)
	}
	v.configure("a")
	v.configure("b")
	v.configure("a2", "kek_label="+w.kekL)
	v.configure("b2", "kek_label="+w.kekL)
	w.pidA, w.pidB = entryPID(t, v, "hsmkms-a"), entryPID(t, v, "hsmkms-b")
	if w.pidA == w.pidB {
		t.Fatalf("one plugin process (%d) for both catalog entries", w.pidA)
	}
	w.uuidA, w.uuidB = mountUUID(t, v, "a"), mountUUID(t, v, "b")
	t.Logf("a/ is mount %s in plugin process %d, b/ is mount %s in plugin process %d", w.uuidA, w.pidA, w.uuidB, w.pidB)

	mounts, err := v.client.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	w.accessorB = mounts["b/"].Accessor
	health, err := v.client.Sys().Health()
	if err != nil {
		t.Fatal(err)
	}
	w.clusterID = health.ClusterID
	token, _ := trustOK(t, v, "GET", "b/config", nil)["token"].(map[string]interface{})
	w.slot = fmt.Sprint(token["slot"])

	// Each process searches the token after the other's last write and
	// before its own next one (lookInto), so SoftHSM shows it all.
	trustOK(t, v, "POST", "b/keys/kb", map[string]interface{}{"type": "aes256-gcm96"})
	trustOK(t, v, "POST", "b/keys/kb-ec", map[string]interface{}{"type": "ecdsa-p256"})
	lookInto(t, v, "a", "hsmkms/"+w.uuidB+"/kb-ec/v1")
	trustOK(t, v, "POST", "a/keys/ka", map[string]interface{}{"type": "aes256-gcm96"})
	trustOK(t, v, "POST", "a/keys/wa", map[string]interface{}{"type": "aes256-gcm96", "residency": "wrapped"})
	lookInto(t, v, "b", "hsmkms/"+w.uuidA+"/ka/v1")
	w.samplesA = []sealed{sealSample(t, v, "a", "ka", "a's hsm key"), sealSample(t, v, "a", "wa", "a's wrapped key")}
	w.samplesB = []sealed{sealSample(t, v, "b", "kb", "b's hsm key")}

	policy := filepath.Join(t.TempDir(), "no-mounts.hcl")
	writeFile(t, policy, `path "a/*" { capabilities = ["create", "read", "update"] }
path "b/*" { capabilities = ["create", "read", "update"] }`)
	v.cli("policy", "write", "no-mounts", policy)
	w.limitedToken = strings.TrimSpace(v.cli("token", "create", "-policy=no-mounts", "-field=token"))
	if status, resp := v.raw("GET", "sys/mounts", w.limitedToken, nil); status != http.StatusForbidden {
		t.Fatalf("sys/mounts with the no-mounts token: %d %v, want 403", status, resp)
	}

	// One session of this process for the whole test: a module is
	// initialised once per process.
	w.p11, w.sh = openTokenSession(t, tok)
	w.objectsOfB = tokenObjects(t, w.p11, w.sh, "hsmkms/"+w.uuidB+"/")
	if len(w.objectsOfB) == 0 {
		t.Fatalf("this process sees no object of b/ (hsmkms/%s/) on the %s token", w.uuidB, tok.Kind)
	}
	kekObjects := tokenObjects(t, w.p11, w.sh, "hsmkms-kek/"+w.uuidA+"/")
	if len(kekObjects) != 1 || kekObjects[0].label != "hsmkms-kek/"+w.uuidA+"/v1" {
		t.Fatalf("a/'s KEK on the token: %v, want one labelled hsmkms-kek/%s/v1", kekObjects, w.uuidA)
	}
	w.kekLabelA = kekObjects[0].label
	if w.kekIDA, err = hex.DecodeString(kekObjects[0].id); err != nil {
		t.Fatal(err)
	}

	for _, step := range []struct {
		name string
		run  func(t *testing.T, w *twoProcs)
	}{
		{"AdoptRefusesAnotherMountsObjects", testTwoProcAdopt},
		{"RestoreAcrossMounts", testTwoProcRestore},
		{"KEKLabels", testTwoProcKEKLabels},
		{"Tidy", testTwoProcTidy}, // last: it unmounts b/
	} {
		t.Run(step.name, func(t *testing.T) {
			w.v = v.forTest(t)
			step.run(t, w)
			w.checkAll(t)
		})
	}

	if pid := entryPID(t, v, "hsmkms-a"); pid != w.pidA {
		t.Errorf("hsmkms-a's plugin process is %d, it was %d: it died during the test", pid, w.pidA)
	}
	if pid := entryPID(t, v, "hsmkms-b"); pid != w.pidB {
		t.Errorf("hsmkms-b's plugin process is %d, it was %d: it died during the test", pid, w.pidB)
	}
	checkNoPluginExit(t, v)
}

// checkAll opens every sealed plaintext and wants a/'s keys unchanged.
func (w *twoProcs) checkAll(t *testing.T) {
	t.Helper()
	for _, s := range w.samplesA {
		s.open(t, w.v)
	}
	if !w.deletedB {
		for _, s := range w.samplesB {
			s.open(t, w.v)
		}
	}
	for _, s := range w.samplesShared {
		s.open(t, w.v)
	}
	for _, key := range []string{"ka", "wa"} {
		if data := trustOK(t, w.v, "GET", "a/keys/"+key, nil); fmt.Sprint(data["latest_version"]) != "1" {
			t.Errorf("a/keys/%s: latest_version %v, want 1", key, data["latest_version"])
		}
	}
}

// B cannot adopt A's objects, named by label, CKA_ID or hsm_ref, nor A's
// KEK, nor a KEK made by the HSM's tools.
func testTwoProcAdopt(t *testing.T, w *twoProcs) {
	v := w.v
	ka := wrObject(t, trustOK(t, v, "GET", "a/keys/ka", nil), 1)
	// Each refusal must be for the reason given: the object was found
	// and is a plugin object or a KEK, not merely out of sight.
	const (
		pluginObject = "cannot be adopted"
		aKEK         = "key-encryption key"
	)
	cases := []struct {
		name          string
		body          map[string]interface{}
		field, reason string
	}{
		{"a's key object by label", map[string]interface{}{"label": fmt.Sprint(ka["label"])}, "label", pluginObject},
		{"a's key object by CKA_ID", map[string]interface{}{"id": fmt.Sprint(ka["id"])}, "id", pluginObject},
		{"a's key object by hsm_ref", map[string]interface{}{"hsm_ref": "hsm::" + w.slot + "::" + fmt.Sprint(ka["label"])}, "hsm_ref", pluginObject},
		{"a's HMAC companion by CKA_ID", map[string]interface{}{"id": fmt.Sprint(ka["hmac_id"])}, "id", pluginObject},
		{"a's KEK by CKA_ID", map[string]interface{}{"id": hex.EncodeToString(w.kekIDA)}, "id", aKEK},
		{"a's KEK by label", map[string]interface{}{"label": w.kekLabelA}, "label", aKEK},
		{"the tools' KEK by label", map[string]interface{}{"label": w.kekL}, "label", aKEK},
		{"the tools' KEK by CKA_ID", map[string]interface{}{"id": hex.EncodeToString(w.kekLID)}, "id", aKEK},
	}
	if ka["label"] != "hsmkms/"+w.uuidA+"/ka/v1" || ka["hmac_id"] == nil {
		t.Fatalf("a/keys/ka v1: %v, want label hsmkms/%s/ka/v1 and an hmac_id", ka, w.uuidA)
	}
	for i, tc := range cases {
		name := fmt.Sprintf("taken-%d", i)
		trustRefused(t, v, tc.name, "POST", "b/keys/"+name+"/adopt", v.token, tc.body, tc.field, tc.reason)
		if status, resp := trustCall(t, v, "GET", "b/keys/"+name, v.token, nil); status != http.StatusNotFound {
			t.Errorf("%s: the refused adopt left b/keys/%s: %d %v", tc.name, name, status, resp)
		}
		// Nor onto an existing key of b/ as a new version.
		trustRefused(t, v, tc.name+" as a version of kb", "POST", "b/keys/kb/adopt", v.token, tc.body, tc.field, tc.reason)
	}
	if data := trustOK(t, v, "GET", "b/keys/kb", nil); fmt.Sprint(data["latest_version"]) != "1" {
		t.Errorf("b/keys/kb after the refused adopts: latest_version %v", data["latest_version"])
	}
	if got := wrObject(t, trustOK(t, v, "GET", "a/keys/ka", nil), 1); fmt.Sprint(got) != fmt.Sprint(ka) {
		t.Errorf("a/keys/ka v1 changed: %v, was %v", got, ka)
	}
}

// A's backup does not restore in B (A's KEK is A's), nor in a mount of A's
// own process with another KEK; a backup made under a KEK of the HSM's
// tools, which both mounts were given, restores in the other process and
// opens what the first made.
func testTwoProcRestore(t *testing.T, w *twoProcs) {
	v := w.v
	w.backupOfWA = fmt.Sprint(trustOK(t, v, "GET", "a/backup/wa", nil)["backup"])
	for _, mount := range []string{"b", "a2"} {
		trustRefused(t, v, "a/'s backup restored in "+mount+"/", "POST", mount+"/restore", v.token,
			map[string]interface{}{"backup": w.backupOfWA}, w.uuidA)
		if status, resp := trustCall(t, v, "GET", mount+"/keys/wa", v.token, nil); status != http.StatusNotFound {
			t.Errorf("the refused restore left %s/keys/wa: %d %v", mount, status, resp)
		}
	}
	// A backup that names a's KEK by its CKA_ID under another label is
	// still a's: the token says whose it is.
	raw, err := base64.StdEncoding.DecodeString(w.backupOfWA)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]interface{}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range doc["keks"].(map[string]interface{}) {
		k.(map[string]interface{})["label"] = w.kekL
	}
	forged, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	trustRefused(t, v, "a/'s backup relabelled, restored in b/", "POST", "b/restore/forged", v.token,
		map[string]interface{}{"backup": base64.StdEncoding.EncodeToString(forged)}, w.uuidA)

	for _, mount := range []string{"a2", "b2"} {
		st := statusPart(t, v, mount, "kek")
		if fmt.Sprint(st["versions"]) != "[1]" {
			t.Fatalf("%s/status kek: %v", mount, st)
		}
	}
	trustOK(t, v, "POST", "a2/keys/shared", map[string]interface{}{"type": "aes256-gcm96", "residency": "wrapped"})
	v1 := sealSample(t, v, "a2", "shared", "sealed by a2 under v1")
	trustOK(t, v, "POST", "a2/keys/shared/rotate", nil)
	v2 := sealSample(t, v, "a2", "shared", "sealed by a2 under v2")
	if !strings.HasPrefix(v1.ct, "vault:v1:") || !strings.HasPrefix(v2.ct, "vault:v2:") {
		t.Fatalf("a2 ciphertexts %q and %q", v1.ct, v2.ct)
	}
	backup := fmt.Sprint(trustOK(t, v, "GET", "a2/backup/shared", nil)["backup"])
	restored := trustOK(t, v, "POST", "b2/restore", map[string]interface{}{"backup": backup})
	if restored["name"] != "shared" || fmt.Sprint(restored["latest_version"]) != "2" {
		t.Errorf("b2/restore answered %v", restored)
	}
	for _, s := range []sealed{v1, v2} {
		s.open(t, v)
		s.mount = "b2"
		s.open(t, v)
		w.samplesShared = append(w.samplesShared, s)
	}
	back := sealSample(t, v, "b2", "shared", "sealed by b2")
	back.mount = "a2"
	back.open(t, v)
	w.samplesShared = append(w.samplesShared, v1, v2, back)
}

// kek_label cannot name a KEK a mount made, in another process or this
// one, nor a plugin object; A's wrapped keys keep working through A's KEK
// rotation and trim.
func testTwoProcKEKLabels(t *testing.T, w *twoProcs) {
	v := w.v
	v.cli("secrets", "enable", "-path=c", "hsmkms-b")
	v.cli("secrets", "enable", "-path=c-a", "hsmkms-a")
	for _, mount := range []string{"c", "c-a"} {
		for _, label := range []string{w.kekLabelA, "hsmkms/" + w.uuidA + "/ka/v1"} {
			body := map[string]interface{}{"library": w.tok.Library, "token_label": w.tok.Label, "pin": w.tok.PIN, "kek_label": label}
			if w.tok.InitArgs != "" {
				body["init_args"] = w.tok.InitArgs
			}
			trustRefused(t, v, mount+"/ with kek_label "+label, "POST", mount+"/config", v.token, body, "kek_label")
		}
		if status, resp := trustCall(t, v, "GET", mount+"/config", v.token, nil); status != http.StatusNotFound && (status != 200 || resp["data"] != nil) {
			t.Errorf("%s/config after the refusals: %d %v, want no config", mount, status, resp)
		}
	}
	if got := tokenObjects(t, w.p11, w.sh, "hsmkms-kek/"+w.uuidA+"/"); len(got) != 1 || got[0].label != w.kekLabelA {
		t.Errorf("a/'s KEKs after the refusals: %v", got)
	}

	trustOK(t, v, "POST", "a/config/kek/rotate", nil)
	waitRewrapDone(t, v, "a")
	for _, s := range w.samplesA {
		s.open(t, v)
	}
	w.samplesA = append(w.samplesA, sealSample(t, v, "a", "wa", "a's wrapped key after the KEK rotation"))
	trimmed := trustOK(t, v, "POST", "a/config/kek/trim", map[string]interface{}{"min_version": 2})
	if fmt.Sprint(trimmed["destroyed_versions"]) != "[1]" {
		t.Errorf("a/config/kek/trim: %v, want destroyed_versions [1]", trimmed)
	}
	got := tokenObjects(t, w.p11, w.sh, "hsmkms-kek/"+w.uuidA+"/")
	if len(got) != 1 || got[0].label != "hsmkms-kek/"+w.uuidA+"/v2" {
		t.Errorf("a/'s KEKs on the token after the trim: %v, want only v2", got)
	}
	if o := wrObject(t, trustOK(t, v, "GET", "a/keys/wa", nil), 1); fmt.Sprint(o["kek_version"]) != "2" {
		t.Errorf("a/keys/wa after the rotation: %v, want kek_version 2", o)
	}
	// The backup made under v1 no longer restores, and says so.
	trustRefused(t, v, "a/'s backup under a trimmed KEK", "POST", "a/restore/wa-again", v.token,
		map[string]interface{}{"backup": w.backupOfWA}, "KEK")
	// The tools' KEK, which a2/ and b2/ use, was never touched.
	if n := len(wrFind(t, w.p11, w.sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, w.kekLID)})); n != 1 {
		t.Errorf("%d objects with the tools' KEK's CKA_ID", n)
	}
}

// waitRewrapDone polls mount's status until its KEK rewrap job is done.
func waitRewrapDone(t *testing.T, v *vaultServer, mount string) {
	t.Helper()
	var kek map[string]interface{}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		kek = statusPart(t, v, mount, "kek")
		if job, _ := kek["rewrap"].(map[string]interface{}); job != nil && job["done"] == true {
			return
		}
	}
	t.Fatalf("%s: the rewrap job is not done after 60 s: %v", mount, kek)
}

// A's tidy sees B's objects, refuses to destroy them while B is mounted
// (or while it cannot see sys/mounts), and destroys them, all and only
// them, once B is unmounted.
func testTwoProcTidy(t *testing.T, w *twoProcs) {
	v := w.v
	dry := trustOK(t, v, "POST", "a/tidy", nil)
	others, _ := dry["other_mounts"].(map[string]interface{})
	b, _ := others[w.uuidB].(map[string]interface{})
	if b == nil {
		t.Fatalf("a/tidy does not list b/ (%s) under other_mounts: %v", w.uuidB, dry)
	}
	if b["alive_in_this_process"] != false || b["accessor"] != w.accessorB || b["cluster_id"] != w.clusterID {
		t.Errorf("a/tidy says of b/: alive_in_this_process %v, accessor %v, cluster_id %v; want false, %s, %s",
			b["alive_in_this_process"], b["accessor"], b["cluster_id"], w.accessorB, w.clusterID)
	}
	var listed []string
	for _, o := range b["objects"].([]interface{}) {
		m := o.(map[string]interface{})
		listed = append(listed, fmt.Sprint(m["label"], " ", m["object_id"]))
	}
	var onToken []string
	for _, o := range tokenObjects(t, w.p11, w.sh, "hsmkms/"+w.uuidB+"/") {
		onToken = append(onToken, o.label+" "+o.id)
	}
	slices.Sort(listed)
	slices.Sort(onToken)
	if !slices.Equal(listed, onToken) {
		t.Errorf("a/tidy lists b/'s objects as %v; the token has %v", listed, onToken)
	}
	if orphans, _ := dry["orphan_objects"].([]interface{}); len(orphans) != 0 {
		t.Errorf("a/tidy finds orphans of a/: %v", orphans)
	}

	destroy := func(token string) map[string]interface{} {
		body := map[string]interface{}{"destroy": true, "destroy_mounts": w.uuidB, "vault_addr": v.addr}
		if token != "" {
			body["vault_token"] = token
		}
		return body
	}
	bIntact := func(what string) {
		t.Helper()
		if got := tokenObjects(t, w.p11, w.sh, "hsmkms/"+w.uuidB+"/"); !slices.Equal(got, w.objectsOfB) {
			t.Errorf("%s: b/'s objects on the token are %v, were %v", what, got, w.objectsOfB)
		}
		for _, s := range w.samplesB {
			s.open(t, v)
		}
		sealSample(t, v, "b", "kb", "b after "+what).open(t, v)
		sig := trustOK(t, v, "POST", "b/sign/kb-ec", map[string]interface{}{"input": b64(what)})["signature"]
		if trustOK(t, v, "POST", "b/verify/kb-ec", map[string]interface{}{"input": b64(what), "signature": sig})["valid"] != true {
			t.Errorf("%s: b/'s EC key's signature does not verify", what)
		}
	}
	w.objectsOfB = tokenObjects(t, w.p11, w.sh, "hsmkms/"+w.uuidB+"/")
	trustRefused(t, v, "destroy_mounts without vault_token", "POST", "a/tidy", v.token, destroy(""), "vault_token")
	bIntact("destroy_mounts without vault_token")
	trustRefused(t, v, "destroy_mounts with a token that cannot read sys/mounts", "POST", "a/tidy", v.token, destroy(w.limitedToken), "sys/mounts", "nothing was destroyed")
	bIntact("destroy_mounts with a token that cannot read sys/mounts")
	trustRefused(t, v, "destroy_mounts of a mounted b/", "POST", "a/tidy", v.token, destroy(v.token), "b/", w.accessorB, "nothing was destroyed")
	bIntact("destroy_mounts of a mounted b/")
	// Nor from b/'s own process, where b/ is alive.
	trustRefused(t, v, "b2/tidy destroy_mounts of b/", "POST", "b2/tidy", v.token, destroy(v.token), w.uuidB)
	bIntact("b2/tidy destroy_mounts of b/")

	v.cli("secrets", "disable", "b")
	w.deletedB = true
	var wantIDs []string
	for _, o := range w.objectsOfB {
		if !slices.Contains(wantIDs, o.id) {
			wantIDs = append(wantIDs, o.id)
		}
	}
	slices.Sort(wantIDs)
	// The no-mounts token still cannot prove b/ gone.
	trustRefused(t, v, "destroy_mounts of an unmounted b/ with a token that cannot read sys/mounts", "POST", "a/tidy", v.token, destroy(w.limitedToken), "sys/mounts")
	if got := tokenObjects(t, w.p11, w.sh, "hsmkms/"+w.uuidB+"/"); len(got) == 0 {
		t.Fatalf("a refused tidy destroyed b/'s objects")
	}
	done := trustOK(t, v, "POST", "a/tidy", destroy(v.token))
	var destroyed []string
	for _, id := range done["destroyed_object_ids"].([]interface{}) {
		destroyed = append(destroyed, fmt.Sprint(id))
	}
	slices.Sort(destroyed)
	if !slices.Equal(destroyed, wantIDs) {
		t.Errorf("a/tidy destroyed %v; b/'s objects were %v", destroyed, wantIDs)
	}
	if left := tokenObjects(t, w.p11, w.sh, "hsmkms/"+w.uuidB+"/"); len(left) != 0 {
		t.Errorf("b/'s objects left on the token: %v", left)
	}
	t.Logf("tidy destroyed the %d objects (%d CKA_IDs) of the unmounted b/; its KEK %v stays on the token",
		len(w.objectsOfB), len(wantIDs), tokenObjects(t, w.p11, w.sh, "hsmkms-kek/"+w.uuidB+"/"))
	for _, mount := range []string{"a", "a2", "b2"} {
		if orphans, _ := trustOK(t, v, "POST", mount+"/tidy", nil)["orphan_objects"].([]interface{}); len(orphans) != 0 {
			t.Errorf("%s/tidy after b/ went: orphans %v", mount, orphans)
		}
	}
	sealSample(t, v, "a", "ka", "a after b/ went").open(t, v)
	sealSample(t, v, "b2", "shared", "b2 after b/ went").open(t, v)
}

var (
	crashBuild     sync.Once
	crashBinary    string
	crashBinarySHA string
	crashBuildErr  error
)

// buildCrashPlugin builds the plugin with its crash points
// (-tags hsmkms_crashpoints) into the plugin directory, beside the release
// build, once per run.
func buildCrashPlugin(t *testing.T) (string, string) {
	t.Helper()
	crashBuild.Do(func() {
		crashBinary = pluginName + "-crashpoints"
		out := filepath.Join(pluginDir, crashBinary)
		build := exec.Command("go", "build", "-tags", "hsmkms_crashpoints", "-o", out, "../cmd/"+pluginName)
		build.Env = append(os.Environ(), "CGO_ENABLED=1")
		if msg, err := build.CombinedOutput(); err != nil {
			crashBuildErr = fmt.Errorf("building the plugin with -tags hsmkms_crashpoints: %w: %s", err, msg)
			return
		}
		crashBinarySHA, crashBuildErr = fileSHA256(out)
	})
	if crashBuildErr != nil {
		t.Fatal(crashBuildErr)
	}
	return crashBinary, crashBinarySHA
}

// TestKillDuringRotation kills the plugin (SIGKILL, from a crash point of
// a -tags hsmkms_crashpoints build) after a rotation made the new
// version's objects and before it stored them, on a real Vault, and waits
// for Vault's WAL rollback to destroy them: the key keeps version 1 only
// and works, and the next rotation works.
func TestKillDuringRotation(t *testing.T) {
	eachToken(t, testKillDuringRotation)
}

func testKillDuringRotation(t *testing.T, tok *tokentest.Token) {
	command, sha := buildCrashPlugin(t)
	v := startDevVault(t, tok)
	const entry = "hsmkms-crash"
	// The rollback's minimum age stays at its 5 minutes until the crash
	// has been seen on the token, so that no rollback can run before.
	v.registerEntry(entry, command, sha)
	v.cli("secrets", "enable", "-path=crash", entry)
	v.configure("crash")
	trustOK(t, v, "POST", "crash/keys/rot", map[string]interface{}{"type": "aes256-gcm96"})
	before := sealSample(t, v, "crash", "rot", "sealed before the crash")
	owner := mountUUID(t, v, "crash")
	v2 := "hsmkms/" + owner + "/rot/v2"

	v.registerEntry(entry, command, sha, "HSMKMS_CRASH_AT=after-version-object")
	trustOK(t, v, "PUT", "sys/plugins/reload/backend", map[string]interface{}{"plugin": entry})
	armed := entryPID(t, v, entry, "HSMKMS_CRASH_AT=after-version-object")
	status, resp := v.raw("POST", "crash/keys/rot/rotate", v.token, map[string]interface{}{})
	t.Logf("rotate with the crash point armed: %d %v", status, resp)
	if status/100 == 2 {
		t.Fatalf("the rotation succeeded: the crash point did not fire")
	}
	// Vault answers as soon as the dying process has closed its socket,
	// which the kernel does before the process has finished exiting: the
	// process is seen to end, not assumed to have.
	for deadline := time.Now().Add(10 * time.Second); processRunning(armed); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("plugin process %d still runs 10s after the rotation failed", armed)
		}
	}

	// What checkNoPluginExit looks for is what Vault logs of this death
	// (of this process: the reload above logged its predecessor's).
	exited := regexp.MustCompile(fmt.Sprintf(`plugin process exited: .* id=%d\b`, armed))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if raw, _ := os.ReadFile(v.logPath); exited.Match(raw) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Vault's log does not say plugin process %d exited", armed)
		}
	}

	p11, sh := openTokenSession(t, tok)
	left := tokenObjects(t, p11, sh, v2)
	var versionObjects, hmacObjects int
	for _, o := range left {
		switch o.label {
		case v2:
			versionObjects++
		case v2 + "/hmac":
			hmacObjects++
		}
	}
	// Vault retries a request once when the plugin died under it, so the
	// crash may have happened twice.
	if versionObjects == 0 || versionObjects != hmacObjects {
		t.Fatalf("after the crash the token holds %v; want version 2's object and its HMAC key (once or twice)", left)
	}
	t.Logf("the crash left %d object(s) labelled %s and as many HMAC keys", versionObjects, v2)

	v.registerEntry(entry, command, sha, "HSMKMS_WAL_ROLLBACK_MIN_AGE=1s")
	trustOK(t, v, "PUT", "sys/plugins/reload/backend", map[string]interface{}{"plugin": entry})
	start := time.Now()
	if data := trustOK(t, v, "GET", "crash/keys/rot", nil); fmt.Sprint(data["latest_version"]) != "1" {
		t.Fatalf("crash/keys/rot after the crash: latest_version %v, want 1 (version 2 was never stored)", data["latest_version"])
	}
	if pid := entryPID(t, v, entry, "HSMKMS_WAL_ROLLBACK_MIN_AGE=1s"); pid == armed {
		t.Fatalf("the plugin process %d that crashed still serves", pid)
	}
	// Vault's rollback manager visits each mount once a minute.
	var waited time.Duration
	for {
		left = tokenObjects(t, p11, sh, v2)
		waited = time.Since(start)
		if len(left) == 0 {
			break
		}
		if waited > 150*time.Second {
			t.Fatalf("Vault's WAL rollback did not destroy %v in %v", left, waited.Round(time.Second))
		}
		time.Sleep(time.Second)
	}
	t.Logf("Vault's WAL rollback destroyed the crashed version's objects %v after the plugin came back", waited.Round(time.Second))

	data := trustOK(t, v, "GET", "crash/keys/rot", nil)
	if fmt.Sprint(data["latest_version"]) != "1" || len(wrObjects(t, data)) != 1 {
		t.Errorf("crash/keys/rot after the rollback: latest_version %v, hsm_objects %v; want version 1 only", data["latest_version"], data["hsm_objects"])
	}
	before.open(t, v)
	sealSample(t, v, "crash", "rot", "sealed after the rollback").open(t, v)
	trustOK(t, v, "POST", "crash/keys/rot/rotate", nil)
	data = trustOK(t, v, "GET", "crash/keys/rot", nil)
	o := wrObject(t, data, 2)
	now := tokenObjects(t, p11, sh, v2)
	if fmt.Sprint(data["latest_version"]) != "2" || len(now) != 2 || o["label"] != v2 || !slices.ContainsFunc(now, func(x tokenObject) bool { return x.id == o["id"] }) {
		t.Errorf("after a new rotation: latest_version %v, v2 %v; token %v", data["latest_version"], o, now)
	}
	after := sealSample(t, v, "crash", "rot", "sealed under the new version 2")
	if !strings.HasPrefix(after.ct, "vault:v2:") {
		t.Errorf("encrypt after the new rotation: %q, want vault:v2:", after.ct)
	}
	after.open(t, v)
	before.open(t, v)
}
