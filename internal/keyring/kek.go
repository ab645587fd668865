package keyring

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// KEKStorageKey is where the KEK state is stored.
const KEKStorageKey = "kek"

// kekWALOwner stands for the KEK in WAL entries; no key can have it.
const kekWALOwner = ".kek"

// KEKVersion is one key-encryption key on the token.
type KEKVersion struct {
	ObjectID []byte    `json:"object_id"`
	Label    string    `json:"label"`
	Created  time.Time `json:"created"`
	// Found: the token had this key before the mount used it (made by the
	// HSM's tools, or replicated); the mount never destroys it.
	Found bool `json:"found,omitempty"`
	// Retired: a newer version took over and no stored blob names this
	// one. It stays on the token, unwrap-only, so that backups made under
	// it still restore, until a trim destroys it.
	Retired time.Time `json:"retired,omitempty"`
}

// RewrapJob moves every wrapped blob under KEK version Target. It resumes
// from Cursor (the last key name done) after a restart.
type RewrapJob struct {
	Target    int       `json:"target"`
	Cursor    string    `json:"cursor"`
	Rewrapped int       `json:"rewrapped"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// Running: the job has not finished.
func (j *RewrapJob) Running() bool { return j != nil && j.Finished.IsZero() }

// KEKState is the mount's KEKs: every version a stored blob or a backup
// may name, and the rewrap job after a rotation. Its JSON is stored.
type KEKState struct {
	Latest   int                 `json:"latest"`
	Versions map[int]*KEKVersion `json:"versions"`
	Rewrap   *RewrapJob          `json:"rewrap,omitempty"`
}

// InUse reports whether the state names object id (for the WAL rollback).
func (st *KEKState) InUse(id []byte) bool {
	for _, v := range st.Versions {
		if slices.Equal(v.ObjectID, id) {
			return true
		}
	}
	return false
}

// SortedVersions lists the versions in order.
func (st *KEKState) SortedVersions() []int {
	versions := make([]int, 0, len(st.Versions))
	for v := range st.Versions {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	return versions
}

// LoadKEKState reads the KEK state from storage, never from a cache.
func LoadKEKState(ctx context.Context, s logical.Storage) (*KEKState, error) {
	entry, err := s.Get(ctx, KEKStorageKey)
	if err != nil {
		return nil, fmt.Errorf("reading the KEK state: %w", err)
	}
	if entry == nil {
		return &KEKState{Versions: map[int]*KEKVersion{}}, nil
	}
	return decodeKEKState(entry)
}

// decodeKEKState decodes a stored KEK state into a value of its own, so
// the published state shares nothing with the one its writer changes.
func decodeKEKState(entry *logical.StorageEntry) (*KEKState, error) {
	st := &KEKState{}
	if err := entry.DecodeJSON(st); err != nil {
		return nil, fmt.Errorf("decoding the KEK state: %w", err)
	}
	if st.Versions == nil {
		st.Versions = map[int]*KEKVersion{}
	}
	return st, nil
}

// KEK returns the KEK state, cached until it changes here or on another
// node; a read that raced a change never caches what it read.
func (r *Keyring) KEK(ctx context.Context, s logical.Storage) (*KEKState, error) {
	return r.keks.Load(KEKStorageKey, func() (*KEKState, error) { return LoadKEKState(ctx, s) })
}

// StoreKEKState stores the KEK state and publishes it. Callers hold the
// lock.
func (r *Keyring) StoreKEKState(ctx context.Context, s logical.Storage, st *KEKState) error {
	entry, err := logical.StorageEntryJSON(KEKStorageKey, st)
	if err != nil {
		return err
	}
	r.keks.Publish(KEKStorageKey, nil)
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing the KEK state: %w", err)
	}
	published, err := decodeKEKState(entry)
	if err != nil {
		return err
	}
	r.keks.Publish(KEKStorageKey, published)
	return nil
}

// ForgetKEK drops the cached KEK state.
func (r *Keyring) ForgetKEK() { r.keks.Publish(KEKStorageKey, nil) }

// EnsureKEK gives the mount its first KEK, at the config write: the
// token's key labelled base if it has one (hsm checks it is fit for a KEK),
// otherwise a new one labelled KEKLabel(base, 1). Callers hold the lock.
func (r *Keyring) EnsureKEK(ctx context.Context, s logical.Storage, client HSM, base string) error {
	st, err := LoadKEKState(ctx, s)
	if err != nil || st.Latest > 0 {
		return err
	}
	id, err := client.FindKEK(ctx, base)
	if err != nil {
		return err
	}
	if id != nil {
		st.Latest = 1
		st.Versions[1] = &KEKVersion{ObjectID: id, Label: base, Created: r.Now().UTC(), Found: true}
		if err := r.recordFoundKEKs(ctx, client, st); err != nil {
			return err
		}
		return r.StoreKEKState(ctx, s, st)
	}
	obj, err := r.generateKEK(ctx, s, client, r.KEKLabel(base, 1))
	if err != nil {
		return err
	}
	st.Latest = 1
	st.Versions[1] = &KEKVersion{ObjectID: obj.ID, Label: obj.Label, Created: r.Now().UTC()}
	if err := r.StoreKEKState(ctx, s, st); err != nil {
		return err
	}
	obj.Stored(ctx)
	return nil
}

// KEKLabel is the label of a KEK the mount makes: base (kek_label), the
// mount and the version. A KEK found by kek_label alone (made by the HSM's
// tools, or replicated) is shared and never destroyed; one the mount made
// is its own. kek_label itself may never have this form (CheckKEKLabel),
// so no mount can take another's KEK by naming its label.
func (r *Keyring) KEKLabel(base string, version int) string {
	return fmt.Sprintf("%s/%s/v%d", base, r.owner, version)
}

// CheckKEKLabel says what is wrong with a kek_label, or nil.
func CheckKEKLabel(label string) error {
	switch {
	case label == "":
		return Userf("kek_label must not be empty")
	case strings.HasPrefix(label, ObjectLabelPrefix):
		return Userf("kek_label must not start with %q: such labels are the plugin's own key objects", ObjectLabelPrefix)
	}
	if owner, _, ok := KEKLabelOwner(label); ok {
		return Userf("kek_label %q names a KEK that mount %s made; a mount's KEK is its own. Name a KEK made by the HSM's tools, or leave kek_label alone", label, owner)
	}
	return nil
}

// KEKLabelOwner parses the label of a KEK a mount made,
// <kek_label>/<mount uuid>/v<n>, into the mount and the version.
func KEKLabelOwner(label string) (string, int, bool) {
	i := strings.LastIndex(label, "/v")
	if i < 0 {
		return "", 0, false
	}
	var version int
	if _, err := fmt.Sscanf(label[i+2:], "%d", &version); err != nil || fmt.Sprint(version) != label[i+2:] || version < 1 {
		return "", 0, false
	}
	rest := label[:i]
	j := strings.LastIndex(rest, "/")
	if j < 1 || !isMountUUID(rest[j+1:]) {
		return "", 0, false
	}
	return rest[j+1:], version, true
}

// isMountUUID: Vault's backend UUIDs are RFC 4122 text (8-4-4-4-12 hex).
func isMountUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
	}
	return true
}

// OwnsLabel reports whether label is one this mount gives the objects it
// makes: hsmkms/<mount uuid>/..., or a KEK's <kek_label>/<mount uuid>/v<n>.
func (r *Keyring) OwnsLabel(label string) bool {
	if owner, ok := LabelOwner(label); ok {
		return owner == r.owner
	}
	owner, _, ok := KEKLabelOwner(label)
	return ok && owner == r.owner
}

// generateKEK makes a KEK on the token under a WAL entry; the caller
// stores it and then settles the entry.
func (r *Keyring) generateKEK(ctx context.Context, s logical.Storage, client HSM, label string) (*PendingObject, error) {
	obj, err := r.BeginObject(ctx, s, client, kekWALOwner, label)
	if err != nil {
		return nil, err
	}
	if err := client.GenerateKEK(ctx, obj.ID, obj.Label); err != nil {
		obj.Abandon(ctx)
		return nil, err
	}
	return obj, nil
}

// RotateKEK makes the next KEK version, labelled KEKLabel(base, version),
// and starts the job that rewraps every blob under it.
func (r *Keyring) RotateKEK(ctx context.Context, s logical.Storage, client HSM, base string) (*KEKState, error) {
	r.mu.Lock()
	st, err := LoadKEKState(ctx, s)
	if err != nil {
		r.mu.Unlock()
		return nil, err
	}
	if st.Rewrap.Running() {
		r.mu.Unlock()
		return nil, Userf("a KEK rotation is still rewrapping keys (%d done); wait for it to finish (see status)", st.Rewrap.Rewrapped)
	}
	version := st.Latest + 1
	obj, err := r.generateKEK(ctx, s, client, r.KEKLabel(base, version))
	if err != nil {
		r.mu.Unlock()
		return nil, err
	}
	st.Versions[version] = &KEKVersion{ObjectID: obj.ID, Label: obj.Label, Created: r.Now().UTC()}
	st.Latest = version
	st.Rewrap = &RewrapJob{Target: version, Started: r.Now().UTC()}
	err = r.StoreKEKState(ctx, s, st)
	if err == nil {
		obj.Stored(ctx)
	}
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	r.log.Info("KEK rotated; rewrapping every wrapped key under the new version", "kek_version", version, "label", obj.Label)
	r.startRewrap(s)
	return st, nil
}

// TrimResult is what a KEK trim did.
type TrimResult struct {
	Destroyed, Forgotten []int
	// RetiredBefore: every backup taken before it named a trimmed version.
	RetiredBefore time.Time
	State         *KEKState
}

// TrimKEK destroys the KEK versions below min that the mount made and
// forgets the ones it found (the HSM's tools made them). It refuses while
// the rewrap job runs or a stored blob names such a version.
func (r *Keyring) TrimKEK(ctx context.Context, s logical.Storage, client HSM, min int) (*TrimResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := LoadKEKState(ctx, s)
	if err != nil {
		return nil, err
	}
	switch {
	case st.Latest == 0:
		return nil, Userf("this mount has no KEK; write its config first")
	case min < 1 || min > st.Latest:
		return nil, Userf("min_version must be between 1 and the latest KEK version, %d", st.Latest)
	case st.Rewrap.Running():
		return nil, Userf("a KEK rotation is still rewrapping keys (%d done); trim when it is done (see status)", st.Rewrap.Rewrapped)
	}
	res := &TrimResult{Destroyed: []int{}, Forgotten: []int{}, State: st}
	var trimmed []int
	for _, v := range st.SortedVersions() {
		if v < min {
			trimmed = append(trimmed, v)
		}
	}
	if len(trimmed) == 0 {
		return res, nil
	}
	if name, v, err := r.blobNamingKEKBelow(ctx, s, min); err != nil {
		return nil, err
	} else if name != "" {
		return nil, Userf("key %q still has a blob under KEK version %d; nothing was trimmed", name, v)
	}
	for _, v := range trimmed {
		kv := st.Versions[v]
		if kv.Retired.After(res.RetiredBefore) {
			res.RetiredBefore = kv.Retired
		}
		if kv.Found {
			res.Forgotten = append(res.Forgotten, v)
		} else {
			err := client.DestroyObjects(ctx, kv.ObjectID, hsm.ExactLabel(kv.Label))
			if err != nil && !isNotOwned(err) {
				return nil, err
			}
			res.Destroyed = append(res.Destroyed, v)
		}
		delete(st.Versions, v)
	}
	if err := r.StoreKEKState(ctx, s, st); err != nil {
		return nil, err
	}
	r.log.Info("KEK versions trimmed", "destroyed", res.Destroyed, "forgotten", res.Forgotten)
	return res, nil
}

// blobNamingKEKBelow finds a stored key with a blob under a KEK version
// below min: trimming that version would lose the key. Callers hold the
// lock.
func (r *Keyring) blobNamingKEKBelow(ctx context.Context, s logical.Storage, min int) (string, int, error) {
	names, err := Names(ctx, s)
	if err != nil {
		return "", 0, err
	}
	for _, name := range names {
		k, err := r.Get(ctx, s, name)
		if err != nil {
			return "", 0, err
		}
		if k == nil {
			continue
		}
		for _, kv := range k.Versions {
			if kv.Wrapped() && kv.KEKVersion < min {
				return name, kv.KEKVersion, nil
			}
		}
	}
	return "", 0, nil
}

// RewrapFinished returns a channel closed when the latest rewrap job run
// ends, or nil if none ran: a signal for tests and tools to wait on.
func (r *Keyring) RewrapFinished() <-chan struct{} {
	if done := r.rewrapDone.Load(); done != nil {
		return *done
	}
	return nil
}

// rewrapBatch is how many keys the job does between saving its cursor.
const rewrapBatch = 50

// startRewrap runs the rewrap job in the background unless it runs already.
func (r *Keyring) startRewrap(s logical.Storage) {
	if !r.rewrapRunning.CompareAndSwap(false, true) {
		return
	}
	done := make(chan struct{})
	r.rewrapDone.Store(&done)
	go func() {
		defer close(done)
		defer r.rewrapRunning.Store(false)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-r.stopping:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := r.runRewrap(ctx, s); err != nil {
			r.log.Warn("the KEK rewrap job stopped; it resumes at the next periodic run", "error", err)
			r.mu.Lock()
			if st, lerr := LoadKEKState(ctx, s); lerr == nil && st.Rewrap != nil {
				st.Rewrap.Error = err.Error()
				_ = r.StoreKEKState(ctx, s, st)
			}
			r.mu.Unlock()
		}
	}()
}

// runRewrap moves every blob under the job's target KEK, then retires the
// older versions. It reads the KEK state from storage, never from a cache.
func (r *Keyring) runRewrap(ctx context.Context, s logical.Storage) error {
	client, err := r.open(ctx, s)
	if err != nil {
		return err
	}
	st, err := LoadKEKState(ctx, s)
	if err != nil || !st.Rewrap.Running() {
		return err
	}
	job := *st.Rewrap
	to := st.Versions[job.Target]
	if to == nil {
		return fmt.Errorf("the rewrap job's target, KEK version %d, is not in the KEK state", job.Target)
	}
	names, err := Names(ctx, s)
	if err != nil {
		return err
	}
	slices.Sort(names)
	done := 0
	for _, name := range names {
		if name <= job.Cursor {
			continue
		}
		n, err := r.rewrapKey(ctx, s, client, name, job.Target, to)
		if err != nil {
			return fmt.Errorf("rewrapping key %q: %w", name, err)
		}
		job.Rewrapped += n
		job.Cursor = name
		if done++; done%rewrapBatch == 0 {
			if err := r.saveRewrapProgress(ctx, s, job); err != nil {
				return err
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err = LoadKEKState(ctx, s)
	if err != nil {
		return err
	}
	now := r.Now().UTC()
	for v, kv := range st.Versions {
		if v != job.Target && kv.Retired.IsZero() {
			kv.Retired = now
		}
	}
	job.Finished = now
	job.Error = ""
	st.Rewrap = &job
	if err := r.StoreKEKState(ctx, s, st); err != nil {
		return err
	}
	r.log.Info("KEK rewrap finished", "kek_version", job.Target, "rewrapped", job.Rewrapped, "took", now.Sub(job.Started).Round(time.Millisecond).String())
	return nil
}

func (r *Keyring) saveRewrapProgress(ctx context.Context, s logical.Storage, job RewrapJob) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := LoadKEKState(ctx, s)
	if err != nil {
		return err
	}
	job.Error = ""
	st.Rewrap = &job
	return r.StoreKEKState(ctx, s, st)
}

// rewrapKey moves every blob of one key under KEK version target, to.
func (r *Keyring) rewrapKey(ctx context.Context, s logical.Storage, client HSM, name string, target int, to *KEKVersion) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, err := Load(ctx, s, name)
	if err != nil || k == nil {
		return 0, err
	}
	st, err := LoadKEKState(ctx, s)
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
		spec, err := WrappedSpec(k, kv)
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
		if err := r.Save(ctx, s, k); err != nil {
			return 0, err
		}
	}
	return moved, nil
}

// ResumeRewrap restarts an unfinished rewrap job (after a restart or an
// HSM failure); the periodic function calls it.
func (r *Keyring) ResumeRewrap(ctx context.Context, s logical.Storage) {
	st, err := r.KEK(ctx, s)
	if err != nil || !st.Rewrap.Running() {
		return
	}
	r.startRewrap(s)
}

// WrappedSpec is what a wrapped version's blob unwraps to.
func WrappedSpec(k *Entry, kv *Version) (hsm.ImportSpec, error) {
	var pub crypto.PublicKey
	if len(kv.PublicKey) > 0 {
		p, err := x509.ParsePKIXPublicKey(kv.PublicKey)
		if err != nil {
			return hsm.ImportSpec{}, fmt.Errorf("decoding the public key of %q: %w", k.Name, err)
		}
		pub = p
	}
	return k.KeyType().Spec(k.Operations, kv.ObjectID, kv.Label, pub), nil
}

// Pin makes sure the key of a wrapped version is unwrapped in the HSM for
// the time of one operation; for other versions it does nothing.
func (r *Keyring) Pin(ctx context.Context, client HSM, k *Entry, kv *Version) (func(), error) {
	if kv.Blob == nil {
		return func() {}, nil
	}
	s := r.storage
	st, err := r.KEK(ctx, s)
	if err != nil {
		return nil, err
	}
	kekv := st.Versions[kv.KEKVersion]
	if kekv == nil {
		// The blob moved to a newer KEK after this entry was read: read
		// the key and the KEKs again.
		r.keys.Publish(k.Name, nil)
		r.keks.Publish(KEKStorageKey, nil)
		fresh, err := Load(ctx, s, k.Name)
		if err != nil {
			return nil, err
		}
		if st, err = r.KEK(ctx, s); err != nil {
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
	spec, err := WrappedSpec(k, kv)
	if err != nil {
		return nil, err
	}
	return client.PinWrapped(ctx, hsm.WrappedKey{KEK: kekv.ObjectID, Blob: kv.Blob, Spec: spec})
}
