package hsmkms

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func (b *backend) pathConfig() *framework.Path {
	return &framework.Path{
		Pattern: "config",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Fields: map[string]*framework.FieldSchema{
			"library": {
				Type: framework.TypeString,
				Description: "Absolute path of the PKCS#11 module (.so). After resolving symlinks it must lie in one of the " +
					"directories allowed by " + LibraryDirsEnv + " at plugin registration (default: the system PKCS#11 module directories). Required.",
			},
			"init_args": {
				Type: framework.TypeString,
				Description: "String passed to C_Initialize in CK_C_INITIALIZE_ARGS.pReserved, for modules configured that way " +
					"(NSS softokn: configdir='sql:/path' certPrefix='' keyPrefix='' secmod='secmod.db' flags='' " +
					"tokens=<0x4=[configdir='sql:/path' tokenDescription='label']>). Empty for most modules. A module is " +
					"initialised once per plugin process, so every mount that uses the same library must give the same init_args.",
			},
			"token_label": {
				Type:        framework.TypeString,
				Description: "Label of the token to use. Give token_label or slot, not both.",
			},
			"slot": {
				Type:        framework.TypeInt,
				Description: "Slot id of the token to use, when token_label is not given.",
			},
			"pin": {
				Type:        framework.TypeString,
				Description: "User PIN of the token. Write-only: never returned or logged. Required on the first write and whenever library, token_label or slot change.",
				DisplayAttrs: &framework.DisplayAttributes{
					Sensitive: true,
				},
			},
			"deletion_window": {
				Type: framework.TypeDurationSecond,
				Description: "How long a deleted key stays pending_deletion (serving nothing, cancellable with keys/:name/cancel_deletion) " +
					"before its HSM objects are destroyed; default 168h (7 days), at most 8760h. 0s deletes at once, as Transit does.",
			},
			"purge_protection": {
				Type:        framework.TypeBool,
				Description: "When true, purge/:name cannot end a deletion window early. Once true it cannot be turned off.",
			},
			"deletion_warn_recent": {
				Type:        framework.TypeDurationSecond,
				Description: "A delete of a key used within this time answers with a warning naming its last use; default 720h (30 days), 0s never warns.",
			},
			"batch_concurrency": {
				Type: framework.TypeInt,
				Description: "Most items of one batch request processed at once, each on its own session (a network HSM answers " +
					"them in parallel). At most pool_size; 0 (default) means half of pool_size, so one batch never holds every session.",
			},
			"pool_size": {
				Type:        framework.TypeInt,
				Description: fmt.Sprintf("Most PKCS#11 sessions this mount keeps open at once, 1 to %d.", maxPoolSize),
				Default:     defaultPoolSize,
			},
			"max_keys": {
				Type:        framework.TypeInt,
				Description: "Quota of keys in this mount, the default key included; 0 means no quota.",
				Default:     defaultMaxKeys,
			},
			"max_plaintext_bytes": {
				Type:        framework.TypeInt,
				Description: fmt.Sprintf("Largest plaintext encrypt accepts, in bytes after base64 decoding, 1 to %d.", maxMaxPlaintextBytes),
				Default:     defaultMaxPlaintextBytes,
			},
			"default_key": {
				Type:        framework.TypeString,
				Description: "Name of a key (aes256-gcm96) created when the config is written; it can never be deleted.",
				Default:     defaultDefaultKey,
			},
			"default_residency": {
				Type:        framework.TypeString,
				Description: "Where new keys live by default: 'hsm' (the key is a token object) or 'wrapped' (the key is kept in Vault storage wrapped by the KEK, and unwrapped into the HSM only while in use).",
				Default:     keyring.ResidencyHSM,
			},
			"kek_label": {
				Type:        framework.TypeString,
				Description: "Label of the HSM AES-256 key (KEK) that wraps keys of residency 'wrapped'. At the first config write the key with this label is used if the token has one (e.g. replicated from another HSM), otherwise it is created.",
				Default:     defaultKEKLabel,
			},
			"login_backoff": {
				Type: framework.TypeDurationSecond,
				Description: "After the token refused the PIN, how long the plugin waits before it tries to log in again " +
					"(requests meanwhile get 503 naming the cause). A config write with the PIN tries at once. Real HSMs " +
					"lock the PIN after a few failed logins, for every application on the partition.",
				Default: int(hsm.DefaultLoginBackoff.Seconds()),
			},
			"unwrapped_cache_ttl": {
				Type:        framework.TypeDurationSecond,
				Description: "How long the unwrapped copy of a wrapped key (a session object in the HSM) stays after its last use; at least 1s.",
				Default:     int(defaultUnwrappedCacheTTL.Seconds()),
			},
			"unwrapped_cache_size": {
				Type:        framework.TypeInt,
				Description: "Most unwrapped copies of wrapped keys kept in the HSM at once; beyond it the least recently used go first.",
				Default:     defaultUnwrappedCacheSize,
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathConfigRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "configuration"},
				Summary:      "Read the HSM configuration (never the PIN) and what the token reports.",
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback:     b.pathConfigWrite,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
				Summary:      "Configure the HSM; the settings are checked against the token before they are stored.",
			},
			logical.DeleteOperation: &framework.PathOperation{
				Callback:     b.pathConfigDelete,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete", OperationSuffix: "configuration"},
				Summary:      "Forget the HSM configuration; keys stay on the token and in storage.",
			},
		},
		HelpSynopsis:    pathConfigHelpSyn,
		HelpDescription: pathConfigHelpDesc,
	}
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	conf, err := loadConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	if conf == nil {
		return nil, nil
	}
	data := map[string]interface{}{
		"library":              conf.Library,
		"init_args":            conf.InitArgs,
		"token_label":          conf.TokenLabel,
		"pin_set":              conf.PIN != "",
		"pool_size":            conf.PoolSize,
		"batch_concurrency":    conf.batchConcurrency(),
		"max_keys":             conf.MaxKeys,
		"max_plaintext_bytes":  conf.MaxPlaintextBytes,
		"default_key":          conf.DefaultKey,
		"default_residency":    conf.DefaultResidency,
		"kek_label":            conf.KEKLabel,
		"unwrapped_cache_ttl":  int64(conf.UnwrappedCacheTTL.Seconds()),
		"unwrapped_cache_size": conf.unwrappedCacheSize(),
		"login_backoff":        int64(conf.LoginBackoff.Seconds()),
		"deletion_window":      int64(conf.deletionWindow().Seconds()),
		"purge_protection":     conf.PurgeProtection,
		"deletion_warn_recent": int64(conf.deletionWarnRecent().Seconds()),
	}
	mechanisms := map[string]string{
		"aes_encrypt":      "CKM_AES_GCM (96-bit IV made by the plugin, or the token's own when it uses one; 128-bit tag)",
		"aes_decrypt":      "CKM_AES_GCM",
		"aes_keygen":       "CKM_AES_KEY_GEN",
		"rsa_keygen":       "CKM_RSA_PKCS_KEY_PAIR_GEN",
		"ec_keygen":        "CKM_EC_KEY_PAIR_GEN",
		"rsa_sign":         "CKM_RSA_PKCS on a DigestInfo made by the plugin; CKM_RSA_PKCS_PSS on a digest",
		"ecdsa_sign":       "CKM_ECDSA on a digest computed by the plugin",
		"verify":           "the public key, in the plugin",
		"rsa_encrypt":      "the public key, in the plugin",
		"rsa_decrypt_pkcs": "CKM_RSA_PKCS",
		"random":           "C_GenerateRandom",
	}
	data["mechanisms"] = mechanisms
	if conf.Slot != nil {
		data["slot"] = *conf.Slot
	}
	resp := &logical.Response{Data: data}
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		resp.AddWarning(fmt.Sprintf("the token could not be reached: %v", err))
		return resp, nil
	}
	if mode, err := client.OAEPMode(ctx); err == nil {
		mechanisms["rsa_decrypt_oaep"] = string(mode)
	} else {
		resp.AddWarning(fmt.Sprintf("the token's RSA-OAEP support could not be probed: %v", err))
	}
	data["quirks"] = client.Quirks()
	info, err := client.TokenInfo()
	if err != nil {
		resp.AddWarning(fmt.Sprintf("the token could not be described: %v", err))
		return resp, nil
	}
	data["token"] = map[string]interface{}{
		"label":         info.Label,
		"manufacturer":  info.Manufacturer,
		"model":         info.Model,
		"serial_number": info.SerialNumber,
		"slot":          info.Slot,
		"firmware":      info.FirmwareString,
	}
	return resp, nil
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	old, err := loadConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	conf := defaultConfig()
	if old != nil {
		copied := *old
		conf = &copied
	}
	if err := applyConfigFields(conf, d); err != nil {
		return respondError("config", err)
	}
	pin, pinGiven := d.GetOk("pin")
	switch {
	case pinGiven && pin.(string) != "":
		conf.PIN = pin.(string)
	case old != nil && old.sameToken(conf) && old.PIN != "":
		// Keep the stored PIN: only tuning fields changed.
	default:
		return logical.ErrorResponse("pin is required on the first write and whenever library, token_label or slot change"), logical.ErrInvalidRequest
	}
	if conf.resolvedLibrary, err = checkLibraryPath(conf.Library, b.allowedLibraryDirs); err != nil {
		return logical.ErrorResponse(err.Error()), logical.ErrInvalidRequest
	}

	if req.MountPoint != "" {
		b.mountPoint.Store(req.MountPoint)
	}
	client, err := b.openHSM(ctx, conf)
	if err != nil {
		return configOpenError(conf, err)
	}
	resp := &logical.Response{}
	if _, err := client.OAEPMode(ctx); err != nil {
		resp.AddWarning(fmt.Sprintf("the token's RSA-OAEP support could not be probed: %v; RSA decryption will try again", err))
	}
	if old != nil && !old.sameToken(conf) {
		resp.AddWarning("the token changed: keys created on the previous token are not on this one and will fail until the config names it again")
	}

	b.ring.Lock()
	if err := b.ring.EnsureKEK(ctx, req.Storage, client, conf.KEKLabel); err != nil {
		b.ring.Unlock()
		client.Close()
		return respondError("create the KEK", fieldOfInput("kek_label", err))
	}
	defaultType := keyTypeNamed(keyring.DefaultType)
	_, created, err := b.ring.Create(ctx, req.Storage, client, keyring.Params{
		Name: conf.DefaultKey, Type: defaultType, Operations: defaultType.DefaultOps,
		Description: "default key of this mount; cannot be deleted", Residency: keyring.ResidencyHSM,
	}, conf.MaxKeys)
	b.ring.Unlock()
	if err != nil {
		client.Close()
		if status, msg := failure(err); status == http.StatusBadRequest {
			err = keyring.Userf("default_key %q: %s", conf.DefaultKey, msg)
		}
		return respondError(fmt.Sprintf("create the default key %q", conf.DefaultKey), err)
	}
	if err := storeConfig(ctx, req.Storage, conf); err != nil {
		client.Close()
		return nil, err
	}
	b.swapClient(client, conf)
	if created {
		resp.AddWarning(fmt.Sprintf("created the default key %q", conf.DefaultKey))
	}
	if len(resp.Warnings) == 0 {
		return nil, nil
	}
	return resp, nil
}

// applyConfigFields copies the given fields into conf and returns a message
// for the caller when one is invalid.
func applyConfigFields(conf *mountConfig, d *framework.FieldData) error {
	if v, ok := d.GetOk("library"); ok {
		conf.Library = v.(string)
	}
	if v, ok := d.GetOk("init_args"); ok {
		conf.InitArgs = v.(string)
	}
	label, labelOK := d.GetOk("token_label")
	slot, slotOK := d.GetOk("slot")
	switch {
	case labelOK && slotOK && label.(string) != "":
		return keyring.Userf("give token_label or slot, not both")
	case labelOK && label.(string) != "":
		conf.TokenLabel, conf.Slot = label.(string), nil
	case slotOK:
		if slot.(int) < 0 {
			return keyring.Userf("slot must not be negative")
		}
		s := uint(slot.(int))
		conf.TokenLabel, conf.Slot = "", &s
	}
	if conf.Library == "" {
		return keyring.Userf("library is required: the absolute path of the PKCS#11 module")
	}
	if conf.TokenLabel == "" && conf.Slot == nil {
		return keyring.Userf("token_label or slot is required")
	}
	if v, ok := d.GetOk("pool_size"); ok {
		conf.PoolSize = v.(int)
	}
	if conf.PoolSize < 1 || conf.PoolSize > maxPoolSize {
		return keyring.Userf("pool_size must be between 1 and %d", maxPoolSize)
	}
	if v, ok := d.GetOk("batch_concurrency"); ok {
		conf.BatchConcurrency = v.(int)
	}
	if conf.BatchConcurrency < 0 || conf.BatchConcurrency > conf.PoolSize {
		return keyring.Userf("batch_concurrency must be between 0 (half of pool_size) and pool_size, %d", conf.PoolSize)
	}
	if v, ok := d.GetOk("deletion_window"); ok {
		w := time.Duration(v.(int)) * time.Second
		if w < 0 || w > maxDeletionWindow {
			return keyring.Userf("deletion_window must be between 0s (delete at once) and %s", maxDeletionWindow)
		}
		conf.DeletionWindow = &w
	}
	if v, ok := d.GetOk("purge_protection"); ok {
		if conf.PurgeProtection && !v.(bool) {
			return keyring.Userf("purge_protection is on and cannot be turned off")
		}
		conf.PurgeProtection = v.(bool)
	}
	if v, ok := d.GetOk("deletion_warn_recent"); ok {
		w := time.Duration(v.(int)) * time.Second
		if w < 0 {
			return keyring.Userf("deletion_warn_recent must be 0s (never warn) or more")
		}
		conf.DeletionWarnRecent = &w
	}
	if v, ok := d.GetOk("max_keys"); ok {
		conf.MaxKeys = v.(int)
	}
	if conf.MaxKeys < 0 {
		return keyring.Userf("max_keys must be 0 (no quota) or more")
	}
	if v, ok := d.GetOk("max_plaintext_bytes"); ok {
		conf.MaxPlaintextBytes = v.(int)
	}
	if conf.MaxPlaintextBytes < 1 || conf.MaxPlaintextBytes > maxMaxPlaintextBytes {
		return keyring.Userf("max_plaintext_bytes must be between 1 and %d", maxMaxPlaintextBytes)
	}
	if v, ok := d.GetOk("default_key"); ok {
		conf.DefaultKey = v.(string)
	}
	if err := keyring.CheckName(conf.DefaultKey); err != nil {
		return keyring.Userf("default_key: %v", err)
	}
	if v, ok := d.GetOk("default_residency"); ok {
		conf.DefaultResidency = strings.ToLower(v.(string))
	}
	switch conf.DefaultResidency {
	case keyring.ResidencyHSM:
	case keyring.ResidencyWrapped:
	default:
		return keyring.Userf("default_residency %q is not one of: hsm, wrapped", conf.DefaultResidency)
	}
	if v, ok := d.GetOk("kek_label"); ok {
		conf.KEKLabel = v.(string)
	}
	if err := keyring.CheckKEKLabel(conf.KEKLabel); err != nil {
		return err
	}
	if v, ok := d.GetOk("login_backoff"); ok {
		conf.LoginBackoff = time.Duration(v.(int)) * time.Second
	}
	if conf.LoginBackoff < time.Second || conf.LoginBackoff > 24*time.Hour {
		return keyring.Userf("login_backoff must be between 1s and 24h")
	}
	if v, ok := d.GetOk("unwrapped_cache_ttl"); ok {
		conf.UnwrappedCacheTTL = time.Duration(v.(int)) * time.Second
	}
	if conf.UnwrappedCacheTTL < time.Second {
		return keyring.Userf("unwrapped_cache_ttl must be at least 1s")
	}
	if v, ok := d.GetOk("unwrapped_cache_size"); ok {
		conf.UnwrappedCacheSize = v.(int)
	}
	if conf.unwrappedCacheSize() < 1 || conf.UnwrappedCacheSize > 1_000_000 {
		return keyring.Userf("unwrapped_cache_size must be between 1 and 1000000")
	}
	return nil
}

// configOpenError explains why the token refused a config; the previous
// config stays in force.
func configOpenError(conf *mountConfig, err error) (*logical.Response, error) {
	var msg string
	switch {
	case errors.Is(err, hsm.ErrLibrary):
		msg = fmt.Sprintf("library %q could not be loaded as a PKCS#11 module", conf.Library)
	case errors.Is(err, hsm.ErrTokenNotFound), errors.Is(err, hsm.ErrInitArgsConflict):
		msg = err.Error()
	case errors.Is(err, hsm.ErrGCMUnusable):
		msg = fmt.Sprintf("the token cannot be used: %v", err)
	case errors.Is(err, hsm.ErrPINLocked):
		msg = "the token's PIN is locked; unlock it with the SO PIN before configuring"
	case errors.Is(err, hsm.ErrPINIncorrect):
		msg = "the token refused the PIN"
	default:
		return nil, fmt.Errorf("checking the config against the token: %w", err)
	}
	return logical.ErrorResponse(msg + "; the previous config (if any) stays in force"), logical.ErrInvalidRequest
}

func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	if err := req.Storage.Delete(ctx, configStoragePath); err != nil {
		return nil, fmt.Errorf("deleting config: %w", err)
	}
	b.resetClient()
	return nil, nil
}

const pathConfigHelpSyn = `Configure the PKCS#11 module, token and PIN this mount uses.`

const pathConfigHelpDesc = `
Names the PKCS#11 module (library), the token (token_label or slot) and the
user PIN, and the mount's limits. A write is checked against the token before
it is stored: a wrong library, token or PIN is a 400 and the previous config
stays in force. The PIN is write-only. Writing the config also creates the
default key, which can never be deleted.

Example:

    $ vault write kms/config library=/usr/lib/softhsm/libsofthsm2.so \
        token_label=hsmkms pin=@pin.txt

Before it is stored, a write also runs an AES-GCM self-test on a session key:
a token whose GCM the plugin cannot use correctly (one that uses an IV it
does not report, say) is refused with a 400.

Modules configured through C_Initialize, such as NSS softokn, take init_args:

    $ vault write kms/config library=/usr/lib/x86_64-linux-gnu/libsoftokn3.so \
        init_args="configdir='sql:/var/lib/nss' certPrefix='' keyPrefix='' secmod='secmod.db' flags='' tokens=<0x4=[configdir='sql:/var/lib/nss' tokenDescription='hsmkms']>" \
        token_label=hsmkms pin=@pin.txt

Reading returns the settings (never the PIN) and what the token reports:
manufacturer, model, serial number, label, the mechanisms in use and the
token's quirks that the plugin works around.
`
