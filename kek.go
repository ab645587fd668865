package hsmkms

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
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
	// Found: the token had this key before the mount used it (replicated
	// from another HSM, or another mount's); the mount never destroys it.
	Found bool `json:"found,omitempty"`
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
	st := &kekState{Versions: map[int]*kekVersion{}}
	if entry == nil {
		return st, nil
	}
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
	if st, ok := b.kekCache.Load().(*kekState); ok && st != nil {
		return st, nil
	}
	st, err := loadKEKState(ctx, s)
	if err != nil {
		return nil, err
	}
	b.kekCache.Store(st)
	return st, nil
}

func (b *backend) storeKEKState(ctx context.Context, s logical.Storage, st *kekState) error {
	entry, err := logical.StorageEntryJSON(kekStorageKey, st)
	if err != nil {
		return err
	}
	b.kekCache.Store((*kekState)(nil))
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing the KEK state: %w", err)
	}
	copied := *st
	b.kekCache.Store(&copied)
	return nil
}

// ensureKEKLocked gives the mount its first KEK, at the config write: the
// token's key labelled kek_label if it has one, otherwise a new one.
// Callers hold keysMu.
func (b *backend) ensureKEKLocked(ctx context.Context, s logical.Storage, client *hsm.Client, conf *mountConfig) error {
	st, err := loadKEKState(ctx, s)
	if err != nil || st.Latest > 0 {
		return err
	}
	id, err := client.FindKEK(ctx, conf.KEKLabel)
	if err != nil {
		return err
	}
	found, label := id != nil, conf.KEKLabel
	if !found {
		label = b.kekLabel(conf, 1)
		if id, err = b.generateKEKLocked(ctx, s, client, label); err != nil {
			return err
		}
	}
	st.Latest = 1
	st.Versions[1] = &kekVersion{ObjectID: id, Label: label, Created: b.now().UTC(), Found: found}
	return b.storeKEKState(ctx, s, st)
}

// kekLabel is the label of a KEK the mount makes: kek_label, the mount and
// the version. A KEK found by kek_label alone (made by the HSM's tools, or
// replicated) is shared and never destroyed; one the mount made is its own,
// so a rotation can destroy it without breaking another mount.
func (b *backend) kekLabel(conf *mountConfig, version int) string {
	return fmt.Sprintf("%s/%s/v%d", conf.KEKLabel, b.owner, version)
}

// generateKEKLocked makes a KEK on the token under a WAL entry; the caller
// stores it and then calls deleteKEKWAL.
func (b *backend) generateKEKLocked(ctx context.Context, s logical.Storage, client *hsm.Client, label string) ([]byte, error) {
	id, err := client.NewObjectID(ctx)
	if err != nil {
		return nil, err
	}
	walID, err := framework.PutWAL(ctx, s, walKindObject, &walObject{Name: kekWALName, ObjectID: hex.EncodeToString(id)})
	if err != nil {
		return nil, fmt.Errorf("writing WAL: %w", err)
	}
	if err := client.GenerateKEK(ctx, id, label); err != nil {
		b.undoObject(ctx, s, client, walID, id)
		return nil, err
	}
	b.pendingKEKWAL.Store(walID)
	return id, nil
}

// kekWALDone drops the WAL entry of a KEK that is now stored.
func (b *backend) kekWALDone(ctx context.Context, s logical.Storage) {
	if walID, ok := b.pendingKEKWAL.Swap("").(string); ok && walID != "" {
		if err := framework.DeleteWAL(ctx, s, walID); err != nil {
			b.Logger().Warn("could not delete the WAL entry of a KEK", "error", err)
		}
	}
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
status, rewraps every stored blob under it. When no blob names an older KEK,
the older KEKs the mount made are destroyed (KEKs it found on the token are
left there).

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
	label := b.kekLabel(conf, version)
	id, err := b.generateKEKLocked(ctx, req.Storage, client, label)
	if err != nil {
		b.keysMu.Unlock()
		return respondError("rotate KEK", err)
	}
	st.Versions[version] = &kekVersion{ObjectID: id, Label: label, Created: b.now().UTC()}
	st.Latest = version
	st.Rewrap = &rewrapJob{Target: version, Started: b.now().UTC()}
	err = b.storeKEKState(ctx, req.Storage, st)
	if err == nil {
		b.kekWALDone(ctx, req.Storage)
	}
	b.keysMu.Unlock()
	if err != nil {
		return nil, err
	}
	b.startRewrap(req.Storage)
	return &logical.Response{Data: kekStatus(st)}, nil
}

// rewrapBatch is how many keys the job does between saving its cursor.
const rewrapBatch = 50

// kekGrace is how long the job waits before destroying old KEKs, for
// requests that read a key before its blob moved.
const kekGrace = 3 * time.Second

// startRewrap runs the rewrap job in the background unless it runs already.
func (b *backend) startRewrap(s logical.Storage) {
	if !b.rewrapRunning.CompareAndSwap(false, true) {
		return
	}
	go func() {
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
		n, err := b.rewrapKey(ctx, s, client, name, job.Target)
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
	if err := b.saveRewrapProgress(ctx, s, job); err != nil {
		return err
	}
	select {
	case <-time.After(kekGrace):
	case <-ctx.Done():
		return ctx.Err()
	}
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	st, err = loadKEKState(ctx, s)
	if err != nil {
		return err
	}
	for v, kv := range st.Versions {
		if v == job.Target {
			continue
		}
		if !kv.Found {
			if err := client.DestroyObjects(ctx, kv.ObjectID); err != nil {
				return fmt.Errorf("destroying KEK version %d: %w", v, err)
			}
		}
		delete(st.Versions, v)
	}
	job.Finished = b.now().UTC()
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

// rewrapKey moves every blob of one key under KEK version target.
func (b *backend) rewrapKey(ctx context.Context, s logical.Storage, client *hsm.Client, name string, target int) (int, error) {
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	k, err := loadKey(ctx, s, name)
	if err != nil || k == nil {
		return 0, err
	}
	st, err := b.kek(ctx, s)
	if err != nil {
		return 0, err
	}
	to := st.Versions[target]
	if to == nil {
		return 0, fmt.Errorf("KEK version %d is missing", target)
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
	out := map[string]interface{}{"latest_version": st.Latest, "versions": versions}
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
		b.keys.publish(k.Name, nil)
		b.kekCache.Store((*kekState)(nil))
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
