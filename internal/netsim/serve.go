package netsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"time"
)

// snapshotPath is where Serve answers a Take.
const snapshotPath = "/snapshot"

// Source gives a network's counters: the network itself in this process,
// or a Remote one in the plugin's.
type Source interface {
	Snapshot(ctx context.Context) (Snapshot, error)
}

// Snapshot is Take, as a Source.
func (n *Network) Snapshot(context.Context) (Snapshot, error) { return n.Take(), nil }

// Serve answers GET /snapshot with a Take, as JSON, on a Unix socket at
// path (replacing a stale one), readable by this user only: the plugin
// runs under Vault, and the bench reads its counters from outside.
func (n *Network) Serve(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the old socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+snapshotPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(n.Take())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return nil
}

// Remote reads the counters a Serve in another process answers with.
type Remote struct {
	path string
	http *http.Client
}

// NewRemote reads the network served on the Unix socket at path.
func NewRemote(path string) *Remote {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Remote{path: path, http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// Snapshot asks the other process for a Take.
func (r *Remote) Snapshot(ctx context.Context) (Snapshot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://netsim"+snapshotPath, nil)
	if err != nil {
		return Snapshot{}, err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading the simulated network's counters at %s: %w", r.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Snapshot{}, fmt.Errorf("reading the simulated network's counters at %s: %s", r.path, resp.Status)
	}
	var s Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return Snapshot{}, fmt.Errorf("decoding the simulated network's counters: %w", err)
	}
	return s, nil
}
