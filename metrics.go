package hsmkms

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin/pb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// Latency buckets, in seconds. A PKCS#11 call on a local token takes tens
// of microseconds and on a network HSM a round trip; a request adds Vault's
// storage and the plugin's gRPC hop.
var (
	callBuckets    = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}
	requestBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
)

// mountMetrics are one mount's counters and histograms, in a registry of
// the mount's own: mounts served by one plugin process never share a
// series, and nothing is process-wide. What is a state rather than a count
// (the pool, the cache, the login, the keys, the KEK) is read when scraped
// (metrics_state.go), so requests store nothing else.
type mountMetrics struct {
	registry        *prometheus.Registry
	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	calls           *prometheus.CounterVec
	callDuration    *prometheus.HistogramVec
	state           *stateDescs

	// operations maps each path to the first segment of its pattern:
	// request labels come from this fixed set, never from the request's
	// path, so a key name never becomes a label.
	operations map[*framework.Path]string
}

func newMountMetrics(paths []*framework.Path) *mountMetrics {
	m := &mountMetrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmkms_requests_total",
			Help: "Requests that reached this mount, by operation (the path's first segment) and outcome (the HTTP status class Vault answers with).",
		}, []string{"operation", "outcome"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hsmkms_request_duration_seconds",
			Help:    "Time the mount took to answer a request, by operation.",
			Buckets: requestBuckets,
		}, []string{"operation"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmkms_pkcs11_calls_total",
			Help: "PKCS#11 calls this mount made, by function and by the class of their error (none when they succeeded).",
		}, []string{"function", "error_class"}),
		callDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hsmkms_pkcs11_call_duration_seconds",
			Help:    "Time the PKCS#11 module took to answer a call, by function.",
			Buckets: callBuckets,
		}, []string{"function"}),
		state:      newStateDescs(),
		operations: map[*framework.Path]string{},
	}
	m.registry.MustRegister(m.requests, m.requestDuration, m.calls, m.callDuration)
	for _, p := range paths {
		m.operations[p] = patternOperation(p.Pattern)
	}
	return m
}

// patternOperation is the literal first segment of a path pattern:
// "encrypt" for "encrypt/(?P<name>...)", "keys" for "keys/?$".
func patternOperation(pattern string) string {
	pattern = strings.TrimPrefix(pattern, "^")
	end := strings.IndexFunc(pattern, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	})
	if end < 0 {
		return pattern
	}
	return pattern[:end]
}

// operationOf labels a request by the path it was routed to; a path the
// mount does not have is "unknown".
func (m *mountMetrics) operationOf(p *framework.Path) string {
	if op, ok := m.operations[p]; ok && op != "" {
		return op
	}
	return "unknown"
}

// counted are the operations clients send; Vault's own (rollback,
// revoke, renew) are not requests to count.
var counted = map[logical.Operation]bool{
	logical.CreateOperation: true, logical.ReadOperation: true, logical.UpdateOperation: true,
	logical.PatchOperation: true, logical.DeleteOperation: true, logical.ListOperation: true,
	logical.HelpOperation: true,
}

// observeRequest counts a request that took took, in the class of the
// status Vault answers it with.
func (m *mountMetrics) observeRequest(p *framework.Path, req *logical.Request, resp *logical.Response, err error, took time.Duration) {
	if !counted[req.Operation] {
		return
	}
	op := m.operationOf(p)
	m.requests.WithLabelValues(op, fmt.Sprintf("%dxx", vaultStatus(req, resp, err)/100)).Inc()
	m.requestDuration.WithLabelValues(op).Observe(took.Seconds())
}

// observeCall is the mount's hsm.Observer.
func (m *mountMetrics) observeCall(call string, took time.Duration, err error) {
	m.calls.WithLabelValues(call, hsm.ErrorClass(err)).Inc()
	m.callDuration.WithLabelValues(call).Observe(took.Seconds())
}

// vaultStatus is the HTTP status Vault answers a plugin's response with:
// the error as it crosses the plugin's gRPC boundary, then Vault's own
// classification (logical.RespondErrorCommon, then the coded-error
// passthrough of logical.AdjustErrorStatusCode).
func vaultStatus(req *logical.Request, resp *logical.Response, err error) int {
	err = pb.ProtoErrToErr(pb.ErrToProtoErr(err))
	status, err := logical.RespondErrorCommon(req, resp, err)
	if status == 0 && err == nil {
		if resp != nil {
			if code, ok := resp.Data[logical.HTTPStatusCode].(int); ok {
				return code
			}
		}
		return http.StatusOK
	}
	logical.AdjustErrorStatusCode(&status, err)
	return status
}

// render gathers the mount's metrics and the state collector's, in the
// text format.
func (m *mountMetrics) render(state prometheus.Collector) ([]byte, error) {
	scrape := prometheus.NewRegistry()
	if err := scrape.Register(state); err != nil {
		return nil, err
	}
	families, err := prometheus.Gatherers{m.registry, scrape}.Gather()
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	enc := expfmt.NewEncoder(&out, metricsFormat())
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return nil, err
		}
	}
	return out.Bytes(), nil
}

// metricsFormat is the Prometheus text format, which every Prometheus and
// promtool read.
func metricsFormat() expfmt.Format { return expfmt.NewFormat(expfmt.TypeTextPlain) }

// scrape is what GET metrics answers: the text, as Vault's raw response.
func (b *backend) scrape(ctx context.Context, s logical.Storage) (*logical.Response, error) {
	body, err := b.metrics.render(&stateCollector{b: b, ctx: ctx, storage: s})
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return &logical.Response{Data: map[string]interface{}{
		logical.HTTPContentType: string(metricsFormat()),
		logical.HTTPRawBody:     body,
		logical.HTTPStatusCode:  http.StatusOK,
	}}, nil
}
