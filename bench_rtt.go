//go:build hsmkms_benchrtt

package hsmkms

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/netsim"
)

// The plugin `make bench` builds, with the hsmkms_benchrtt tag and never
// for a release, puts a simulated network HSM (internal/netsim) between
// every mount and its token: each PKCS#11 call takes HSMKMS_BENCH_HSM_RTT
// longer (a Go duration; unset or 0: no delay) and is counted, as is every
// operation of a request on Vault's storage (for an external plugin, a
// round trip to Vault), and the counters are served on the Unix socket
// HSMKMS_BENCH_SEAM_SOCKET names, if set. This file is the only place
// either variable is read.
const (
	benchRTTEnv    = "HSMKMS_BENCH_HSM_RTT"
	benchSocketEnv = "HSMKMS_BENCH_SEAM_SOCKET"
)

// benchNetwork is the process's one network: every mount of the plugin
// runs in this process and shares it.
var benchNetwork = sync.OnceValues(func() (*netsim.Network, error) {
	var rtt time.Duration
	if v := os.Getenv(benchRTTEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("%s=%q is not a duration of 0 or more (e.g. 0, 500us, 2ms)", benchRTTEnv, v)
		}
		rtt = d
	}
	n := netsim.New(rtt)
	n.TrackStorage()
	if path := os.Getenv(benchSocketEnv); path != "" {
		if err := n.Serve(path); err != nil {
			return nil, fmt.Errorf("serving the simulated network's counters on %s: %w", path, err)
		}
	}
	return n, nil
})

// BenchFactory is Factory with the simulated network between each mount
// and its token, and its requests' storage operations counted.
func BenchFactory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	n, err := benchNetwork()
	if err != nil {
		return nil, err
	}
	lb, err := Factory(ctx, conf)
	if err != nil {
		return nil, err
	}
	b, ok := lb.(*backend)
	if !ok {
		return nil, fmt.Errorf("the plugin's factory returned a %T", lb)
	}
	// Before Vault sees the backend, so before any request opens the HSM.
	b.intercept = n.Wrap
	return benchBackend{backend: b, net: n}, nil
}

// benchBackend is the backend with each request's storage counted.
type benchBackend struct {
	*backend
	net *netsim.Network
}

func (b benchBackend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	b.count(req)
	return b.backend.HandleRequest(ctx, req)
}

func (b benchBackend) HandleExistenceCheck(ctx context.Context, req *logical.Request) (bool, bool, error) {
	b.count(req)
	return b.backend.HandleExistenceCheck(ctx, req)
}

func (b benchBackend) count(req *logical.Request) {
	if req != nil && req.Storage != nil {
		req.Storage = countedStorage{Storage: req.Storage, net: b.net}
	}
}

// countedStorage counts each operation on the storage it wraps.
type countedStorage struct {
	logical.Storage
	net *netsim.Network
}

func (s countedStorage) List(ctx context.Context, prefix string) ([]string, error) {
	s.net.CountStorage("List")
	return s.Storage.List(ctx, prefix)
}

func (s countedStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.net.CountStorage("Get")
	return s.Storage.Get(ctx, key)
}

func (s countedStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.net.CountStorage("Put")
	return s.Storage.Put(ctx, e)
}

func (s countedStorage) Delete(ctx context.Context, key string) error {
	s.net.CountStorage("Delete")
	return s.Storage.Delete(ctx, key)
}
