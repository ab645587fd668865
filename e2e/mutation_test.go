package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// mutationSeed and mutationCount fix the requests TestMutatedRequests
// sends; HSMKMS_MUTATION_SEED and HSMKMS_MUTATION_COUNT change them.
// Request i is made from its own generator, seeded by the seed and i, so a
// failure names the one request to replay whatever the workers' order.
const (
	mutationSeed  = 20261123
	mutationCount = 6000
)

// Thousands of malformed and odd requests to every path of the plugin:
// wrong JSON types, huge and negative numbers, bad base64, odd key names,
// mutated and truncated ciphertexts, odd batches, empty and broken bodies.
// None is answered with a 5xx (the HSM is healthy, so not even a 503), none
// echoes a secret sent in a field of the wrong type, and the plugin process
// is the same at the end: nothing crashed it. Config writes always carry a
// library outside the allow-list, so none is stored.
func TestMutatedRequests(t *testing.T) {
	seed, n := int64(mutationSeed), mutationCount
	if s := os.Getenv("HSMKMS_MUTATION_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	if s := os.Getenv("HSMKMS_MUTATION_COUNT"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	tok := newPrivateSoftHSM(t, "mutation", "mutation-pin-2718")
	v := startDevVault(t, tok)
	v.configure("kms", "max_keys=16", "pool_size=8")
	m := newMaterial(t, v)
	// Transit, to tell Vault's own answers from the plugin's: a request
	// that Vault refuses before routing it gets the same answer there.
	v.cli("secrets", "enable", "transit")
	v.cli("write", "-f", "transit/keys/x")
	pid := pluginPID(t, v.cmd.Process.Pid)
	before := configSummary(t, v)

	type answer struct {
		i      int
		req    mutReq
		status int
		took   time.Duration
		body   string
	}
	var (
		mu       sync.Mutex
		fivexx   []answer
		leaks    []answer
		slowest  []answer
		statuses = map[int]int{}
		byKind   = map[string]int{}
		next     int
	)
	client := &http.Client{Timeout: 120 * time.Second, CheckRedirect: noRedirects,
		Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				req := genMutation(rand.New(rand.NewSource(seed*1_000_003+int64(i))), m)
				t0 := time.Now()
				status, raw, err := sendRaw(client, req.method, v.addr+"/v1/kms/"+req.path, v.token, req.body)
				a := answer{i, req, status, time.Since(t0), string(raw)}
				if err != nil {
					a.body = err.Error()
				}
				mu.Lock()
				statuses[status]++
				byKind[req.kind]++
				if status == 0 || status >= 500 {
					fivexx = append(fivexx, a)
				}
				if req.secret != "" && strings.Contains(a.body, req.secret) {
					leaks = append(leaks, a)
				}
				slowest = append(slowest, answer{i: i, req: req, status: status, took: a.took})
				sort.Slice(slowest, func(x, y int) bool { return slowest[x].took > slowest[y].took })
				if len(slowest) > 5 {
					slowest = slowest[:5]
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	var codes []int
	for c := range statuses {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var parts []string
	for _, c := range codes {
		parts = append(parts, fmt.Sprintf("%d×%d", c, statuses[c]))
	}
	var kinds []string
	for k, c := range byKind {
		kinds = append(kinds, fmt.Sprintf("%s×%d", k, c))
	}
	sort.Strings(kinds)
	t.Logf("%d mutated requests (seed %d) in %v: %s", n, seed, elapsed.Round(time.Millisecond), strings.Join(parts, " "))
	t.Logf("by path: %s", strings.Join(kinds, " "))
	for _, a := range slowest {
		t.Logf("slowest: request %d %s %s: %d in %v", a.i, a.req.method, clip(a.req.path, 80), a.status, a.took.Round(time.Millisecond))
	}

	// A 5xx that the same request to Transit gets too, word for word, is
	// Vault's: the body never reached a backend. A path that is not UTF-8
	// cannot be put in the gRPC request to any external plugin (Vault
	// answers so for kms/ paths the plugin has no route for); Vault answers
	// 500 with the marshaling error, or "internal error" when its
	// existence check before a write failed so. Any other 5xx is the
	// plugin's.
	vaultOwn := map[string]int{}
	var plugin []answer
	for _, a := range fivexx {
		status, raw, err := sendRaw(client, a.req.method, v.addr+"/v1/transit/encrypt/x", v.token, a.req.body)
		if err == nil && status == a.status && string(raw) == a.body {
			vaultOwn[fmt.Sprintf("%d %s", a.status, strings.TrimSpace(a.body))]++
			continue
		}
		if p, err := url.PathUnescape(a.req.path); err == nil && !utf8.ValidString(p) && a.status == 500 &&
			(strings.Contains(a.body, "string field contains invalid UTF-8") || strings.Contains(a.body, "* internal error")) {
			vaultOwn[fmt.Sprintf("%d for a path that is not UTF-8: %s", a.status, strings.Join(strings.Fields(a.body), " "))]++
			continue
		}
		plugin = append(plugin, a)
	}
	var own []string
	for msg := range vaultOwn {
		own = append(own, msg)
	}
	sort.Strings(own)
	for _, msg := range own {
		t.Logf("Vault's own answer, not the plugin's, ×%d: %s", vaultOwn[msg], msg)
	}
	grouped := map[string][]answer{}
	var order []string
	for _, a := range plugin {
		k := fmt.Sprintf("%d %s", a.status, clip(strings.TrimSpace(a.body), 300))
		if len(grouped[k]) == 0 {
			order = append(order, k)
		}
		grouped[k] = append(grouped[k], a)
	}
	for _, k := range order {
		a := grouped[k][0]
		t.Errorf("×%d answered %s; first: request %d: %s /v1/kms/%s body %s (took %v)", len(grouped[k]), k, a.i, a.req.method,
			clip(a.req.path, 200), clip(string(a.req.body), 600), a.took.Round(time.Millisecond))
	}
	for _, a := range leaks {
		t.Errorf("request %d: %s /v1/kms/%s: the answer quotes the secret %q sent in a field of the wrong type: %d %s",
			a.i, a.req.method, clip(a.req.path, 200), a.req.secret, a.status, clip(a.body, 600))
	}
	if len(plugin) > 0 {
		t.Logf("plugin log: %s", pluginLogSummary(t, v))
	}

	if now := pluginPID(t, v.cmd.Process.Pid); now != pid {
		t.Errorf("plugin pid %d, was %d: the plugin crashed", now, pid)
	}
	if after := configSummary(t, v); after != before {
		t.Errorf("config changed: %s, was %s", after, before)
	}
	checkAllDecrypt(t, v, "sentinel", m.sentinel)
	if status, resp := v.raw("GET", "kms/status", v.token, nil); status != 200 {
		t.Errorf("status after the mutations: %d %v", status, resp)
	}
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + fmt.Sprintf("…(%d bytes)", len(s))
	}
	return s
}

// configSummary is what of the config a mutation must not change.
func configSummary(t *testing.T, v *vaultServer) string {
	t.Helper()
	status, resp := v.raw("GET", "kms/config", v.token, nil)
	if status != 200 {
		t.Fatalf("config read: %d %v", status, resp)
	}
	d := resp["data"].(map[string]interface{})
	tok, _ := d["token"].(map[string]interface{})
	return fmt.Sprintf("library=%v label=%v pool_size=%v max_keys=%v max_plaintext_bytes=%v default_key=%v",
		d["library"], tok["label"], d["pool_size"], d["max_keys"], d["max_plaintext_bytes"], d["default_key"])
}

// material is what the mutations start from: keys of every type and
// genuine ciphertexts, signatures and HMACs.
type material struct {
	cts, dataKeyCTs, rsaCTs, sigs, ecSigs, hmacs []string
	sentinel                                     []ctPair // never touched by a mutation
}

// The keys the mutations use: cryptoKeys are only used, victims also
// rotated, reconfigured, deactivated and deleted.
var (
	cryptoKeys = []string{"aes", "aes128", "rsa", "ec", "mac"}
	victims    = []string{"victim-aes", "victim-ec", "victim-mac"}
)

func newMaterial(t *testing.T, v *vaultServer) *material {
	t.Helper()
	for name, typ := range map[string]string{"aes": "aes256-gcm96", "aes128": "aes128-gcm96", "rsa": "rsa-2048",
		"ec": "ecdsa-p256", "mac": "hmac", "victim-aes": "aes256-gcm96", "victim-ec": "ecdsa-p384", "victim-mac": "hmac",
		"sentinel": "aes256-gcm96"} {
		args := []string{"write", "kms/keys/" + name, "type=" + typ}
		if name == "rsa" {
			args = append(args, "operations=sign,verify,encrypt,decrypt")
		}
		v.cli(args...)
	}
	m := &material{sentinel: makeCiphertexts(t, v, "sentinel", 6)}
	write := func(path string, body map[string]interface{}, field string) string {
		status, resp := v.raw("POST", "kms/"+path, v.token, body)
		if status != 200 {
			t.Fatalf("%s: %d %v", path, status, resp)
		}
		return resp["data"].(map[string]interface{})[field].(string)
	}
	for i := 0; i < 3; i++ {
		m.cts = append(m.cts,
			write("encrypt/aes", map[string]interface{}{"plaintext": b64(fmt.Sprint("p", i))}, "ciphertext"),
			write("encrypt/aes", map[string]interface{}{"plaintext": b64("c"), "context": b64("ctx")}, "ciphertext"),
			write("encrypt/aes128", map[string]interface{}{"plaintext": b64("q")}, "ciphertext"),
			write("encrypt/victim-aes", map[string]interface{}{"plaintext": b64("v")}, "ciphertext"))
		m.dataKeyCTs = append(m.dataKeyCTs, write("datakey/wrapped/aes", map[string]interface{}{}, "ciphertext"))
		m.rsaCTs = append(m.rsaCTs, write("encrypt/rsa", map[string]interface{}{"plaintext": b64("r")}, "ciphertext"))
		m.sigs = append(m.sigs, write("sign/rsa", map[string]interface{}{"input": b64("in")}, "signature"))
		m.ecSigs = append(m.ecSigs, write("sign/ec", map[string]interface{}{"input": b64("in")}, "signature"),
			write("sign/ec", map[string]interface{}{"input": b64("in"), "marshaling_algorithm": "jws"}, "signature"))
		m.hmacs = append(m.hmacs, write("hmac/mac", map[string]interface{}{"input": b64("in")}, "hmac"))
	}
	return m
}

// mutReq is one generated request.
type mutReq struct {
	kind, method, path string
	body               []byte // nil: no body
	secret             string // a value that must not come back
}

// gen is one request's generator.
type gen struct {
	r *rand.Rand
	m *material
	// small: the values are batch items, of which there may be hundreds;
	// large values are kept to the top level of a request.
	small bool
}

// upTo is a random length below n, below 64 for batch items.
func (g *gen) upTo(n int) int {
	if g.small {
		n = min(n, 64)
	}
	return g.r.Intn(n)
}

func (g *gen) pick(options ...string) string { return options[g.r.Intn(len(options))] }
func (g *gen) chance(p float64) bool         { return g.r.Float64() < p }

func (g *gen) randBytes(n int) []byte {
	b := make([]byte, n)
	g.r.Read(b)
	return b
}

// oddName is a key name that should be refused or not found: unicode,
// long, dots, slashes, escapes.
func (g *gen) oddName() string {
	switch g.r.Intn(16) {
	case 0:
		return ""
	case 1:
		return ".."
	case 2:
		return "a..b"
	case 3:
		return "../keys/aes"
	case 4:
		return "ключ"
	case 5:
		return "名前-🔑"
	case 6:
		return strings.Repeat("n", 1+g.r.Intn(300))
	case 7:
		return strings.Repeat("x", 300+g.upTo(8192))
	case 8:
		return "a/b"
	case 9:
		return "aes/"
	case 10:
		return "-dash"
	case 11:
		return ".dot"
	case 12:
		return "sp ace"
	case 13:
		return "nul\x00byte"
	case 14:
		return "%2e%2e"
	}
	return string(g.randBytes(1 + g.r.Intn(12)))
}

// escapePath escapes a key name for the URL, mostly as a client would
// (slashes escaped), sometimes with its slashes left as they are.
func (g *gen) escapePath(name string) string {
	if g.chance(0.2) && !strings.ContainsAny(name, "%?#") {
		parts := strings.Split(name, "/")
		for i := range parts {
			parts[i] = url.PathEscape(parts[i])
		}
		return strings.Join(parts, "/")
	}
	return url.PathEscape(name)
}

func (g *gen) keyName(usual []string) string {
	if g.chance(0.75) {
		return usual[g.r.Intn(len(usual))]
	}
	if g.chance(0.3) {
		return g.pick(cryptoKeys...)
	}
	return g.oddName()
}

// rawJSON values of every kind, many of them wrong for any field.
func (g *gen) weird() string {
	switch g.r.Intn(40) {
	case 0:
		return "0"
	case 1:
		return "-1"
	case 2:
		return g.pick("99999999999", "-99999999999", "2147483648", "-2147483649", "9223372036854775807", "9223372036854775808", "18446744073709551617")
	case 3:
		return g.pick("1e308", "-1e308", "1e999", "-1e999", "1e-400", "-0", "0.5", "1.0", "3.000000001", "2.5e3")
	case 4:
		return `""`
	case 5:
		return `" "`
	case 6:
		return "true"
	case 7:
		return "false"
	case 8:
		return "null"
	case 9:
		return "[]"
	case 10:
		return "{}"
	case 11:
		return `[1,2,3]`
	case 12:
		return `["a","b"]`
	case 13:
		return `{"a":"b"}`
	case 14:
		return `{"a":{"b":["c"]}}`
	case 15:
		return `[[[]]]`
	case 16:
		return `"%%%"`
	case 17:
		return `"` + strings.Repeat("A", 1+g.upTo(200000)) + `"`
	case 18:
		return `"\u0000"`
	case 19:
		return `"\ud800"`
	case 20:
		return `"ключ🔑"`
	case 21:
		return g.str(base64.StdEncoding.EncodeToString(g.randBytes(g.r.Intn(64))))
	case 22:
		return g.str(base64.URLEncoding.EncodeToString(g.randBytes(1 + g.r.Intn(64))))
	case 23:
		return g.str(base64.RawStdEncoding.EncodeToString(g.randBytes(1 + g.r.Intn(64))))
	case 24:
		return g.str(g.pick("a=b", "a=b,c=d", "=", "a=", "=b", ",,,"))
	case 25:
		return g.str(g.pick("1", "-1", "1e9", "99999999999", "0x10", "1h", "-1h", "999999h", "1s", "10000000000s"))
	case 26:
		return g.str(g.pick("sha2-256", "sha2-512", "sha1", "md5", "sha3-256", "SHA2-256", "none"))
	case 27:
		return g.str(g.pick("RS256", "PS512", "ES256", "ES512", "HS256", "none", "rs256"))
	case 28:
		return g.str(g.pick("pss", "pkcs1v15", "oaep", "jws", "asn1", "hex", "base64", "auto", "wrapped", "hsm"))
	case 29:
		return strings.Repeat("[", 1+g.upTo(3000)) + strings.Repeat("]", 1+g.upTo(3000))
	case 30:
		return `{"batch_input":[{"batch_input":[{"plaintext":"eA=="}]}]}`
	case 31:
		return g.ciphertext()
	case 32:
		return g.signature()
	case 33:
		return `[{"plaintext":"eA=="},"x",1,null,[]]`
	case 34:
		return g.str("vault:v1:" + base64.StdEncoding.EncodeToString(g.randBytes(g.r.Intn(80))))
	case 35:
		return fmt.Sprint(g.r.Int63() - g.r.Int63())
	case 36:
		return fmt.Sprint(g.r.NormFloat64() * 1e6)
	case 37:
		return g.pick("64", "63", "4104", "4096", "4097", "1048576", "1048577", "256", "8192", "1")
	case 38:
		d := 1 + g.upTo(500)
		return `{"x":` + strings.Repeat(`{"x":`, d) + "1" + strings.Repeat("}", d+1)
	}
	return g.str(g.oddName())
}

func (g *gen) str(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// ciphertext is a genuine ciphertext, or one mutated in its prefix,
// version, base64 or length.
func (g *gen) ciphertext() string {
	pool := g.m.cts
	switch g.r.Intn(6) {
	case 0:
		pool = g.m.dataKeyCTs
	case 1:
		pool = g.m.rsaCTs
	}
	ct := pool[g.r.Intn(len(pool))]
	if g.chance(0.15) {
		return g.str(ct)
	}
	body := ct[strings.LastIndexByte(ct, ':')+1:]
	switch g.r.Intn(14) {
	case 0:
		ct = g.pick("vault:v0:", "vault:v99999999999:", "vault:v-1:", "vault:v:", "vault:vX:", "vault:v1.5:", "vault:v01:",
			"vault:v+1:", "vault: v1:", "vault:V1:", "VAULT:v1:", "vault:v2147483648:", "vault:v4294967297:", "vault:v2:", "vault:v1::", "v1:") + body
	case 1:
		ct = ct[:g.r.Intn(len(ct))]
	case 2:
		raw, _ := base64.StdEncoding.DecodeString(body)
		if len(raw) > 0 {
			raw[g.r.Intn(len(raw))] ^= byte(1 << g.r.Intn(8))
		}
		ct = ct[:len(ct)-len(body)] + base64.StdEncoding.EncodeToString(raw)
	case 3:
		raw, _ := base64.StdEncoding.DecodeString(body)
		ct = ct[:len(ct)-len(body)] + base64.StdEncoding.EncodeToString(raw[:g.r.Intn(len(raw)+1)])
	case 4:
		ct = ct[:len(ct)-len(body)] + strings.ReplaceAll(strings.ReplaceAll(body, "+", "-"), "/", "_")
	case 5:
		ct = ct + g.pick("=", "==", "!", " ", "\n", "%", "AAAA")
	case 6:
		ct = "vault:v1:"
	case 7:
		ct = ct + ":" + body
	case 8:
		ct = "vault:v1:" + base64.StdEncoding.EncodeToString(g.randBytes(g.upTo(200000)))
	case 9:
		ct = "vault:v1:" + strings.Repeat("*", g.r.Intn(100))
	case 10:
		ct = "vault:" + ct
	case 11:
		ct = strings.ToUpper(ct)
	case 12:
		pos := g.r.Intn(len(ct))
		ct = ct[:pos] + string(rune(g.r.Intn(0x10000))) + ct[pos:]
	default:
		raw, _ := base64.StdEncoding.DecodeString(body)
		ct = ct[:len(ct)-len(body)] + base64.StdEncoding.EncodeToString(append(raw, g.randBytes(1+g.r.Intn(32))...))
	}
	return g.str(ct)
}

// signature is a genuine signature or HMAC, or a mutated one.
func (g *gen) signature() string {
	pool := g.m.sigs
	switch g.r.Intn(3) {
	case 0:
		pool = g.m.ecSigs
	case 1:
		pool = g.m.hmacs
	}
	sig := pool[g.r.Intn(len(pool))]
	if g.chance(0.3) {
		return g.str(sig)
	}
	body := sig[strings.LastIndexByte(sig, ':')+1:]
	switch g.r.Intn(6) {
	case 0:
		sig = g.pick("vault:v0:", "vault:v99999999999:", "vault:v-1:", "vault:v:", "vault:v2:") + body
	case 1:
		sig = sig[:g.r.Intn(len(sig))]
	case 2:
		sig = "vault:v1:" + base64.StdEncoding.EncodeToString(g.randBytes(g.r.Intn(600)))
	case 3:
		sig = "vault:v1:" + base64.RawURLEncoding.EncodeToString(g.randBytes(g.r.Intn(140)))
	case 4:
		sig = "vault:v1:MAA="
	default:
		sig = sig + "AAAA"
	}
	return g.str(sig)
}

func (g *gen) b64Value(max int) string {
	return g.str(base64.StdEncoding.EncodeToString(g.randBytes(g.r.Intn(max + 1))))
}

// goodFields are plausible values for each field, so that most requests
// get past the first check and a mutation hits a later one.
func (g *gen) goodField(name string) string {
	switch name {
	case "plaintext", "input", "context", "associated_data":
		return g.b64Value([]int{64, 4096, 5000}[g.upTo(3)])
	case "ciphertext":
		return g.ciphertext()
	case "signature", "hmac":
		return g.signature()
	case "encryption_context":
		return g.pick(`{"tenant":"acme"}`, `{"a":"1","b":"2"}`, `{}`, `["tenant=acme"]`)
	case "key_version", "min_decryption_version", "min_encryption_version":
		return g.pick("0", "1", "2", "3")
	case "bits":
		return g.pick("128", "256", "512")
	case "bytes", "urlbytes":
		return g.pick("16", "32", "1024")
	case "format":
		return g.str(g.pick("base64", "hex"))
	case "hash_algorithm", "algorithm":
		return g.str(g.pick("sha2-256", "sha2-384", "sha2-512"))
	case "signature_algorithm":
		return g.str(g.pick("pss", "pkcs1v15"))
	case "marshaling_algorithm":
		return g.str(g.pick("asn1", "jws"))
	case "alg":
		return g.str(g.pick("RS256", "PS384", "ES256", "ES384"))
	case "prehashed", "isdigest", "deletion_allowed":
		return g.pick("false", "true")
	case "salt_length":
		return g.str(g.pick("auto", "hash", "32"))
	case "padding_scheme":
		return g.str(g.pick("oaep", "pkcs1v15"))
	case "partial_failure_response_code":
		// 5xx would be the caller's own choice of answer.
		return g.pick("200", "207", "400", "0", "-1", "99", "100", "600", "99999999999")
	case "reference":
		return g.str(g.oddName())
	case "type":
		return g.str(g.pick("aes128-gcm96", "aes256-gcm96", "aes512", "rsa-2048", "ecdsa-p256", "ecdsa-p521", "hmac",
			"oct", "RSA", "EC", "chacha20-poly1305", "ed25519", ""))
	case "size":
		return g.pick("128", "256", "2048", "0", "-256", "8192", "16384", "99999999999", "1")
	case "curve":
		return g.str(g.pick("P-256", "P-384", "P-521", "secp256k1", "Ed25519", ""))
	case "operations":
		return g.pick(`"encrypt,decrypt"`, `["sign","verify"]`, `["wrapKey"]`, `"fly"`, `[]`, `["encrypt","encrypt"]`)
	case "description":
		return g.str(g.oddName())
	case "residency":
		return g.str(g.pick("hsm", "wrapped", "cloud"))
	case "auto_rotate_period":
		return g.pick(`"0"`, `"1h"`, `"24h"`, `"-1h"`, `3600`, `"forever"`)
	case "batch_input":
		return g.batch()
	}
	return g.weird()
}

// batch is a batch_input: a list of items, or something else.
func (g *gen) batch() string {
	switch g.r.Intn(10) {
	case 0:
		return g.str("batch")
	case 1:
		return "42"
	case 2:
		return `{"plaintext":"eA=="}`
	case 3:
		return "[]"
	case 4:
		if g.chance(0.05) {
			return "[" + strings.Repeat(`{"plaintext":"eA=="},`, 10000) + `{"plaintext":"eA=="}]`
		}
		return `[["x"]]`
	}
	n := 1 + g.r.Intn(5)
	if g.chance(0.05) {
		n = 100 + g.r.Intn(400)
	}
	items := make([]string, n)
	small := g.small
	g.small = true
	defer func() { g.small = small }()
	for i := range items {
		fields := []string{}
		for _, f := range g.pickFields([]string{"plaintext", "ciphertext", "input", "signature", "hmac", "context",
			"associated_data", "encryption_context", "key_version", "reference", "padding_scheme", "batch_input"}) {
			var v string
			switch {
			case f == "batch_input": // nested once, not recursively
				v = `[{"plaintext":"eA=="}]`
			case g.chance(0.2):
				v = g.weird()
			default:
				v = g.goodField(f)
			}
			fields = append(fields, g.str(f)+":"+v)
		}
		items[i] = "{" + strings.Join(fields, ",") + "}"
		if g.chance(0.05) {
			items[i] = g.weird()
		}
	}
	return "[" + strings.Join(items, ",") + "]"
}

func (g *gen) pickFields(all []string) []string {
	var out []string
	for _, f := range all {
		if g.chance(0.35) {
			out = append(out, f)
		}
	}
	return out
}

// endpoint is one path of the plugin: its methods, how to name it and its
// fields, the first ones those of a good request.
type endpoint struct {
	kind    string
	weight  int
	methods []string
	path    func(g *gen) string
	fields  []string // all the path's fields
	base    []string // a good request's fields
}

func nameFor(usual []string) func(g *gen) string {
	return func(g *gen) string { return g.escapePath(g.keyName(usual)) }
}

var (
	symmetricKeys = []string{"aes", "aes128", "victim-aes"}
	signingKeys   = []string{"rsa", "ec", "victim-ec"}
	hmacKeys      = []string{"mac", "victim-mac"}
	allKeys       = append(append(append([]string{}, cryptoKeys...), victims...), "default")
	lifecycleKeys = append(append([]string{}, victims...), "fuzz-1", "fuzz-2", "fuzz-3", "fuzz-4")
	contextFields = []string{"context", "associated_data", "encryption_context"}
)

var endpoints = []endpoint{
	{kind: "config-read", weight: 2, methods: []string{"GET"}, path: func(*gen) string { return "config" }},
	{kind: "config-write", weight: 4, methods: []string{"POST", "PUT"}, path: func(*gen) string { return "config" },
		fields: []string{"library", "token_label", "slot", "pin", "init_args", "pool_size", "max_keys", "max_plaintext_bytes",
			"default_key", "default_residency", "kek_label", "unwrapped_cache_ttl", "unwrapped_cache_size", "login_backoff"},
		base: []string{"library", "token_label", "pin"}},
	{kind: "keys-list", weight: 2, methods: []string{"LIST", "GET"}, path: func(g *gen) string {
		return g.pick("keys", "keys/", "keys?list=true", "keys/?list=true&after=zzz&limit=-1")
	}},
	{kind: "key-read", weight: 4, methods: []string{"GET"}, path: nameForPrefix("keys/", allKeys, "")},
	{kind: "key-create", weight: 5, methods: []string{"POST", "PUT"}, path: nameForPrefix("keys/", lifecycleKeys, ""),
		fields: []string{"type", "size", "curve", "operations", "description", "residency", "deletion_allowed", "auto_rotate_period", "exportable", "derived"},
		base:   []string{"type"}},
	{kind: "key-delete", weight: 2, methods: []string{"DELETE"}, path: nameForPrefix("keys/", lifecycleKeys, "")},
	{kind: "key-state", weight: 2, methods: []string{"POST"}, path: func(g *gen) string {
		return "keys/" + nameFor(lifecycleKeys)(g) + "/" + g.pick("activate", "deactivate", "activate", "trim", "import", "adopt")
	}, fields: []string{"min_available_version", "jwk", "label", "id"}},
	{kind: "key-rotate", weight: 2, methods: []string{"POST"}, path: nameForPrefix("keys/", lifecycleKeys, "/rotate"),
		fields: []string{"managed_key_name", "key_version"}},
	{kind: "key-config", weight: 4, methods: []string{"POST", "PUT", "GET"}, path: nameForPrefix("keys/", lifecycleKeys, "/config"),
		fields: []string{"min_decryption_version", "min_encryption_version", "deletion_allowed", "auto_rotate_period", "exportable"},
		base:   []string{"min_decryption_version"}},
	{kind: "encrypt", weight: 12, methods: []string{"POST"}, path: nameForPrefix("encrypt/", append([]string{"rsa"}, symmetricKeys...), ""),
		fields: append([]string{"plaintext", "key_version", "batch_input", "padding_scheme", "reference", "partial_failure_response_code", "convergent_encryption"}, contextFields...),
		base:   []string{"plaintext"}},
	{kind: "decrypt", weight: 12, methods: []string{"POST"}, path: nameForPrefix("decrypt/", append([]string{"rsa"}, symmetricKeys...), ""),
		fields: append([]string{"ciphertext", "batch_input", "padding_scheme", "reference", "partial_failure_response_code"}, contextFields...),
		base:   []string{"ciphertext"}},
	{kind: "rewrap", weight: 6, methods: []string{"POST"}, path: nameForPrefix("rewrap/", symmetricKeys, ""),
		fields: append([]string{"ciphertext", "key_version", "batch_input", "padding_scheme"}, contextFields...),
		base:   []string{"ciphertext"}},
	{kind: "datakey", weight: 5, methods: []string{"POST"}, path: func(g *gen) string {
		return "datakey/" + g.pick("plaintext", "wrapped", "decrypt", "nonsense") + "/" + nameFor(symmetricKeys)(g)
	}, fields: append([]string{"bits", "ciphertext", "key_version", "plaintext"}, contextFields...), base: []string{"bits"}},
	{kind: "sign", weight: 8, methods: []string{"POST"}, path: func(g *gen) string {
		p := "sign/" + nameFor(signingKeys)(g)
		if g.chance(0.3) {
			p += "/" + g.escapePath(g.pick("sha2-256", "sha2-512", "md5", "", "sha2-256/extra", g.oddName()))
		}
		return p
	}, fields: []string{"input", "hash_algorithm", "algorithm", "prehashed", "isdigest", "signature_algorithm", "marshaling_algorithm",
		"salt_length", "alg", "key_version", "batch_input", "context"}, base: []string{"input"}},
	{kind: "verify", weight: 8, methods: []string{"POST"}, path: func(g *gen) string {
		p := "verify/" + nameFor(append(append([]string{}, signingKeys...), hmacKeys...))(g)
		if g.chance(0.3) {
			p += "/" + g.escapePath(g.pick("sha2-256", "sha2-384", "sha1", g.oddName()))
		}
		return p
	}, fields: []string{"input", "signature", "hmac", "hash_algorithm", "algorithm", "prehashed", "isdigest", "signature_algorithm",
		"marshaling_algorithm", "salt_length", "alg", "batch_input"}, base: []string{"input", "signature"}},
	{kind: "hmac", weight: 5, methods: []string{"POST"}, path: func(g *gen) string {
		p := "hmac/" + nameFor(hmacKeys)(g)
		if g.chance(0.3) {
			p += "/" + g.escapePath(g.pick("sha2-256", "sha2-512", "sha3-256", g.oddName()))
		}
		return p
	}, fields: []string{"input", "algorithm", "key_version", "batch_input"}, base: []string{"input"}},
	{kind: "export", weight: 4, methods: []string{"GET", "POST"}, path: func(g *gen) string {
		p := "export/" + g.escapePath(g.pick("public-key", "public-key", "encryption-key", "signing-key", "hmac-key", g.oddName())) + "/" + nameFor(signingKeys)(g)
		if g.chance(0.4) {
			p += "/" + g.escapePath(g.pick("1", "2", "0", "-1", "latest", "99999999999", "v1", g.oddName()))
		}
		return p
	}},
	{kind: "random", weight: 4, methods: []string{"POST", "GET"}, path: func(g *gen) string {
		if g.chance(0.5) {
			return "random"
		}
		return "random/" + g.escapePath(g.pick("32", "0", "-1", "1048576", "1048577", "99999999999", "1e3", "hex", "x", g.oddName()))
	}, fields: []string{"bytes", "format", "source"}, base: []string{"bytes"}},
	{kind: "status", weight: 2, methods: []string{"GET"}, path: func(*gen) string { return "status" }},
	{kind: "tidy", weight: 1, methods: []string{"POST"}, path: func(*gen) string { return "tidy" },
		fields: []string{"destroy_mounts"}},
	{kind: "unknown", weight: 2, methods: []string{"GET", "POST", "DELETE"}, path: func(g *gen) string {
		return g.pick("nonexistent", "keys/aes/nonexistent", "encrypt", "encrypt/", "decrypt/aes/extra", "wrapping_key", "backup/aes",
			"restore", "hash/sha2-256", "cache-config", "keys/aes/import_version", "config/kek/rotate", "sign", "verify/")
	}},
}

func nameForPrefix(prefix string, usual []string, suffix string) func(g *gen) string {
	return func(g *gen) string { return prefix + nameFor(usual)(g) + suffix }
}

var endpointWeights = func() int {
	n := 0
	for _, e := range endpoints {
		n += e.weight
	}
	return n
}()

// badLibraries never pass the allow-list (or the type check): a config
// write with one is refused before the token is touched, and nothing is
// stored. An absent or null library would keep the stored one.
var badLibraries = []string{`"/tmp/not-allowed.so"`, `"relative.so"`, `""`, `"/usr/lib/softhsm/../../../tmp/x.so"`,
	`123`, `["/usr/lib/softhsm/libsofthsm2.so"]`, `{"a":"b"}`, `true`, `"/dev/null"`, `"/proc/self/exe"`}

// genMutation makes one request.
func genMutation(r *rand.Rand, m *material) mutReq {
	g := &gen{r: r, m: m}
	pick := g.r.Intn(endpointWeights)
	var e endpoint
	for _, e = range endpoints {
		if pick < e.weight {
			break
		}
		pick -= e.weight
	}
	req := mutReq{kind: e.kind, method: e.methods[g.r.Intn(len(e.methods))], path: e.path(g)}
	// Another method, except on config (a write without a library would
	// rewrite the stored config, a DELETE remove it) and tidy.
	if g.chance(0.05) && !strings.HasPrefix(req.path, "config") && e.kind != "tidy" {
		req.method = g.pick("GET", "POST", "PUT", "DELETE", "LIST", "PATCH", "HEAD", "OPTIONS")
	}
	if req.method == "GET" || req.method == "LIST" || req.method == "DELETE" || req.method == "HEAD" || req.method == "OPTIONS" {
		if g.chance(0.8) {
			return req
		}
	}

	fields := map[string]string{}
	var order []string
	set := func(name, value string) {
		if _, ok := fields[name]; !ok {
			order = append(order, name)
		}
		fields[name] = value
	}
	for _, f := range e.base {
		set(f, g.goodField(f))
	}
	for _, f := range g.pickFields(e.fields) {
		if g.chance(0.5) {
			set(f, g.goodField(f))
		}
	}
	if e.kind == "config-write" {
		set("pin", g.str("mutation-pin-2718"))
		set("token_label", g.str("mutation"))
	}
	for n := g.r.Intn(4); n > 0; n-- {
		switch g.r.Intn(5) {
		case 0, 1: // a field gets a value of another kind
			if len(e.fields) > 0 {
				set(e.fields[g.r.Intn(len(e.fields))], g.weird())
			}
		case 2: // a field goes
			if len(order) > 0 {
				delete(fields, order[g.r.Intn(len(order))])
			}
		case 3: // an unknown or foreign field
			set(g.pick("unknown", "batch_input", "ciphertext", "plaintext", "type", "name", "key_version", "", "ключ", "__proto__"), g.weird())
		default: // a field gets a plausible value of another field
			if len(e.fields) > 0 {
				set(e.fields[g.r.Intn(len(e.fields))], g.goodField(g.pick("ciphertext", "plaintext", "bits", "batch_input", "type", "alg")))
			}
		}
	}
	// A secret sent with the wrong type must not come back in the answer.
	if g.chance(0.1) {
		secret := fmt.Sprintf("s3cret-%08x", g.r.Uint32())
		field := "plaintext"
		if e.kind == "config-write" {
			field = "pin"
		}
		set(field, g.pick(`["`+secret+`"]`, `{"v":"`+secret+`"}`, `[["`+secret+`"]]`))
		req.secret = secret
	}
	if e.kind == "config-write" {
		set("library", badLibraries[g.r.Intn(len(badLibraries))])
	}

	var parts []string
	for _, name := range order {
		if v, ok := fields[name]; ok {
			parts = append(parts, g.str(name)+":"+v)
			delete(fields, name) // a field deleted and set again is in order twice
		}
	}
	body := "{" + strings.Join(parts, ",") + "}"
	if e.kind != "config-write" && g.chance(0.08) {
		// The whole body replaced.
		switch g.r.Intn(10) {
		case 0:
			req.body = nil
			return req
		case 1:
			body = ""
		case 2:
			body = g.weird()
		case 3:
			body = "[" + body + "]"
		case 4:
			body = body[:g.r.Intn(len(body)+1)]
		case 5:
			body = `{"a":1,"a":2,` + body[1:]
		case 6:
			body = string(g.randBytes(g.r.Intn(200)))
		case 7:
			body = strings.Replace(body, ":", ":"+g.weird()+",\"x\":", 1)
		case 8:
			body = "\ufeff" + body
		default:
			body = body + body
		}
	}
	req.body = []byte(body)
	return req
}
