package hsmkms

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

const kekStorageKey = "kek"

// kekWALName stands for the KEK in WAL entries; no key can have it.
const kekWALName = ".kek"

// kekVersion is one key-encryption key on the token.
type kekVersion struct {
	ObjectID []byte    `json:"object_id"`
	Label    string    `json:"label"`
	Created  time.Time `json:"created"`
	// Found: the token had this key before the mount used it (made by the
	// HSM's tools, or replicated); the mount never destroys it.
	Found bool `json:"found,omitempty"`
	// Retired: a newer version took over and no stored blob names this
	// one. It stays on the token, unwrap-only, so that backups made under
	// it still restore, until config/kek/trim destroys it.
	Retired time.Time `json:"retired,omitempty"`
}

// rewrapJob moves every wrapped blob under KEK version Target. It resumes
// from Cursor (the last key name done) after a restart.
type rewrapJob struct {
	Target    int       `json:"target"`
	Cursor    string    `json:"cursor"`
	Rewrapped int       `json:"rewrapped"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// kekState is the mount's KEKs: every version a stored blob may name, and
// the rewrap job after a rotation.
type kekState struct {
	Latest   int                 `json:"latest"`
	Versions map[int]*kekVersion `json:"versions"`
	Rewrap   *rewrapJob          `json:"rewrap,omitempty"`
}

func loadKEKState(ctx context.Context, s logical.Storage) (*kekState, error) {
	entry, err := s.Get(ctx, kekStorageKey)
	if err != nil {
		return nil, fmt.Errorf("reading the KEK state: %w", err)
	}
	if entry == nil {
		return &kekState{Versions: map[int]*kekVersion{}}, nil
	}
	return loadKEKStateFrom(entry)
}

// loadKEKStateFrom decodes a stored KEK state into a value of its own, so
// the published state shares nothing with the one its writer changes.
func loadKEKStateFrom(entry *logical.StorageEntry) (*kekState, error) {
	st := &kekState{}
	if err := entry.DecodeJSON(st); err != nil {
		return nil, fmt.Errorf("decoding the KEK state: %w", err)
	}
	if st.Versions == nil {
		st.Versions = map[int]*kekVersion{}
	}
	return st, nil
}

// kek returns the KEK state, cached until it changes here or on another node.
func (b *backend) kek(ctx context.Context, s logical.Storage) (*kekState, error) {
	return b.kekCache.Load(kekStorageKey, func() (*kekState, error) { return loadKEKState(ctx, s) })
}

// storeKEKState stores the KEK state and publishes it. Readers that read
// storage meanwhile never cache what they read (keyring.Cache).
func (b *backend) storeKEKState(ctx context.Context, s logical.Storage, st *kekState) error {
	entry, err := logical.StorageEntryJSON(kekStorageKey, st)
	if err != nil {
		return err
	}
	b.kekCache.Publish(kekStorageKey, nil)
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing the KEK state: %w", err)
	}
	published, err := loadKEKStateFrom(entry)
	if err != nil {
		return err
	}
	b.kekCache.Publish(kekStorageKey, published)
	return nil
}

// ensureKEKLocked gives the mount its first KEK, at the config write: the
// token's key labelled kek_label if it has one (checked to be fit for a
// KEK, and not one a mount made), otherwise a new one. Callers hold keysMu.
func (b *backend) ensureKEKLocked(ctx context.Context, s logical.Storage, client *hsm.Client, conf *mountConfig) error {
	st, err := loadKEKState(ctx, s)
	if err != nil || st.Latest > 0 {
		return err
	}
	id, err := client.FindKEK(ctx, conf.KEKLabel)
	if err != nil {
		return err
	}
	if id != nil {
		st.Latest = 1
		st.Versions[1] = &kekVersion{ObjectID: id, Label: conf.KEKLabel, Created: b.now().UTC(), Found: true}
		if err := b.recordFoundKEKs(ctx, client, st); err != nil {
			return err
		}
		return b.storeKEKState(ctx, s, st)
	}
	obj, err := b.generateKEKLocked(ctx, s, client, b.kekLabel(conf, 1))
	if err != nil {
		return err
	}
	st.Latest = 1
	st.Versions[1] = &kekVersion{ObjectID: obj.ID, Label: obj.Label, Created: b.now().UTC()}
	if err := b.storeKEKState(ctx, s, st); err != nil {
		return err
	}
	obj.stored(ctx)
	return nil
}

// kekLabel is the label of a KEK the mount makes: kek_label, the mount and
// the version. A KEK found by kek_label alone (made by the HSM's tools, or
// replicated) is shared and never destroyed; one the mount made is its own.
// kek_label itself may never have this form (checkKEKLabel), so no mount
// can take another's KEK by naming its label.
func (b *backend) kekLabel(conf *mountConfig, version int) string {
	return fmt.Sprintf("%s/%s/v%d", conf.KEKLabel, b.owner, version)
}

// checkKEKLabel says what is wrong with a kek_label, or "".
func checkKEKLabel(label string) string {
	switch {
	case label == "":
		return "kek_label must not be empty"
	case strings.HasPrefix(label, objectLabelPrefix):
		return fmt.Sprintf("kek_label must not start with %q: such labels are the plugin's own key objects", objectLabelPrefix)
	}
	if owner, _, ok := kekLabelOwner(label); ok {
		return fmt.Sprintf("kek_label %q names a KEK that mount %s made; a mount's KEK is its own. Name a KEK made by the HSM's tools, or leave kek_label alone", label, owner)
	}
	return ""
}

// generateKEKLocked makes a KEK on the token under a WAL entry; the caller
// stores it and then settles the entry.
func (b *backend) generateKEKLocked(ctx context.Context, s logical.Storage, client *hsm.Client, label string) (*pendingObject, error) {
	obj, err := b.beginObject(ctx, s, client, kekWALName, label)
	if err != nil {
		return nil, err
	}
	if err := client.GenerateKEK(ctx, obj.ID, obj.Label); err != nil {
		obj.abandon(ctx)
		return nil, err
	}
	return obj, nil
}

// kekInUse reports whether the KEK state knows object id (for the WAL
// rollback).
func kekInUse(st *kekState, id []byte) bool {
	for _, v := range st.Versions {
		if slices.Equal(v.ObjectID, id) {
			return true
		}
	}
	return false
}

func (b *backend) pathKEKRotate() *framework.Path {
	return &framework.Path{
		Pattern:      "config/kek/rotate",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "rotate", OperationSuffix: "kek"},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathKEKRotateWrite, Summary: "Make a new KEK version and rewrap every wrapped key under it in the background."},
		},
		HelpSynopsis: "Rotate the key-encryption key of wrapped keys.",
		HelpDescription: `
Makes a new KEK (AES-256, wrap/unwrap only) on the token. New wrapped keys
use it at once; a background job, resumable after a restart and shown in
status, rewraps every stored blob under it. The older versions are then
retired, not destroyed: they stay on the token and only ever unwrap, so
backups made under them still restore. config/kek/trim destroys them.

    $ vault write -f kms/config/kek/rotate
`,
	}
}

func (b *backend) pathKEKRotateWrite(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("rotate KEK", err)
	}
	b.keysMu.Lock()
	st, err := loadKEKState(ctx, req.Storage)
	if err != nil {
		b.keysMu.Unlock()
		return nil, err
	}
	if st.Rewrap != nil && st.Rewrap.Finished.IsZero() {
		b.keysMu.Unlock()
		return logical.ErrorResponse("a KEK rotation is still rewrapping keys (%d done); wait for it to finish (see status)", st.Rewrap.Rewrapped), logical.ErrInvalidRequest
	}
	version := st.Latest + 1
	obj, err := b.generateKEKLocked(ctx, req.Storage, client, b.kekLabel(conf, version))
	if err != nil {
		b.keysMu.Unlock()
		return respondError("rotate KEK", err)
	}
	st.Versions[version] = &kekVersion{ObjectID: obj.ID, Label: obj.Label, Created: b.now().UTC()}
	st.Latest = version
	st.Rewrap = &rewrapJob{Target: version, Started: b.now().UTC()}
	err = b.storeKEKState(ctx, req.Storage, st)
	if err == nil {
		obj.stored(ctx)
	}
	b.keysMu.Unlock()
	if err != nil {
		return nil, err
	}
	b.startRewrap(req.Storage)
	return &logical.Response{Data: kekStatus(st)}, nil
}

// rewrapFinished returns a channel closed when the latest rewrap job run
// ends, or nil if none ran: a signal for tests and tools to wait on.
func (b *backend) rewrapFinished() <-chan struct{} {
	if done := b.rewrapDone.Load(); done != nil {
		return *done
	}
	return nil
}

// rewrapBatch is how many keys the job does between saving its cursor.
const rewrapBatch = 50

// startRewrap runs the rewrap job in the background unless it runs already.
func (b *backend) startRewrap(s logical.Storage) {
	if !b.rewrapRunning.CompareAndSwap(false, true) {
		return
	}
	done := make(chan struct{})
	b.rewrapDone.Store(&done)
	go func() {
		defer close(done)
		defer b.rewrapRunning.Store(false)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-b.stopping:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := b.runRewrap(ctx, s); err != nil {
			b.Logger().Warn("the KEK rewrap job stopped; it resumes at the next periodic run", "error", err)
			b.keysMu.Lock()
			if st, lerr := loadKEKState(ctx, s); lerr == nil && st.Rewrap != nil {
				st.Rewrap.Error = err.Error()
				_ = b.storeKEKState(ctx, s, st)
			}
			b.keysMu.Unlock()
		}
	}()
}

// runRewrap moves every blob under the job's target KEK, then retires the
// older versions. It reads the KEK state from storage, never from a cache.
func (b *backend) runRewrap(ctx context.Context, s logical.Storage) error {
	client, _, err := b.hsmClient(ctx, s)
	if err != nil {
		return err
	}
	st, err := loadKEKState(ctx, s)
	if err != nil || st.Rewrap == nil || !st.Rewrap.Finished.IsZero() {
		return err
	}
	job := *st.Rewrap
	to := st.Versions[job.Target]
	if to == nil {
		return fmt.Errorf("the rewrap job's target, KEK version %d, is not in the KEK state", job.Target)
	}
	names, err := s.List(ctx, keyStoragePrefix)
	if err != nil {
		return fmt.Errorf("listing keys: %w", err)
	}
	slices.Sort(names)
	done := 0
	for _, name := range names {
		if name <= job.Cursor {
			continue
		}
		n, err := b.rewrapKey(ctx, s, client, name, job.Target, to)
		if err != nil {
			return fmt.Errorf("rewrapping key %q: %w", name, err)
		}
		job.Rewrapped += n
		job.Cursor = name
		if done++; done%rewrapBatch == 0 {
			if err := b.saveRewrapProgress(ctx, s, job); err != nil {
				return err
			}
		}
	}
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	st, err = loadKEKState(ctx, s)
	if err != nil {
		return err
	}
	now := b.now().UTC()
	for v, kv := range st.Versions {
		if v != job.Target && kv.Retired.IsZero() {
			kv.Retired = now
		}
	}
	job.Finished = now
	job.Error = ""
	st.Rewrap = &job
	return b.storeKEKState(ctx, s, st)
}

func (b *backend) saveRewrapProgress(ctx context.Context, s logical.Storage, job rewrapJob) error {
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	st, err := loadKEKState(ctx, s)
	if err != nil {
		return err
	}
	job.Error = ""
	st.Rewrap = &job
	return b.storeKEKState(ctx, s, st)
}

// rewrapKey moves every blob of one key under KEK version target, to.
func (b *backend) rewrapKey(ctx context.Context, s logical.Storage, client *hsm.Client, name string, target int, to *kekVersion) (int, error) {
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	k, err := loadKey(ctx, s, name)
	if err != nil || k == nil {
		return 0, err
	}
	st, err := loadKEKState(ctx, s)
	if err != nil {
		return 0, err
	}
	moved := 0
	for v, kv := range k.Versions {
		if kv.Blob == nil || kv.KEKVersion == target {
			continue
		}
		from := st.Versions[kv.KEKVersion]
		if from == nil {
			return moved, fmt.Errorf("version %d names KEK version %d, which is gone", v, kv.KEKVersion)
		}
		spec, err := wrappedSpec(k, kv)
		if err != nil {
			return moved, err
		}
		blob, err := client.Rewrap(ctx, from.ObjectID, to.ObjectID, kv.Blob, spec)
		if err != nil {
			return moved, err
		}
		kv.Blob, kv.KEKVersion = blob, target
		moved++
	}
	if moved > 0 {
		if err := b.saveKey(ctx, s, k); err != nil {
			return 0, err
		}
	}
	return moved, nil
}

// resumeRewrap restarts an unfinished rewrap job (after a restart or an
// HSM failure); the periodic function calls it.
func (b *backend) resumeRewrap(ctx context.Context, s logical.Storage) {
	st, err := b.kek(ctx, s)
	if err != nil || st.Rewrap == nil || !st.Rewrap.Finished.IsZero() {
		return
	}
	b.startRewrap(s)
}

// kekStatus is the KEK part of status and of a rotation's answer.
func kekStatus(st *kekState) map[string]interface{} {
	versions := make([]int, 0, len(st.Versions))
	for v := range st.Versions {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	retired := []int{}
	for _, v := range versions {
		if !st.Versions[v].Retired.IsZero() {
			retired = append(retired, v)
		}
	}
	out := map[string]interface{}{"latest_version": st.Latest, "versions": versions, "retired_versions": retired}
	if st.Rewrap != nil {
		job := map[string]interface{}{
			"target": st.Rewrap.Target, "rewrapped": st.Rewrap.Rewrapped, "cursor": st.Rewrap.Cursor,
			"started": st.Rewrap.Started.Format(time.RFC3339), "done": !st.Rewrap.Finished.IsZero(),
		}
		if !st.Rewrap.Finished.IsZero() {
			job["finished"] = st.Rewrap.Finished.Format(time.RFC3339)
		}
		if st.Rewrap.Error != "" {
			job["error"] = st.Rewrap.Error
		}
		out["rewrap"] = job
	}
	return out
}

// wrappedSpec is what a wrapped version's blob unwraps to.
func wrappedSpec(k *keyEntry, kv *keyVersion) (hsm.ImportSpec, error) {
	var pub crypto.PublicKey
	if len(kv.PublicKey) > 0 {
		p, err := x509.ParsePKIXPublicKey(kv.PublicKey)
		if err != nil {
			return hsm.ImportSpec{}, fmt.Errorf("decoding the public key of %q: %w", k.Name, err)
		}
		pub = p
	}
	return importSpec(k.keyType(), k.Operations, kv.ObjectID, kv.Label, pub), nil
}

// pinVersion makes sure the key of a wrapped version is unwrapped in the
// HSM for the time of one operation; for other versions it does nothing.
func (b *backend) pinVersion(ctx context.Context, client *hsm.Client, k *keyEntry, kv *keyVersion) (func(), error) {
	if kv.Blob == nil {
		return func() {}, nil
	}
	s := b.storage
	st, err := b.kek(ctx, s)
	if err != nil {
		return nil, err
	}
	kekv := st.Versions[kv.KEKVersion]
	if kekv == nil {
		// The blob moved to a newer KEK after this entry was read: read
		// the key and the KEKs again.
		b.keys.Publish(k.Name, nil)
		b.kekCache.Publish(kekStorageKey, nil)
		fresh, err := loadKey(ctx, s, k.Name)
		if err != nil {
			return nil, err
		}
		if st, err = b.kek(ctx, s); err != nil {
			return nil, err
		}
		for v, old := range k.Versions {
			if old == kv && fresh != nil && fresh.Versions[v] != nil {
				k, kv = fresh, fresh.Versions[v]
			}
		}
		if kekv = st.Versions[kv.KEKVersion]; kekv == nil {
			return nil, fmt.Errorf("key %q names KEK version %d, which this mount no longer has", k.Name, kv.KEKVersion)
		}
	}
	spec, err := wrappedSpec(k, kv)
	if err != nil {
		return nil, err
	}
	return client.PinWrapped(ctx, hsm.WrappedKey{KEK: kekv.ObjectID, Blob: kv.Blob, Spec: spec})
}

// forgetUnwrapped destroys the cached copies of a key's wrapped versions.
func (b *backend) forgetUnwrapped(ctx context.Context, s logical.Storage, k *keyEntry) {
	client, _, err := b.hsmClient(ctx, s)
	if err != nil {
		return // no client: nothing is cached
	}
	for _, kv := range k.Versions {
		if kv.wrapped() {
			client.ForgetUnwrapped(kv.ObjectID)
		}
	}
}
