// Package hsmkms is a Vault secrets engine that keeps customer master keys in
// a PKCS#11 HSM and speaks Transit's wire format.
package hsmkms

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-uuid"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

const operationPrefix = "hsmkms"

// Factory is the plugin's entry point, called by Vault once per mount.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	allowed, err := libraryAllowList()
	if err != nil {
		return nil, err
	}
	b := newBackend(allowed)
	withCache := *conf
	if conf.System != nil {
		withCache.System = &cachingSystemView{SystemView: conf.System}
	}
	if err := b.Setup(ctx, &withCache); err != nil {
		return nil, err
	}
	return b, nil
}

type backend struct {
	*framework.Backend

	// allowedLibraryDirs is fixed at plugin start, outside the API: whoever
	// may write config must not be able to make the plugin load any .so.
	allowedLibraryDirs []string

	clientMu sync.RWMutex
	client   *hsm.Client // nil until a config is loaded
	conf     *mountConfig

	// nextRotateCheck (a time.Time) is when the periodic function next
	// looks for keys due for rotation.
	nextRotateCheck atomic.Value

	// owner identifies this mount to the hsm package (Vault's backend
	// UUID); mountPoint, learnt from config writes, names it in messages.
	owner           string
	mountPoint      atomic.Value // string
	unregisterOwner func()

	// intercept, set by tests only, puts a misbehaving token between the
	// mount and the PKCS#11 module (hsm.Config.Intercept).
	intercept func(hsm.PKCS11) hsm.PKCS11

	// ring is the mount's keys and KEKs (internal/keyring), made at Setup.
	ring *keyring.Keyring

	// markerDone: this mount's marker is on the token (mount_marker.go).
	markerDone atomic.Bool

	// stats counts operations for the status path.
	stats *opStats

	// metrics are the mount's Prometheus metrics (metrics.go);
	// openFailure is the hsm.LoginState the last failed opening of the
	// HSM left, "" when it opened or was not tried.
	metrics     *mountMetrics
	openFailure atomic.Value

	// publicKeys caches parsed public keys by their DER bytes;
	// checkedPublicKeys notes the versions whose stored public key was
	// compared with the token's once (public_keys.go).
	publicKeys        sync.Map
	checkedPublicKeys sync.Map
}

func newBackend(allowedLibraryDirs []string) *backend {
	b := &backend{allowedLibraryDirs: allowedLibraryDirs, stats: newOpStats()}
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			Root:            []string{"config", "config/kek/rotate", "config/kek/trim", "tidy", "purge/*"},
			SealWrapStorage: []string{configStoragePath, keyring.KeyStoragePrefix},
		},
		Paths: framework.PathAppend(
			[]*framework.Path{b.pathConfig(), b.pathKEKRotate(), b.pathKEKTrim(), b.pathConfigKeys()},
			[]*framework.Path{b.pathKeyRotate(), b.pathKeyConfig(), b.pathKeyTrim(), b.pathHash(), b.pathCacheConfig()},
			b.pathKeyDeletion(),
			b.pathKeys(),
			b.pathImport(),
			[]*framework.Path{b.pathAdopt(), b.pathWrappingKey()},
			b.pathBackup(),
			[]*framework.Path{
				b.pathEncrypt(), b.pathDecrypt(), b.pathRewrap(), b.pathSign(), b.pathVerify(), b.pathHMAC(),
				b.pathExport(), b.pathDatakey(), b.pathDatakeyDecrypt(), b.pathRandom(), b.pathStatus(), b.pathTidy(),
				b.pathMetrics(),
			},
		),
		Secrets:    []*framework.Secret{},
		Invalidate: b.invalidate,
		Clean:      b.clean,
		WALRollback: func(ctx context.Context, req *logical.Request, kind string, data interface{}) error {
			return b.ring.Rollback(ctx, req.Storage, kind, data)
		},
		WALRollbackMinAge: keyring.RollbackMinAge(),
		PeriodicFunc:      b.periodic,
		RunningVersion:    version,
	}
	b.metrics = newMountMetrics(b.Backend.Paths)
	return b
}

// errHSMOpen: the stored config could not open the token (it is away, or
// refuses the PIN): the HSM's failure, answered 503.
var errHSMOpen = errors.New("opening the HSM from the stored config")

// errNotConfigured is returned for every crypto or key request before config.
var errNotConfigured = errors.New("this mount has no HSM configuration yet: write the config path first (library, token_label or slot, pin)")

// hsmClient returns the mount's client, opening it from the stored config on
// first use (and after a plugin restart, when Vault starts us anew).
func (b *backend) hsmClient(ctx context.Context, s logical.Storage) (*hsm.Client, *mountConfig, error) {
	b.clientMu.RLock()
	if b.client != nil {
		c, conf := b.client, b.conf
		b.clientMu.RUnlock()
		return c, conf, nil
	}
	b.clientMu.RUnlock()

	b.clientMu.Lock()
	defer b.clientMu.Unlock()
	if b.client != nil {
		return b.client, b.conf, nil
	}
	conf, err := loadConfig(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	if conf == nil {
		return nil, nil, errNotConfigured
	}
	if conf.resolvedLibrary, err = checkLibraryPath(conf.Library, b.allowedLibraryDirs); err != nil {
		return nil, nil, fmt.Errorf("stored config: %w", err)
	}
	c, err := b.openHSM(ctx, conf)
	if err != nil {
		b.openFailure.Store(hsm.LoginStateOf(err))
		return nil, nil, fmt.Errorf("%w: %w", errHSMOpen, err)
	}
	b.openFailure.Store(hsm.LoginState(""))
	b.client, b.conf = c, conf
	return c, conf, nil
}

// swapClient installs a client opened for a new config and closes the old
// one after it, so a shared login is never dropped in between.
func (b *backend) swapClient(c *hsm.Client, conf *mountConfig) {
	b.clientMu.Lock()
	old := b.client
	b.client, b.conf = c, conf
	b.openFailure.Store(hsm.LoginState(""))
	b.clientMu.Unlock()
	if old != nil {
		old.Close()
	}
}

// Setup records the mount's identity, then sets the framework up.
func (b *backend) Setup(ctx context.Context, conf *logical.BackendConfig) error {
	b.owner = conf.BackendUUID
	if b.owner == "" {
		id, err := uuid.GenerateUUID()
		if err != nil {
			return err
		}
		b.owner = id
	}
	b.unregisterOwner = hsm.RegisterOwner(b.owner)
	b.ring = keyring.New(b.owner, conf.Logger, conf.StorageView, func(ctx context.Context, s logical.Storage) (keyring.HSM, error) {
		client, _, err := b.hsmClient(ctx, s)
		if err != nil {
			return nil, err
		}
		return client, nil
	})
	return b.Backend.Setup(ctx, conf)
}

// openHSM opens a client for a config: this mount's identity and logger,
// and the test interceptor if any.
func (b *backend) openHSM(ctx context.Context, conf *mountConfig) (*hsm.Client, error) {
	hc := conf.hsmConfig()
	hc.Owner = b.owner
	hc.OwnerName, _ = b.mountPoint.Load().(string)
	hc.Logger = b.Logger()
	hc.Intercept = b.intercept
	hc.Observe = b.metrics.observeCall
	return hsm.Open(ctx, hc)
}

func (b *backend) resetClient() { b.swapClient(nil, nil) }

func (b *backend) invalidate(_ context.Context, key string) {
	if key == configStoragePath {
		b.resetClient()
		return
	}
	b.clientMu.RLock()
	client := b.client
	b.clientMu.RUnlock()
	// Another node changed the key: its unwrapped copies here go too, and
	// come back from storage when used.
	var forget func(id []byte)
	if client != nil {
		forget = client.ForgetUnwrapped
	}
	b.ring.Invalidate(key, forget)
}

// clean runs when the mount is unmounted or Vault shuts down (Vault does
// not say which): the mount is no longer alive in this process.
func (b *backend) clean(ctx context.Context) {
	// A clean shutdown writes the usage counted since the last flush.
	if _, err := b.ring.FlushUsage(ctx, b.ring.Storage(), true); err != nil {
		b.Logger().Warn("could not write the keys' usage at shutdown", "error", err)
	}
	b.ring.Stop()
	b.resetClient()
	if b.unregisterOwner != nil {
		b.unregisterOwner()
	}
}

const backendHelp = `
The hsmkms secrets engine keeps encryption keys in a PKCS#11 HSM and performs
every cryptographic operation inside it. Its API follows Vault's Transit
engine, so Transit clients work unchanged, and adds key states, operations per
key, a key quota, a default key and encryption contexts.

Start by writing the config path (library, token_label or slot, pin), then
create keys under keys/ and use encrypt/ and decrypt/.
`
