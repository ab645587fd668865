package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// wycheproofDir holds a copy of ../shared/testdata/wycheproof, kept in the
// repository so that a fresh clone (CI) has the vectors.
const wycheproofDir = "testdata/wycheproof"

// wpWorkers bounds the requests in flight to one Vault: enough to hide the
// round trips, few enough to leave the session pool (16) some slack.
const wpWorkers = 8

// wpMaxReports bounds the mismatches reported one by one per file; the rest
// are counted.
const wpMaxReports = 25

// TestWycheproofThroughTheAPI feeds the Wycheproof vectors of AES-GCM, ECDSA
// P-256 (DER and P1363), RSA PKCS#1 v1.5 and PSS signatures and HMAC-SHA-256
// through kms/decrypt, kms/verify and kms/hmac with the vectors' keys
// imported, and checks each vector's expected result.
func TestWycheproofThroughTheAPI(t *testing.T) {
	eachToken(t, testWycheproofThroughTheAPI)
}

func testWycheproofThroughTheAPI(t *testing.T, tok *tokentest.Token) {
	start := time.Now()
	files := loadWycheproof(t)
	v := startDevVault(t, tok)
	// Each distinct key of the vectors is a key of the mount (408 of them),
	// past the default quota of 20.
	v.configure("kms", "max_keys=0")
	w := &wpRun{t: t, v: v, importProblems: map[string][]string{}}
	// Registered after startDevVault, so it runs while Vault is still up:
	// the token is shared with the package's other tests.
	t.Cleanup(w.deleteKeys)
	checks := time.Now()

	tallies := []*wpTally{
		w.aesGCM(files["aes_gcm_test.json"]),
		w.signatures(files["ecdsa_secp256r1_sha256_test.json"], wpSigECDSA),
		w.signatures(files["ecdsa_secp256r1_sha256_p1363_test.json"], wpSigECDSAP1363),
		w.signatures(files["rsa_signature_2048_sha256_test.json"], wpSigPKCS1),
		w.signatures(files["rsa_pss_2048_sha256_mgf1_32_test.json"], wpSigPSS),
	}
	tallies = append(tallies, w.hmacs(files["hmac_sha256_test.json"])...)

	w.reportImportProblems()
	for _, tl := range tallies {
		tl.report(t)
	}
	t.Logf("%s: Wycheproof wall time %v (%v without starting Vault), %d keys imported",
		tok.Kind, time.Since(start).Round(time.Millisecond), time.Since(checks).Round(time.Millisecond), len(w.keys))
}

// loadWycheproof reads the vector files; a missing one is a failure, never a
// skip: a test that silently checks nothing would pass.
func loadWycheproof(t *testing.T) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, name := range []string{
		"aes_gcm_test.json",
		"ecdsa_secp256r1_sha256_test.json",
		"ecdsa_secp256r1_sha256_p1363_test.json",
		"rsa_signature_2048_sha256_test.json",
		"rsa_pss_2048_sha256_mgf1_32_test.json",
		"hmac_sha256_test.json",
	} {
		b, err := os.ReadFile(filepath.Join(wycheproofDir, name))
		if err != nil {
			wd, _ := os.Getwd()
			t.Fatalf("Wycheproof vectors missing: %v (looked in %s under %s; the copy comes from shared/testdata/wycheproof, see its README.md)",
				err, wycheproofDir, wd)
		}
		files[name] = b
	}
	return files
}

// hexBytes is a Wycheproof hex field.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}

// wpFile is what every vector file has at its top.
type wpFile[G any] struct {
	Name          string `json:"-"`
	Algorithm     string `json:"algorithm"`
	NumberOfTests int    `json:"numberOfTests"`
	TestGroups    []G    `json:"testGroups"`
}

func parseWycheproof[G any](t *testing.T, name string, raw []byte) wpFile[G] {
	t.Helper()
	var f wpFile[G]
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	f.Name = name
	return f
}

type wpTestCommon struct {
	TcID    int      `json:"tcId"`
	Comment string   `json:"comment"`
	Flags   []string `json:"flags"`
	Result  string   `json:"result"`
}

type wpAEADGroup struct {
	IvSize  int `json:"ivSize"`
	KeySize int `json:"keySize"`
	TagSize int `json:"tagSize"`
	Tests   []struct {
		wpTestCommon
		Key hexBytes `json:"key"`
		IV  hexBytes `json:"iv"`
		AAD hexBytes `json:"aad"`
		Msg hexBytes `json:"msg"`
		CT  hexBytes `json:"ct"`
		Tag hexBytes `json:"tag"`
	} `json:"tests"`
}

type wpSigGroup struct {
	PublicKeyPem string `json:"publicKeyPem"`
	// The JWK of the public key: publicKeyJwk in most files, keyJwk in
	// the PKCS#1 one.
	PublicKeyJwk map[string]interface{} `json:"publicKeyJwk"`
	KeyJwk       map[string]interface{} `json:"keyJwk"`
	PublicKeyDer hexBytes               `json:"publicKeyDer"`
	PublicKey    struct {
		Curve string   `json:"curve"`
		Wx    hexBytes `json:"wx"`
		Wy    hexBytes `json:"wy"`
	} `json:"publicKey"`
	Sha    string `json:"sha"`
	MgfSha string `json:"mgfSha"`
	SLen   *int   `json:"sLen"`
	Tests  []struct {
		wpTestCommon
		Msg hexBytes `json:"msg"`
		Sig hexBytes `json:"sig"`
	} `json:"tests"`
}

type wpMACGroup struct {
	KeySize int `json:"keySize"`
	TagSize int `json:"tagSize"`
	Tests   []struct {
		wpTestCommon
		Key hexBytes `json:"key"`
		Msg hexBytes `json:"msg"`
		Tag hexBytes `json:"tag"`
	} `json:"tests"`
}

// wpVector is one vector sent as one batch item, with what it must give.
type wpVector struct {
	wpTestCommon
	want    string // AES-GCM: base64 of the plaintext
	tag     []byte // HMAC: the vector's (maybe truncated) tag
	fullMAC []byte // HMAC: HMAC-SHA-256 computed here
}

func (v wpVector) String() string {
	return fmt.Sprintf("tcId %d (%s; %s %v)", v.TcID, v.Result, v.Comment, v.Flags)
}

// wpJob is one key: its import, then one batch request with its vectors.
type wpJob struct {
	key     string
	imp     map[string]interface{} // import body; nil when imported already
	want    wpImported             // what the import must answer
	path    string
	fields  map[string]interface{} // request fields beside batch_input
	items   []map[string]interface{}
	vectors []wpVector

	importErr string // why the key is not there, "" when it is
	batchErr  string // why the batch gave no per-item results
	results   []wpResult
}

type wpImported struct {
	typ           string
	publicOnly    bool
	transitLayout bool
}

// wpResult is one item's answer in the batch and, when the batch item
// failed, the same item's answer when sent alone: only a single request
// carries its own HTTP status, which tells a 400 from a 5xx.
type wpResult struct {
	item   map[string]interface{}
	status int
	single map[string]interface{}
	err    error
}

// failed tells whether the batch item has an error.
func (r wpResult) failed() bool {
	e, ok := r.item["error"]
	return ok && e != nil && e != ""
}

// alone describes the item's failure and its answer alone.
func (r wpResult) alone() string {
	if r.err != nil {
		return fmt.Sprintf("batch error %q; alone: %v", r.item["error"], r.err)
	}
	return fmt.Sprintf("batch error %q; alone: %d %v", r.item["error"], r.status, r.single["errors"])
}

type wpRun struct {
	t *testing.T
	v *vaultServer

	mu             sync.Mutex
	keys           []string            // imported, to delete at the end
	importProblems map[string][]string // problem → keys
}

// do sends one request; unlike vaultServer.raw it returns transport errors,
// so that it can run on the workers' goroutines.
func (w *wpRun) do(method, path string, body interface{}) (int, map[string]interface{}, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, w.v.addr+"/v1/"+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("X-Vault-Token", w.v.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, err
	}
	decoded := map[string]interface{}{}
	if len(raw) > 0 {
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if err := d.Decode(&decoded); err != nil {
			decoded = map[string]interface{}{"raw": string(raw)}
		}
	}
	return resp.StatusCode, decoded, nil
}

func wpParallel(n int, f func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range wpWorkers {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func (w *wpRun) run(jobs []*wpJob) {
	wpParallel(len(jobs), func(i int) { w.runJob(jobs[i]) })
}

func (w *wpRun) runJob(j *wpJob) {
	if j.imp != nil {
		status, body, err := w.do("POST", "kms/keys/"+j.key+"/import", j.imp)
		switch {
		case err != nil:
			j.importErr = err.Error()
		case status != http.StatusOK:
			j.importErr = fmt.Sprintf("import answered %d %v", status, body["errors"])
		}
		if j.importErr != "" {
			w.importProblem(j.key, j.importErr)
			return
		}
		w.mu.Lock()
		w.keys = append(w.keys, j.key)
		w.mu.Unlock()
		w.checkImported(j, body)
	}
	req := maps.Clone(j.fields)
	req["batch_input"] = j.items
	status, body, err := w.do("POST", j.path, req)
	if err != nil {
		j.batchErr = err.Error()
		return
	}
	// decrypt answers 400 when any item failed (Transit); verify and hmac
	// answer 200 whatever failed.
	if status != http.StatusOK && status != http.StatusBadRequest {
		j.batchErr = fmt.Sprintf("batch answered %d %v", status, body)
		return
	}
	data, _ := body["data"].(map[string]interface{})
	list, _ := data["batch_results"].([]interface{})
	if len(list) != len(j.items) {
		j.batchErr = fmt.Sprintf("batch answered %d with %d results for %d items: %v", status, len(list), len(j.items), body)
		return
	}
	j.results = make([]wpResult, len(list))
	for i, raw := range list {
		item, _ := raw.(map[string]interface{})
		j.results[i].item = item
		if item["reference"] != j.items[i]["reference"] {
			j.batchErr = fmt.Sprintf("batch result %d has reference %v, want %v: results out of order", i, item["reference"], j.items[i]["reference"])
			return
		}
		if j.results[i].failed() {
			alone := maps.Clone(j.fields)
			maps.Copy(alone, j.items[i])
			j.results[i].status, j.results[i].single, j.results[i].err = w.do("POST", j.path, alone)
		}
	}
	if status == http.StatusBadRequest && !slices.ContainsFunc(j.results, wpResult.failed) {
		j.batchErr = fmt.Sprintf("batch answered 400 with no failed item: %v", body)
	}
}

// checkImported compares the import's answer (the key's read form) with
// what the contract says of an imported key.
func (w *wpRun) checkImported(j *wpJob, body map[string]interface{}) {
	data, _ := body["data"].(map[string]interface{})
	objects, _ := data["hsm_objects"].(map[string]interface{})
	v1, _ := objects["1"].(map[string]interface{})
	for _, c := range []struct {
		field     string
		got, want interface{}
	}{
		{"type", data["type"], j.want.typ},
		{"imported_key", data["imported_key"], true},
		{"hsm_objects.1.origin", v1["origin"], "imported"},
		{"hsm_objects.1.public_only", v1["public_only"], j.want.publicOnly},
		{"hsm_objects.1.transit_layout", v1["transit_layout"], j.want.transitLayout},
	} {
		if c.got != c.want {
			w.importProblem(j.key, fmt.Sprintf("import of a %s key answered %s=%v, want %v", j.want.typ, c.field, c.got, c.want))
		}
	}
}

func (w *wpRun) importProblem(key, problem string) {
	// One report per kind of problem, not one per key, on one line.
	problem = strings.Join(strings.Fields(strings.ReplaceAll(problem, key, "<key>")), " ")
	w.mu.Lock()
	defer w.mu.Unlock()
	w.importProblems[problem] = append(w.importProblems[problem], key)
}

func (w *wpRun) reportImportProblems() {
	for _, p := range slices.Sorted(maps.Keys(w.importProblems)) {
		keys := w.importProblems[p]
		sort.Strings(keys)
		w.t.Errorf("%s (%d keys, e.g. %s)", p, len(keys), keys[0])
	}
}

// deleteKeys destroys the imported keys' objects on the token, which the
// package's other tests share. Deactivating first is the seeds' way, which
// needs no deletion_allowed.
func (w *wpRun) deleteKeys() {
	start := time.Now()
	defer func() { w.t.Logf("deleting %d keys took %v", len(w.keys), time.Since(start).Round(time.Millisecond)) }()
	var failed []string
	var mu sync.Mutex
	wpParallel(len(w.keys), func(i int) {
		key := w.keys[i]
		for _, step := range []struct{ method, path string }{
			{"POST", "kms/keys/" + key + "/deactivate"},
			{"DELETE", "kms/keys/" + key},
		} {
			status, body, err := w.do(step.method, step.path, nil)
			if err != nil || status/100 != 2 {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s %s: %d %v %v", step.method, step.path, status, body["errors"], err))
				mu.Unlock()
				return
			}
		}
	})
	if len(failed) > 0 {
		sort.Strings(failed)
		w.t.Errorf("deleting %d of %d imported keys failed, e.g. %s", len(failed), len(w.keys), failed[0])
	}
}

// wpTally counts one file's vectors.
type wpTally struct {
	name          string
	total         int            // the file's numberOfTests
	inFile        int            // vectors read from the file
	applicable    int            // vectors of the groups that apply
	checked       int            // vectors whose answer was compared
	passed        map[string]int // by expected result
	outOf         map[string]int // applicable vectors by expected result
	how           map[string]map[string]int
	notApplicable map[string]int // reason → vectors
	mismatches    []string
}

func newTally(name string, total int) *wpTally {
	return &wpTally{name: name, total: total, passed: map[string]int{}, outOf: map[string]int{},
		how: map[string]map[string]int{}, notApplicable: map[string]int{}}
}

// judge decides one vector from its result: how it passed ("400",
// "valid=false", ...) or what is wrong.
type judge func(v wpVector, r wpResult) (how, problem string)

// tally compares every vector of jobs with judge. Vectors of a key that
// could not be imported, or of a batch without results, are not checked:
// the count below the applicable number fails the file.
func (tl *wpTally) tally(jobs []*wpJob, decide judge) {
	for _, j := range jobs {
		tl.applicable += len(j.vectors)
		for _, v := range j.vectors {
			tl.outOf[v.Result]++
		}
		if j.importErr != "" {
			continue // reported once per problem by reportImportProblems
		}
		if j.batchErr != "" {
			tl.mismatch(fmt.Sprintf("key %s: %s", j.key, j.batchErr))
			continue
		}
		for i, v := range j.vectors {
			r := j.results[i]
			tl.checked++
			if r.failed() && r.err == nil && r.status >= 500 {
				tl.mismatch(fmt.Sprintf("%v: %s: a 5xx", v, r.alone()))
				continue
			}
			how, problem := decide(v, r)
			if problem != "" {
				tl.mismatch(fmt.Sprintf("%v: %s", v, problem))
				continue
			}
			tl.passed[v.Result]++
			if tl.how[v.Result] == nil {
				tl.how[v.Result] = map[string]int{}
			}
			tl.how[v.Result][how]++
		}
	}
}

func (tl *wpTally) mismatch(s string) { tl.mismatches = append(tl.mismatches, s) }

func (tl *wpTally) report(t *testing.T) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d vectors; checked %d of %d applicable:", tl.name, tl.total, tl.checked, tl.applicable)
	for _, res := range []string{"valid", "invalid", "acceptable"} {
		fmt.Fprintf(&b, " %s %d/%d", res, tl.passed[res], tl.outOf[res])
		if len(tl.how[res]) > 0 {
			var parts []string
			for _, h := range slices.Sorted(maps.Keys(tl.how[res])) {
				parts = append(parts, fmt.Sprintf("%s: %d", h, tl.how[res][h]))
			}
			fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
		}
		b.WriteString(";")
	}
	na := 0
	var reasons []string
	for _, r := range slices.Sorted(maps.Keys(tl.notApplicable)) {
		na += tl.notApplicable[r]
		reasons = append(reasons, fmt.Sprintf("%s: %d", r, tl.notApplicable[r]))
	}
	fmt.Fprintf(&b, " not applicable %d", na)
	if na > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(reasons, "; "))
	}
	t.Log(b.String())

	if tl.inFile != tl.total {
		t.Errorf("%s: read %d vectors, the file says numberOfTests %d", tl.name, tl.inFile, tl.total)
	}
	if tl.applicable+na != tl.inFile {
		t.Errorf("%s: %d applicable + %d not applicable != %d vectors", tl.name, tl.applicable, na, tl.inFile)
	}
	for i, m := range tl.mismatches {
		if i == wpMaxReports {
			t.Errorf("%s: ... and %d more mismatches", tl.name, len(tl.mismatches)-wpMaxReports)
			break
		}
		t.Errorf("%s: %s", tl.name, m)
	}
	if passed := tl.passed["valid"] + tl.passed["invalid"] + tl.passed["acceptable"]; tl.checked < tl.applicable || passed < tl.applicable {
		t.Errorf("%s: %d applicable vectors, %d checked, %d passed", tl.name, tl.applicable, tl.checked, passed)
	}
}

// keyName names a key after its material, so that a key shared by vectors
// is imported once.
func keyName(prefix string, material []byte) string {
	sum := sha256.Sum256(material)
	return prefix + "-" + hex.EncodeToString(sum[:8])
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jwkOct(key []byte) string {
	b, _ := json.Marshal(map[string]string{"kty": "oct", "k": b64u(key)})
	return string(b)
}

// aesGCM decrypts the vectors with Transit's layout, nonce(12) ‖ ct ‖
// tag(16), which is the only one kms/decrypt opens for imported keys: other
// IV and tag sizes cannot be expressed.
func (w *wpRun) aesGCM(raw []byte) *wpTally {
	f := parseWycheproof[wpAEADGroup](w.t, "aes_gcm_test.json", raw)
	tl := newTally(f.Name, f.NumberOfTests)
	jobs := map[string]*wpJob{}
	var order []*wpJob
	for _, g := range f.TestGroups {
		tl.inFile += len(g.Tests)
		switch {
		case g.IvSize != 96:
			tl.notApplicable["IV size not 96 bits (Transit's ciphertext has a 12-byte nonce)"] += len(g.Tests)
			continue
		case g.TagSize != 128:
			tl.notApplicable["tag size not 128 bits (Transit's ciphertext has a 16-byte tag)"] += len(g.Tests)
			continue
		}
		for _, tc := range g.Tests {
			name := keyName(fmt.Sprintf("wp-aes%d", g.KeySize), tc.Key)
			j := jobs[name]
			if j == nil {
				typ := fmt.Sprintf("aes%d-gcm96", g.KeySize)
				j = &wpJob{
					key:    name,
					imp:    map[string]interface{}{"jwk": jwkOct(tc.Key), "type": typ},
					want:   wpImported{typ: typ, transitLayout: true},
					path:   "kms/decrypt/" + name,
					fields: map[string]interface{}{},
				}
				jobs[name] = j
				order = append(order, j)
			}
			blob := slices.Concat(tc.IV, tc.CT, tc.Tag)
			item := map[string]interface{}{
				"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(blob),
				"reference":  fmt.Sprint(tc.TcID),
			}
			if len(tc.AAD) > 0 {
				item["associated_data"] = base64.StdEncoding.EncodeToString(tc.AAD)
			}
			j.items = append(j.items, item)
			j.vectors = append(j.vectors, wpVector{wpTestCommon: tc.wpTestCommon, want: base64.StdEncoding.EncodeToString(tc.Msg)})
		}
	}
	w.run(order)
	tl.tally(order, func(v wpVector, r wpResult) (string, string) {
		if r.failed() {
			if r.err != nil || v.Result == "valid" {
				return "", "refused: " + r.alone()
			}
			if r.status != http.StatusBadRequest {
				return "", r.alone() + "; want 400"
			}
			return "400", ""
		}
		// Transit's batch results omit an empty plaintext.
		got, _ := r.item["plaintext"].(string)
		if v.Result == "invalid" {
			return "", fmt.Sprintf("decrypted an invalid ciphertext to %q", got)
		}
		if got != v.want {
			return "", fmt.Sprintf("plaintext %q, want %q", got, v.want)
		}
		return "200 with the plaintext", ""
	})
	return tl
}

// wpSigKind is how one signature file is sent to kms/verify.
type wpSigKind struct {
	file      string
	prefix    string // of key names
	typ       string
	fields    map[string]interface{}
	sigEnc    *base64.Encoding
	importJWK bool // import the group's JWK, else its PEM as public_key
}

var (
	wpSigECDSA = wpSigKind{file: "ecdsa_secp256r1_sha256_test.json", prefix: "wp-ec-der", typ: "ecdsa-p256",
		fields: map[string]interface{}{"hash_algorithm": "sha2-256"}, sigEnc: base64.StdEncoding}
	// Transit writes and reads jws signatures in url-safe base64 without
	// padding.
	wpSigECDSAP1363 = wpSigKind{file: "ecdsa_secp256r1_sha256_p1363_test.json", prefix: "wp-ec-p1363", typ: "ecdsa-p256",
		fields:    map[string]interface{}{"hash_algorithm": "sha2-256", "marshaling_algorithm": "jws"},
		sigEnc:    base64.RawURLEncoding,
		importJWK: true}
	wpSigPKCS1 = wpSigKind{file: "rsa_signature_2048_sha256_test.json", prefix: "wp-rsa-pkcs1", typ: "rsa-2048",
		fields: map[string]interface{}{"hash_algorithm": "sha2-256", "signature_algorithm": "pkcs1v15"}, sigEnc: base64.StdEncoding}
	wpSigPSS = wpSigKind{file: "rsa_pss_2048_sha256_mgf1_32_test.json", prefix: "wp-rsa-pss", typ: "rsa-2048",
		fields:    map[string]interface{}{"hash_algorithm": "sha2-256", "signature_algorithm": "pss", "salt_length": "32"},
		sigEnc:    base64.StdEncoding,
		importJWK: true}
)

// signatures verifies one file's vectors with each group's public key
// imported public-only; the PEM and the JWK forms are both used, one per
// file.
func (w *wpRun) signatures(raw []byte, kind wpSigKind) *wpTally {
	f := parseWycheproof[wpSigGroup](w.t, kind.file, raw)
	tl := newTally(f.Name, f.NumberOfTests)
	jobs := map[string]*wpJob{}
	var order []*wpJob
	for gi, g := range f.TestGroups {
		tl.inFile += len(g.Tests)
		switch {
		case g.Sha != "SHA-256":
			tl.notApplicable["hash "+g.Sha] += len(g.Tests)
			continue
		case g.MgfSha != "" && g.MgfSha != "SHA-256":
			tl.notApplicable["MGF1 hash "+g.MgfSha] += len(g.Tests)
			continue
		case g.SLen != nil && *g.SLen != 32:
			tl.notApplicable[fmt.Sprintf("salt length %d", *g.SLen)] += len(g.Tests)
			continue
		}
		name := keyName(kind.prefix, g.PublicKeyDer)
		j := jobs[name]
		if j == nil {
			imp := map[string]interface{}{"type": kind.typ, "operations": "verify"}
			if kind.importJWK {
				imp["jwk"] = groupJWK(w.t, kind.file, gi, g)
			} else {
				imp["public_key"] = g.PublicKeyPem
			}
			j = &wpJob{key: name, imp: imp, want: wpImported{typ: kind.typ, publicOnly: true},
				path: "kms/verify/" + name, fields: kind.fields}
			jobs[name] = j
			order = append(order, j)
		}
		for _, tc := range g.Tests {
			j.items = append(j.items, map[string]interface{}{
				"input":     base64.StdEncoding.EncodeToString(tc.Msg),
				"signature": "vault:v1:" + kind.sigEnc.EncodeToString(tc.Sig),
				"reference": fmt.Sprint(tc.TcID),
			})
			j.vectors = append(j.vectors, wpVector{wpTestCommon: tc.wpTestCommon})
		}
	}
	w.run(order)
	tl.tally(order, judgeVerify)
	return tl
}

// groupJWK is the group's public key as a JWK: the file's, or for EC keys
// where the file has none (a few P1363 groups), one made from the point.
func groupJWK(t *testing.T, file string, gi int, g wpSigGroup) map[string]interface{} {
	jwk := g.PublicKeyJwk
	if jwk == nil {
		jwk = g.KeyJwk
	}
	if g.PublicKey.Curve == "" {
		if jwk == nil {
			t.Fatalf("%s: group %d has no JWK", file, gi)
		}
		return jwk
	}
	if g.PublicKey.Curve != "secp256r1" {
		t.Fatalf("%s: group %d is on %s", file, gi, g.PublicKey.Curve)
	}
	// wx and wy are big-endian integers that may carry a sign byte; a JWK
	// coordinate is exactly the field's size.
	coord := func(b []byte) string {
		b = bytes.TrimLeft(b, "\x00")
		return b64u(append(make([]byte, 32-len(b)), b...))
	}
	made := map[string]interface{}{"kty": "EC", "crv": "P-256", "x": coord(g.PublicKey.Wx), "y": coord(g.PublicKey.Wy)}
	if jwk != nil && (jwk["x"] != made["x"] || jwk["y"] != made["y"] || jwk["crv"] != "P-256") {
		t.Fatalf("%s: group %d: the file's JWK %v is not the point %v", file, gi, jwk, made)
	}
	return made
}

// judgeVerify: a valid signature verifies; an invalid one is valid=false
// or, when it cannot be parsed, a 400; an acceptable one may be anything
// but a 5xx.
func judgeVerify(v wpVector, r wpResult) (string, string) {
	if r.failed() {
		switch {
		case r.err != nil || v.Result == "valid":
			return "", "refused: " + r.alone()
		case v.Result == "acceptable" && r.status < 500:
			return fmt.Sprint(r.status), ""
		case r.status != http.StatusBadRequest:
			return "", r.alone() + "; want 400"
		}
		return "400", ""
	}
	valid, ok := r.item["valid"].(bool)
	switch {
	case !ok:
		return "", fmt.Sprintf("batch result without a boolean valid: %v", r.item)
	case v.Result == "valid" && !valid:
		return "", "valid signature answered valid=false"
	case v.Result == "invalid" && valid:
		return "", "INVALID SIGNATURE ACCEPTED: valid=true"
	}
	return fmt.Sprintf("valid=%v", valid), ""
}

// hmacs computes each vector's HMAC through kms/hmac and checks it, then
// checks the full-length tags through kms/verify with hmac. Two tallies:
// one per path.
func (w *wpRun) hmacs(raw []byte) []*wpTally {
	f := parseWycheproof[wpMACGroup](w.t, "hmac_sha256_test.json", raw)
	tl := newTally(f.Name+" via kms/hmac", f.NumberOfTests)
	vt := newTally(f.Name+" via kms/verify hmac=", f.NumberOfTests)
	jobs := map[string]*wpJob{}
	verifyJobs := map[string]*wpJob{}
	var order, verifyOrder []*wpJob
	for _, g := range f.TestGroups {
		tl.inFile += len(g.Tests)
		vt.inFile += len(g.Tests)
		for _, tc := range g.Tests {
			name := keyName("wp-hmac", tc.Key)
			j := jobs[name]
			if j == nil {
				j = &wpJob{
					key:    name,
					imp:    map[string]interface{}{"jwk": jwkOct(tc.Key), "type": "hmac"},
					want:   wpImported{typ: "hmac"},
					path:   "kms/hmac/" + name,
					fields: map[string]interface{}{"algorithm": "sha2-256"},
				}
				jobs[name] = j
				order = append(order, j)
			}
			mac := hmac.New(sha256.New, tc.Key)
			mac.Write(tc.Msg)
			vec := wpVector{wpTestCommon: tc.wpTestCommon, tag: tc.Tag, fullMAC: mac.Sum(nil)}
			input := base64.StdEncoding.EncodeToString(tc.Msg)
			ref := fmt.Sprint(tc.TcID)
			j.items = append(j.items, map[string]interface{}{"input": input, "reference": ref})
			j.vectors = append(j.vectors, vec)

			// verify compares whole MACs: a truncated tag is not one.
			if g.TagSize != 256 {
				vt.notApplicable["tag truncated (verify compares whole MACs)"]++
				continue
			}
			vj := verifyJobs[name]
			if vj == nil {
				vj = &wpJob{key: name, path: "kms/verify/" + name, fields: map[string]interface{}{"algorithm": "sha2-256"}}
				verifyJobs[name] = vj
				verifyOrder = append(verifyOrder, vj)
			}
			vj.items = append(vj.items, map[string]interface{}{
				"input": input, "hmac": "vault:v1:" + base64.StdEncoding.EncodeToString(tc.Tag), "reference": ref})
			vj.vectors = append(vj.vectors, vec)
		}
	}
	w.run(order)
	tl.tally(order, func(v wpVector, r wpResult) (string, string) {
		if r.failed() {
			return "", "no HMAC: " + r.alone()
		}
		s, _ := r.item["hmac"].(string)
		got, err := base64.StdEncoding.Strict().DecodeString(strings.TrimPrefix(s, "vault:v1:"))
		if !strings.HasPrefix(s, "vault:v1:") || err != nil {
			return "", fmt.Sprintf("hmac %q is not vault:v1:<base64>", s)
		}
		if !bytes.Equal(got, v.fullMAC) {
			return "", fmt.Sprintf("HMAC %x, HMAC-SHA-256 of the vector's key and message is %x", got, v.fullMAC)
		}
		equal := len(v.tag) <= len(got) && bytes.Equal(got[:len(v.tag)], v.tag)
		switch {
		case v.Result == "valid" && !equal:
			return "", fmt.Sprintf("HMAC %x does not start with the tag %x", got, v.tag)
		case v.Result == "invalid" && equal:
			return "", fmt.Sprintf("HMAC %x equals the invalid tag %x", got, v.tag)
		}
		if equal {
			return "tag equal", ""
		}
		return "tag different", ""
	})

	// Only keys that were imported: the others are reported above.
	var imported []*wpJob
	for _, vj := range verifyOrder {
		if jobs[vj.key].importErr == "" {
			imported = append(imported, vj)
		} else {
			vj.importErr = jobs[vj.key].importErr
		}
	}
	w.run(imported)
	vt.tally(verifyOrder, judgeVerify)
	return []*wpTally{tl, vt}
}
