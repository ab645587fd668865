package hsmkms

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

func (b *backend) pathStatus() *framework.Path {
	return &framework.Path{
		Pattern:      "status",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "read", OperationSuffix: "status"},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{Callback: b.pathStatusRead, Summary: "The token, the session pool and operation counts."},
		},
		HelpSynopsis: "Report the token, the session pool and per-operation counts.",
		HelpDescription: `
Returns the token's description, this mount's session pool (size, sessions
open, in use and idle, waits for a free session, sessions replaced,
re-initialisations of the module after the HSM went away, failed calls) and
how many operations of each kind ran since the plugin started, and the keys
by state and residency. It never shows key material or the PIN.
`,
	}
}

func (b *backend) pathStatusRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	data := map[string]interface{}{
		"operations":     b.stats.snapshot(),
		"uptime_seconds": int64(time.Since(b.stats.started).Seconds()),
	}
	counts, err := b.ring.Count(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	data["keys"] = map[string]interface{}{"by_state": counts.ByState, "by_residency": counts.ByResidency, "total": counts.Total}
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		data["hsm"] = "unavailable: " + statusReason(err)
		if !errors.Is(err, errNotConfigured) {
			b.Logger().Warn("status: the HSM is unavailable", "error", err)
		}
		return &logical.Response{Data: data}, nil
	}
	data["hsm"] = "available"
	pool := client.Stats()
	data["pool"] = map[string]interface{}{
		"size": pool.Size, "open": pool.Open, "in_use": pool.InUse, "idle": pool.Idle,
		"waits": pool.Waits, "replaced": pool.Replaced, "reconnects": pool.Reconnects, "errors": pool.Errors,
	}
	cache := client.UnwrappedCacheStats()
	hitRate := 0.0
	if total := cache.Hits + cache.Misses; total > 0 {
		hitRate = float64(cache.Hits) / float64(total)
	}
	data["unwrapped_cache"] = map[string]interface{}{
		"entries": cache.Entries, "pinned": cache.Pinned, "hits": cache.Hits, "misses": cache.Misses,
		"hit_rate": hitRate, "evictions": cache.Evictions, "unwraps": cache.Unwraps,
		"unwraps_per_second": cache.UnwrapsPerSecond, "ttl": cache.TTL, "size": cache.Size,
	}
	if st, err := b.ring.KEK(ctx, req.Storage); err == nil {
		data["kek"] = kekStatus(st)
	}
	if info, err := client.TokenInfo(); err == nil {
		data["token"] = map[string]interface{}{
			"label": info.Label, "manufacturer": info.Manufacturer, "model": info.Model,
			"serial_number": info.SerialNumber, "slot": info.Slot,
		}
	} else {
		data["token"] = "unreadable: " + statusReason(err)
		b.Logger().Warn("status: the token could not be described", "error", err)
	}
	return &logical.Response{Data: data}, nil
}

// statusReason says why the HSM is unavailable in words fit for any reader
// of status: no library path, label or PKCS#11 detail (those go to the
// server log).
func statusReason(err error) string {
	switch {
	case errors.Is(err, errNotConfigured):
		return "this mount has no config yet"
	case errors.Is(err, hsm.ErrPINIncorrect), errors.Is(err, hsm.ErrPINLocked):
		return "the token refused the PIN"
	case errors.Is(err, hsm.ErrTokenNotFound):
		return "the token is not present"
	case errors.Is(err, hsm.ErrLibrary):
		return "the PKCS#11 library could not be loaded"
	case errors.Is(err, hsm.ErrClosed):
		return "the mount is being reconfigured"
	}
	return "the HSM did not answer; the Vault server log has the details"
}
