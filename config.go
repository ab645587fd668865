package hsmkms

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

const configStoragePath = "config"

// Defaults of the config path, as ../shared/API.md states them.
const (
	defaultPoolSize           = 16
	maxPoolSize               = 1024
	defaultMaxKeys            = 20
	defaultMaxPlaintextBytes  = 4096
	maxMaxPlaintextBytes      = 16 << 20
	defaultDefaultKey         = "default"
	defaultKEKLabel           = "hsmkms-kek"
	defaultUnwrappedCacheTTL  = 15 * time.Minute
	defaultUnwrappedCacheSize = 1000
	defaultDeletionWindow     = 7 * 24 * time.Hour
	maxDeletionWindow         = 365 * 24 * time.Hour
	defaultDeletionWarnRecent = 30 * 24 * time.Hour
)

// mountConfig is the stored config of one mount. The PIN is stored only in
// Vault's (seal-wrapped) storage and never leaves it in a response or log.
type mountConfig struct {
	Library           string        `json:"library"`
	InitArgs          string        `json:"init_args,omitempty"`
	TokenLabel        string        `json:"token_label,omitempty"`
	Slot              *uint         `json:"slot,omitempty"`
	PIN               string        `json:"pin"`
	PoolSize          int           `json:"pool_size"`
	MaxKeys           int           `json:"max_keys"`
	MaxPlaintextBytes int           `json:"max_plaintext_bytes"`
	DefaultKey        string        `json:"default_key"`
	DefaultResidency  string        `json:"default_residency"`
	KEKLabel          string        `json:"kek_label"`
	UnwrappedCacheTTL time.Duration `json:"unwrapped_cache_ttl"`
	// UnwrappedCacheSize: 0 (configs stored before it existed) means the
	// default.
	UnwrappedCacheSize int           `json:"unwrapped_cache_size,omitempty"`
	LoginBackoff       time.Duration `json:"login_backoff"`
	// BatchConcurrency bounds the sessions one batch request uses at once;
	// 0 (configs stored before it existed, or never set) means half the
	// pool.
	BatchConcurrency int `json:"batch_concurrency,omitempty"`
	// DeletionWindow is how long a deleted key stays pending before it is
	// destroyed; nil (configs stored before it existed) means the default,
	// 0 Transit's immediate delete.
	DeletionWindow *time.Duration `json:"deletion_window,omitempty"`
	// PurgeProtection: no purge ends a deletion window early. Once on,
	// never off.
	PurgeProtection bool `json:"purge_protection,omitempty"`
	// DeletionWarnRecent: a delete of a key used more recently than this
	// warns; nil means the default.
	DeletionWarnRecent *time.Duration `json:"deletion_warn_recent,omitempty"`

	// resolvedLibrary is the allow-listed path actually loaded.
	resolvedLibrary string
}

func defaultConfig() *mountConfig {
	return &mountConfig{
		PoolSize:          defaultPoolSize,
		MaxKeys:           defaultMaxKeys,
		MaxPlaintextBytes: defaultMaxPlaintextBytes,
		DefaultKey:        defaultDefaultKey,
		DefaultResidency:  keyring.ResidencyHSM,
		KEKLabel:          defaultKEKLabel,
		UnwrappedCacheTTL: defaultUnwrappedCacheTTL,
		LoginBackoff:      hsm.DefaultLoginBackoff,
	}
}

func (c *mountConfig) unwrappedCacheSize() int {
	if c.UnwrappedCacheSize == 0 {
		return defaultUnwrappedCacheSize
	}
	return c.UnwrappedCacheSize
}

// batchConcurrency is how many items of one batch run at once: at most
// the pool, so that one batch never holds every session other requests
// need; by default half of it.
func (c *mountConfig) batchConcurrency() int {
	if c.BatchConcurrency > 0 {
		return min(c.BatchConcurrency, c.PoolSize)
	}
	return max(1, c.PoolSize/2)
}

// deletionWindow is how long a deleted key stays pending.
func (c *mountConfig) deletionWindow() time.Duration {
	if c.DeletionWindow == nil {
		return defaultDeletionWindow
	}
	return *c.DeletionWindow
}

// deletionWarnRecent: a delete of a key used more recently warns.
func (c *mountConfig) deletionWarnRecent() time.Duration {
	if c.DeletionWarnRecent == nil {
		return defaultDeletionWarnRecent
	}
	return *c.DeletionWarnRecent
}

func (c *mountConfig) hsmConfig() hsm.Config {
	hc := hsm.Config{Library: c.resolvedLibrary, InitArgs: c.InitArgs, TokenLabel: c.TokenLabel, PIN: c.PIN,
		PoolSize: c.PoolSize, LoginBackoff: c.LoginBackoff,
		UnwrappedTTL: c.UnwrappedCacheTTL, UnwrappedSize: c.unwrappedCacheSize()}
	if c.Slot != nil {
		hc.Slot = *c.Slot
	}
	return hc
}

// sameToken reports whether two configs name the same module and token.
func (c *mountConfig) sameToken(o *mountConfig) bool {
	if c == nil || o == nil || c.Library != o.Library || c.InitArgs != o.InitArgs || c.TokenLabel != o.TokenLabel {
		return false
	}
	if (c.Slot == nil) != (o.Slot == nil) {
		return false
	}
	return c.Slot == nil || *c.Slot == *o.Slot
}

func loadConfig(ctx context.Context, s logical.Storage) (*mountConfig, error) {
	entry, err := s.Get(ctx, configStoragePath)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	if entry == nil {
		return nil, nil
	}
	conf := defaultConfig()
	if err := entry.DecodeJSON(conf); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	return conf, nil
}

func storeConfig(ctx context.Context, s logical.Storage, conf *mountConfig) error {
	entry, err := logical.StorageEntryJSON(configStoragePath, conf)
	if err != nil {
		return fmt.Errorf("encoding config: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing config: %w", err)
	}
	return nil
}
