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
	"time"

	"github.com/hashicorp/go-uuid"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
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

	// now is the clock; tests move it to see automatic rotation happen.
	now func() time.Time

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

	// kekCache holds the KEK state under kekStorageKey; rewrapRunning is
	// set while the rewrap job runs; stopping is closed when the mount
	// goes away.
	kekCache      keyring.Cache[kekState]
	rewrapRunning atomic.Bool
	rewrapDone    atomic.Pointer[chan struct{}]
	// markerDone: this mount's marker is on the token (mount_marker.go).
	markerDone atomic.Bool
	stopping   chan struct{}
	// storage is the mount's storage view, for work outside a request's
	// own (the rewrap job, unwrapping a key deep in a handler).
	storage  logical.Storage
	stopOnce sync.Once

	// stats counts operations for the status path.
	stats *opStats

	// keys caches key entries by name; see key_cache.go.
	keys keyring.Cache[keyEntry]

	// publicKeys caches parsed public keys by their DER bytes.
	publicKeys sync.Map

	// keysMu serialises changes to key entries (create, delete, state,
	// quota, rotation). Readers take no lock: they read published entries
	// (key_cache.go).
	keysMu sync.Mutex
}

func newBackend(allowedLibraryDirs []string) *backend {
	b := &backend{allowedLibraryDirs: allowedLibraryDirs, now: time.Now, stats: newOpStats(), stopping: make(chan struct{})}
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			Root:            []string{"config", "config/kek/rotate", "config/kek/trim", "tidy"},
			SealWrapStorage: []string{configStoragePath, keyStoragePrefix},
		},
		Paths: framework.PathAppend(
			[]*framework.Path{b.pathConfig(), b.pathKEKRotate(), b.pathKEKTrim(), b.pathConfigKeys()},
			[]*framework.Path{b.pathKeyRotate(), b.pathKeyConfig(), b.pathKeyTrim(), b.pathHash(), b.pathCacheConfig()},
			b.pathKeys(),
			b.pathImport(),
			[]*framework.Path{b.pathAdopt(), b.pathWrappingKey()},
			b.pathBackup(),
			[]*framework.Path{
				b.pathEncrypt(), b.pathDecrypt(), b.pathRewrap(), b.pathSign(), b.pathVerify(), b.pathHMAC(),
				b.pathExport(), b.pathDatakey(), b.pathDatakeyDecrypt(), b.pathRandom(), b.pathStatus(), b.pathTidy(),
			},
		),
		Secrets:           []*framework.Secret{},
		Invalidate:        b.invalidate,
		Clean:             b.clean,
		WALRollback:       b.walRollback,
		WALRollbackMinAge: walRollbackMinAge,
		PeriodicFunc:      b.rotateDueKeys,
	}
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
		return nil, nil, fmt.Errorf("%w: %w", errHSMOpen, err)
	}
	b.client, b.conf = c, conf
	return c, conf, nil
}

// swapClient installs a client opened for a new config and closes the old
// one after it, so a shared login is never dropped in between.
func (b *backend) swapClient(c *hsm.Client, conf *mountConfig) {
	b.clientMu.Lock()
	old := b.client
	b.client, b.conf = c, conf
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
	b.storage = conf.StorageView
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
	return hsm.Open(ctx, hc)
}

func (b *backend) resetClient() { b.swapClient(nil, nil) }

func (b *backend) invalidate(_ context.Context, key string) {
	if key == kekStorageKey {
		b.kekCache.Publish(kekStorageKey, nil)
		return
	}
	if key == configStoragePath {
		b.resetClient()
		return
	}
	b.invalidateKey(key)
}

// clean runs when the mount is unmounted or Vault shuts down (Vault does
// not say which): the mount is no longer alive in this process.
func (b *backend) clean(context.Context) {
	b.stopOnce.Do(func() { close(b.stopping) })
	b.resetClient()
	if b.unregisterOwner != nil {
		b.unregisterOwner()
	}
}

// respondError turns an error from the HSM layer into Vault's conventions:
// the caller's mistakes are 400s, an HSM that failed twice is a 503, the
// rest is internal.
func respondError(op string, err error) (*logical.Response, error) {
	var ue userError
	var ie *wire.InputError
	switch {
	case errors.As(err, &ue):
		return logical.ErrorResponse(ue.msg), logical.ErrInvalidRequest
	case errors.As(err, &ie):
		return logical.ErrorResponse(ie.Error()), logical.ErrInvalidRequest
	case errors.Is(err, errNotConfigured):
		return logical.ErrorResponse(err.Error()), logical.ErrInvalidRequest
	case errors.Is(err, hsm.ErrDecrypt):
		return logical.ErrorResponse("%s: ciphertext could not be decrypted: it was altered, made by another key or version, or the context, associated_data or encryption_context differ", op), logical.ErrInvalidRequest
	case errors.Is(err, hsm.ErrInvalidInput):
		return logical.ErrorResponse("%s: %s", op, err.Error()), logical.ErrInvalidRequest
	case hsmUnavailable(err):
		return nil, logical.CodedError(503, fmt.Sprintf("%s: %v", op, err))
	}
	return nil, fmt.Errorf("%s: %w", op, err)
}

// hsmUnavailable reports the errors that mean the HSM (not the caller, not
// the plugin) failed: answered 503, so clients retry.
func hsmUnavailable(err error) bool {
	// A key object or token not found is the HSM's state, not the caller's
	// fault: a request racing an outage can see it before the module is
	// re-initialised (the key's metadata says the object exists).
	return errors.Is(err, hsm.ErrUnavailable) || errors.Is(err, hsm.ErrPoolTimeout) || errors.Is(err, hsm.ErrClosed) ||
		errors.Is(err, errHSMOpen) || errors.Is(err, hsm.ErrKeyNotFound) || errors.Is(err, hsm.ErrTokenNotFound)
}

const backendHelp = `
The hsmkms secrets engine keeps encryption keys in a PKCS#11 HSM and performs
every cryptographic operation inside it. Its API follows Vault's Transit
engine, so Transit clients work unchanged, and adds key states, operations per
key, a key quota, a default key and encryption contexts.

Start by writing the config path (library, token_label or slot, pin), then
create keys under keys/ and use encrypt/ and decrypt/.
`
