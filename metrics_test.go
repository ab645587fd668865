package hsmkms

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/miekg/pkcs11"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
)

// scrape is one parsed GET metrics.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics reads the mount's metrics as Vault would serve them and
// parses them with Prometheus's own parser.
func (m *testMount) scrapeMetrics() (scrape, string) {
	m.t.Helper()
	resp := m.mustOK(logical.ReadOperation, "metrics", nil)
	if ct := resp.Data[logical.HTTPContentType]; ct != "text/plain; version=0.0.4; charset=utf-8" {
		m.t.Fatalf("content type %v, want Prometheus's text format", ct)
	}
	if code := resp.Data[logical.HTTPStatusCode]; code != http.StatusOK {
		m.t.Fatalf("status %v, want 200", code)
	}
	body, ok := resp.Data[logical.HTTPRawBody].([]byte)
	if !ok || len(body) == 0 {
		m.t.Fatalf("raw body %T, want the text as bytes", resp.Data[logical.HTTPRawBody])
	}
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		m.t.Fatalf("Prometheus's parser refuses the output: %v\n%s", err, body)
	}
	return families, string(body)
}

// value is the value of the series of name with exactly labels (a counter,
// a gauge, or a histogram's count), and whether it is there.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if !maps.Equal(got, want) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// get is value, failing the test when the series is absent.
func (s scrape) get(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.value(name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return v
}

// calls sums hsmkms_pkcs11_calls_total by function, over error classes.
func (s scrape) calls() map[string]int {
	out := map[string]int{}
	for _, m := range s["hsmkms_pkcs11_calls_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "function" {
				out[l.GetValue()] += int(m.Counter.GetValue())
			}
		}
	}
	return out
}

// labelValues are the values label takes in the family name.
func (s scrape) labelValues(name, label string) []string {
	var out []string
	for _, m := range s[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label && !slices.Contains(out, l.GetValue()) {
				out = append(out, l.GetValue())
			}
		}
	}
	slices.Sort(out)
	return out
}

// After N encrypts on a warm key the request counter says N, the latency
// histogram counted N, and the PKCS#11 counters moved by exactly the calls
// the module received: C_EncryptInit and C_Encrypt, N of each. Scrapes
// make no PKCS#11 call and count themselves once they are answered.
func TestMetricsCountRequestsAndPKCS11CallsExactly(t *testing.T) {
	m, ft := faultyMount(t)
	const key, n = "payroll-7f3a", 7
	m.mustOK(logical.UpdateOperation, "keys/"+key, nil)
	encrypt(t, m, key, "warm-up", nil)

	before, _ := m.scrapeMetrics()
	calledBefore := ft.Counts()
	for i := range n {
		encrypt(t, m, key, fmt.Sprintf("counted %d", i), nil)
	}
	after, _ := m.scrapeMetrics()
	called := faulttoken.Delta(calledBefore, ft.Counts())

	if got := after.get(t, "hsmkms_requests_total", "operation", "encrypt", "outcome", "2xx"); got != n+1 {
		t.Errorf("encrypt 2xx: %v, want %d (the warm-up and %d)", got, n+1, n)
	}
	if got := after.get(t, "hsmkms_request_duration_seconds", "operation", "encrypt"); got != n+1 {
		t.Errorf("encrypt latency histogram counted %v, want %d", got, n+1)
	}
	if got := after.get(t, "hsmkms_requests_total", "operation", "metrics", "outcome", "2xx"); got != 1 {
		t.Errorf("metrics 2xx: %v, want 1 (the scrape before; a scrape counts once answered)", got)
	}
	if got := after.get(t, "hsmkms_requests_total", "operation", "keys", "outcome", "2xx"); got != 1 {
		t.Errorf("keys 2xx: %v, want 1", got)
	}
	delta := faulttoken.Delta(before.calls(), after.calls())
	if want := map[string]int{"C_EncryptInit": n, "C_Encrypt": n}; !maps.Equal(delta, want) || !maps.Equal(called, want) {
		t.Errorf("%d encrypts on a warm key: metrics counted %v, the module received %v, want %v", n, delta, called, want)
	}
	for _, fn := range []string{"C_EncryptInit", "C_Encrypt"} {
		if got := after.get(t, "hsmkms_pkcs11_calls_total", "function", fn, "error_class", "none") -
			before.get(t, "hsmkms_pkcs11_calls_total", "function", fn, "error_class", "none"); got != n {
			t.Errorf("%s without error: %v more, want %d", fn, got, n)
		}
		if got := after.get(t, "hsmkms_pkcs11_call_duration_seconds", "function", fn) -
			before.get(t, "hsmkms_pkcs11_call_duration_seconds", "function", fn); got != n {
			t.Errorf("%s latency histogram counted %v more, want %d", fn, got, n)
		}
	}
}

// A caller's mistake is counted in 4xx and the HSM's failure in 5xx, each
// under its operation; the device error shows in the PKCS#11 counters with
// its class, with the retry and the re-initialisation it caused.
func TestMetricsCountFailuresInTheirClass(t *testing.T) {
	m, ft := faultyMount(t)
	const key = "ledger-2b9c"
	m.mustOK(logical.UpdateOperation, "keys/"+key, nil)
	before, _ := m.scrapeMetrics()

	m.mustStatus(logical.UpdateOperation, "encrypt/"+key, map[string]interface{}{"plaintext": "not base64!"}, http.StatusBadRequest)
	m.mustStatus(logical.UpdateOperation, "encrypt/"+key, map[string]interface{}{"plaintext": []interface{}{"a list"}}, http.StatusBadRequest)
	m.mustStatus(logical.UpdateOperation, "decrypt/"+key, map[string]interface{}{"ciphertext": "vault:v1:AAAA"}, http.StatusBadRequest)
	if resp, err := m.do(logical.ReadOperation, "keys/no-such-key", nil); err != nil || resp != nil {
		t.Fatalf("reading a missing key: %v %v, want Vault's 404 (nil, nil)", resp, err)
	}
	if _, err := m.do(logical.UpdateOperation, "no-such-path/"+key, nil); !errors.Is(err, logical.ErrUnsupportedPath) {
		t.Fatalf("an unknown path: %v, want ErrUnsupportedPath", err)
	}
	ft.SetFailing("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	m.mustStatus(logical.UpdateOperation, "encrypt/"+key, map[string]interface{}{"plaintext": b64("x")}, http.StatusServiceUnavailable)
	ft.SetFailing("C_Encrypt", nil)
	after, body := m.scrapeMetrics()

	for _, tc := range []struct {
		op, outcome string
		want        float64
	}{
		{"encrypt", "4xx", 2}, {"encrypt", "5xx", 1}, {"decrypt", "4xx", 1}, {"keys", "4xx", 1}, {"unknown", "4xx", 1},
	} {
		got, _ := after.value("hsmkms_requests_total", "operation", tc.op, "outcome", tc.outcome)
		was, _ := before.value("hsmkms_requests_total", "operation", tc.op, "outcome", tc.outcome)
		if got-was != tc.want {
			t.Errorf("%s %s: %v more, want %v", tc.op, tc.outcome, got-was, tc.want)
		}
	}
	if got, ok := after.value("hsmkms_requests_total", "operation", "encrypt", "outcome", "2xx"); ok {
		t.Errorf("encrypt 2xx: %v, want none", got)
	}
	// The device error, then the same after re-initialising: retried
	// once, never a third time.
	if got := after.get(t, "hsmkms_pkcs11_calls_total", "function", "C_Encrypt", "error_class", "device"); got != 2 {
		t.Errorf("C_Encrypt with a device error: %v, want 2", got)
	}
	for _, name := range []string{"hsmkms_pkcs11_retries_total", "hsmkms_hsm_reinitialisations_total"} {
		if got := after.get(t, name) - before.get(t, name); got != 1 {
			t.Errorf("%s: %v more, want 1", name, got)
		}
	}
	if got := after.get(t, "hsmkms_hsm_up"); got != 1 {
		t.Errorf("hsm_up after the module came back: %v, want 1", got)
	}
	if ops := after.labelValues("hsmkms_requests_total", "operation"); !slices.Equal(ops, []string{"config", "decrypt", "encrypt", "keys", "metrics", "unknown"}) {
		t.Errorf("operations %v: a label outside the mount's paths", ops)
	}
	for _, secret := range []string{key, "no-such-key", "no-such-path", testToken.PIN, testToken.Label, testToken.Library, "not base64!", b64("x"), "AAAA"} {
		if strings.Contains(body, secret) {
			t.Errorf("the metrics show %q:\n%s", secret, body)
		}
	}
}

// The login state follows the token: ok, then the PIN refused (the HSM
// re-initialised after a device error and the login failed), and the
// figure a scrape reads never logs in itself.
func TestMetricsShowTheLoginState(t *testing.T) {
	m, ft := faultyMount(t)
	m.mustOK(logical.UpdateOperation, "keys/state", nil)
	s, _ := m.scrapeMetrics()
	if got := s.get(t, "hsmkms_hsm_login_state", "state", "ok"); got != 1 {
		t.Fatalf("login state ok: %v, want 1", got)
	}
	ft.SetFailing("C_Login", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
	ft.FailNext("C_Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	m.mustStatus(logical.UpdateOperation, "encrypt/state", map[string]interface{}{"plaintext": b64("x")}, http.StatusServiceUnavailable)
	logins := ft.Calls("C_Login")
	for range 3 {
		s, _ = m.scrapeMetrics()
	}
	if n := ft.Calls("C_Login") - logins; n != 0 {
		t.Errorf("3 scrapes made %d C_Login calls, want none", n)
	}
	want := map[string]float64{"ok": 0, "pin_refused": 1, "pin_locked": 0, "unreachable": 0}
	for state, v := range want {
		if got := s.get(t, "hsmkms_hsm_login_state", "state", state); got != v {
			t.Errorf("login state %s: %v, want %v", state, got, v)
		}
	}
	if got := s.get(t, "hsmkms_hsm_up"); got != 0 {
		t.Errorf("hsm_up with the PIN refused: %v, want 0", got)
	}
	if got := s.get(t, "hsmkms_pkcs11_calls_total", "function", "C_Login", "error_class", "pin"); got < 1 {
		t.Errorf("C_Login refused: %v, want at least 1", got)
	}
	ft.SetFailing("C_Login", nil)
}

// A mount that has not opened its HSM shows no HSM figures (a scrape does
// not open it); one whose opening failed shows the HSM down. Each mount's
// figures are its own.
func TestMetricsOfAMountWithoutAnOpenHSM(t *testing.T) {
	m := newMount(t)
	s, _ := m.scrapeMetrics()
	for _, name := range []string{"hsmkms_hsm_up", "hsmkms_hsm_login_state", "hsmkms_pool_size", "hsmkms_unwrapped_cache_entries", "hsmkms_pkcs11_calls_total"} {
		if _, ok := s[name]; ok {
			t.Errorf("%s on a mount with no config", name)
		}
	}
	if got := s.get(t, "hsmkms_keys_by_state", "state", "active"); got != 0 {
		t.Errorf("active keys of an empty mount: %v", got)
	}
	if got := s.get(t, "hsmkms_build_info", "version", version); got != 1 {
		t.Errorf("build info: %v", got)
	}

	configured, ft := faultyMount(t)
	configured.mustOK(logical.UpdateOperation, "keys/away", nil)
	restarted := configured.restart(t)
	restarted.b.intercept = ft.Intercept
	ft.SetAbsent(true)
	restarted.mustStatus(logical.UpdateOperation, "encrypt/away", map[string]interface{}{"plaintext": b64("x")}, http.StatusServiceUnavailable)
	s, _ = restarted.scrapeMetrics()
	if got := s.get(t, "hsmkms_hsm_login_state", "state", "unreachable"); got != 1 {
		t.Errorf("after the HSM failed to open: unreachable %v, want 1", got)
	}
	if got := s.get(t, "hsmkms_hsm_up"); got != 0 {
		t.Errorf("after the HSM failed to open: hsm_up %v, want 0", got)
	}
	if got := s.get(t, "hsmkms_requests_total", "operation", "encrypt", "outcome", "5xx"); got != 1 {
		t.Errorf("the restarted mount's encrypt 5xx: %v, want 1", got)
	}
	ft.SetAbsent(false)
	restarted.mustOK(logical.UpdateOperation, "encrypt/away", map[string]interface{}{"plaintext": b64("x")})
	s, _ = restarted.scrapeMetrics()
	if got := s.get(t, "hsmkms_hsm_up"); got != 1 {
		t.Errorf("after the HSM came back: hsm_up %v, want 1", got)
	}
	if s, _ := m.scrapeMetrics(); len(s["hsmkms_requests_total"].GetMetric()) != 1 {
		t.Errorf("the empty mount counts other mounts' requests: %v", s["hsmkms_requests_total"])
	}
}

func TestMetricsPathHasHelp(t *testing.T) {
	m := newMount(t)
	resp, err := m.do(logical.HelpOperation, "metrics", nil)
	if err != nil || resp == nil || !strings.Contains(dump(resp.Data), "Prometheus") {
		t.Fatalf("path-help metrics: %v %v", err, resp)
	}
}

// The status class counted is the one Vault answers with.
func TestVaultStatusIsVaultsAnswer(t *testing.T) {
	read := &logical.Request{Operation: logical.ReadOperation}
	write := &logical.Request{Operation: logical.UpdateOperation}
	list := &logical.Request{Operation: logical.ListOperation}
	respond := func(err error) (*logical.Response, error) { return respondError("encrypt", err) }
	for _, tc := range []struct {
		name string
		req  *logical.Request
		resp *logical.Response
		err  error
		want int
	}{
		{"a read miss", read, nil, nil, http.StatusNotFound},
		{"an empty list", list, &logical.Response{Data: map[string]interface{}{"keys": []string{}}}, nil, http.StatusNotFound},
		{"a write with no body", write, nil, nil, http.StatusOK},
		{"a response", write, &logical.Response{Data: map[string]interface{}{"ciphertext": "vault:v1:x"}}, nil, http.StatusOK},
		{"a raw response", read, &logical.Response{Data: map[string]interface{}{logical.HTTPStatusCode: http.StatusAccepted}}, nil, http.StatusAccepted},
		{"ErrorResponse", write, logical.ErrorResponse("fix it"), logical.ErrInvalidRequest, http.StatusBadRequest},
		{"an error response alone", write, logical.ErrorResponse("fix it"), nil, http.StatusBadRequest},
		{"permission denied", write, nil, logical.ErrPermissionDenied, http.StatusForbidden},
		{"unsupported path", write, nil, logical.ErrUnsupportedPath, http.StatusNotFound},
		{"the HSM unavailable", write, nil, nil, http.StatusServiceUnavailable},
		{"internal", write, nil, fmt.Errorf("encrypt: %w", errors.New("storage broke")), http.StatusInternalServerError},
	} {
		resp, err := tc.resp, tc.err
		if tc.name == "the HSM unavailable" {
			resp, err = respond(fmt.Errorf("%w: the token is away", hsm.ErrUnavailable))
		}
		if got := vaultStatus(tc.req, resp, err); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// Operations are the literal first segments of the mount's patterns, so
// labels come from a fixed set whatever the requests name.
func TestEveryPathHasAnOperationLabel(t *testing.T) {
	m := newMount(t)
	for _, p := range m.b.Paths {
		op := m.b.metrics.operationOf(p)
		if op == "unknown" || strings.ContainsAny(op, "/()?$^") {
			t.Errorf("path %q: operation %q", p.Pattern, op)
		}
	}
	for pattern, want := range map[string]string{"keys/?$": "keys", "restore(/(?P<name>.+))?": "restore", "cache-config": "cache-config", "^hash(/(?P<x>.+))?$": "hash"} {
		if got := patternOperation(pattern); got != want {
			t.Errorf("patternOperation(%q) = %q, want %q", pattern, got, want)
		}
	}
}
