package hsmkms

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// gatedStorage holds one read of a chosen key after it has read storage and
// before it returns: the window in which a writer can store and publish a
// newer value.
type gatedStorage struct {
	logical.Storage
	key      string
	once     sync.Once
	read     chan struct{} // closed when the held read has its value
	released chan struct{} // close to let it return
}

func newGatedStorage(inner logical.Storage, key string) *gatedStorage {
	return &gatedStorage{Storage: inner, key: key, read: make(chan struct{}), released: make(chan struct{})}
}

func (g *gatedStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	entry, err := g.Storage.Get(ctx, key)
	if key == g.key {
		g.once.Do(func() {
			close(g.read)
			<-g.released
		})
	}
	return entry, err
}

// Finding 1: a KEK state read from storage before a rotation's write and
// cached after it must not be kept. With it kept, the next wrapped key went
// under the old KEK, which the rewrap job then destroyed: the key was lost.
func TestKEKRotationNeverLeavesAStaleStateCached(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"default_residency": "wrapped", "max_keys": 0})
	ctx := context.Background()
	m.b.ring.ForgetKEK()
	gate := newGatedStorage(m.storage, keyring.KEKStorageKey)
	readerDone := make(chan error)
	go func() {
		_, err := m.b.ring.KEK(ctx, gate) // reads v1, held before it can fill the cache
		readerDone <- err
	}()
	<-gate.read
	m.mustOK(logical.UpdateOperation, "config/kek/rotate", nil)
	close(gate.released)
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	st, err := m.b.ring.KEK(ctx, m.storage)
	if err != nil {
		t.Fatal(err)
	}
	if st.Latest != 2 {
		t.Fatalf("the cached KEK state says latest %d after the rotation to 2", st.Latest)
	}
	resp := m.mustOK(logical.UpdateOperation, "keys/after-rotation", map[string]interface{}{"type": "aes256-gcm96"})
	objects := resp.Data["hsm_objects"].(map[string]map[string]interface{})
	if got := objects["1"]["kek_version"]; got != 2 {
		t.Fatalf("a key made after the rotation is under KEK version %v, want 2", got)
	}
	waitForRewrap(t, m)
}

// waitForRewrap waits for the rotation's rewrap job to finish, on the
// keyring's signal (RewrapFinished), and returns status.kek then.
func waitForRewrap(t *testing.T, m *testMount) map[string]interface{} {
	t.Helper()
	var kek map[string]interface{}
	for range 600 {
		kek = m.mustOK(logical.ReadOperation, "status", nil).Data["kek"].(map[string]interface{})
		if job, ok := kek["rewrap"].(map[string]interface{}); ok && job["done"] == true {
			return kek
		}
		if done := m.b.ring.RewrapFinished(); done != nil {
			<-done
		}
	}
	t.Fatalf("the rewrap job did not finish: status.kek %v", kek)
	return nil
}

// Finding 2: a KEK rotation retires the old KEK instead of destroying it,
// so a backup made before the rotation still restores; config/kek/trim
// destroys it on request and says which backups that makes unrestorable.
func TestBackupsSurviveKEKRotationUntilTrimmed(t *testing.T) {
	for _, tok := range []string{"softhsm2", "nss"} {
		t.Run(tok, func(t *testing.T) {
			m := wrappedMountOn(t, tok)
			m.mustOK(logical.UpdateOperation, "keys/kept", map[string]interface{}{"type": "ecdsa-p256"})
			m.mustOK(logical.UpdateOperation, "keys/kept-aes", map[string]interface{}{"type": "aes256-gcm96"})
			pt, ct := encryptB64(t, m, "kept-aes", "kept through rotations")
			backup := m.mustOK(logical.ReadOperation, "backup/kept-aes", nil).Data["backup"].(string)
			st, err := m.b.ring.KEK(context.Background(), m.storage)
			if err != nil {
				t.Fatal(err)
			}
			v1 := st.Versions[1]
			m.mustOK(logical.UpdateOperation, "config/kek/rotate", nil)
			kek := waitForRewrap(t, m)
			if got := dump(kek["versions"]); got != "[1 2]" {
				t.Fatalf("KEK versions after rotation: %s, want [1 2] (1 retired, not destroyed)", got)
			}
			if got := dump(kek["retired_versions"]); got != "[1]" {
				t.Fatalf("retired KEK versions: %s, want [1]", got)
			}
			if !objectOnToken(t, m, v1.ObjectID) {
				t.Fatal("the rotation destroyed KEK version 1")
			}
			m.mustOK(logical.UpdateOperation, "keys/kept-aes/deactivate", nil)
			m.mustOK(logical.DeleteOperation, "keys/kept-aes", nil)
			m.mustOK(logical.UpdateOperation, "restore", map[string]interface{}{"backup": backup})
			if got := decryptB64(t, m, "kept-aes", ct); got != pt {
				t.Fatalf("restored from a backup under the retired KEK: decrypted %q", got)
			}
			objects := m.mustOK(logical.ReadOperation, "keys/kept-aes", nil).Data["hsm_objects"].(map[string]map[string]interface{})
			if objects["1"]["kek_version"] != 2 {
				t.Fatalf("the restored key is under KEK version %v, want 2", objects["1"]["kek_version"])
			}

			m.mustFail(logical.UpdateOperation, "config/kek/trim", map[string]interface{}{"min_version": 3}, "between 1 and the latest")
			resp := m.mustOK(logical.UpdateOperation, "config/kek/trim", map[string]interface{}{"min_version": 2})
			if dump(resp.Data["destroyed_versions"]) != "[1]" || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "can no longer be restored") {
				t.Fatalf("trim answered %v, warnings %v", resp.Data, resp.Warnings)
			}
			if objectOnToken(t, m, v1.ObjectID) {
				t.Fatal("trim left KEK version 1 on the token")
			}
			m.mustFail(logical.UpdateOperation, "restore/again", map[string]interface{}{"backup": backup}, "does not hold the KEK")
			if got := decryptB64(t, m, "kept-aes", ct); got != pt {
				t.Fatalf("after the trim: decrypted %q", got)
			}
		})
	}
}

// A trim is refused while a stored blob still names a version it would
// destroy.
func TestKEKTrimRefusedWhileABlobNamesTheVersion(t *testing.T) {
	m := wrappedMountOn(t, "softhsm2")
	m.mustOK(logical.UpdateOperation, "keys/old", map[string]interface{}{"type": "aes256-gcm96"})
	m.mustOK(logical.UpdateOperation, "config/kek/rotate", nil)
	waitForRewrap(t, m)
	// A blob still under version 1, as a crash mid-job would leave it.
	ctx := context.Background()
	k, err := keyring.Load(ctx, m.storage, "old")
	if err != nil {
		t.Fatal(err)
	}
	k.Versions[1].KEKVersion = 1
	if err := m.b.ring.Save(ctx, m.storage, k); err != nil {
		t.Fatal(err)
	}
	m.mustFail(logical.UpdateOperation, "config/kek/trim", map[string]interface{}{"min_version": 2}, `key "old" still has a blob under KEK version 1`)
}

// wrappedMountOn is a mount on tok whose keys are wrapped by default, and
// deleted at once (Transit's delete), for tests that restore a deleted
// key's name.
func wrappedMountOn(t *testing.T, tok string) *testMount {
	t.Helper()
	conf := map[string]interface{}{"default_residency": "wrapped", "max_keys": 0, "deletion_window": "0s"}
	if tok == "nss" {
		m := nssMount(t)
		m.mustOK(logical.UpdateOperation, "config", conf)
		return m
	}
	return configuredMount(t, conf)
}

func encryptB64(t *testing.T, m *testMount, key, plaintext string) (string, string) {
	t.Helper()
	pt := base64.StdEncoding.EncodeToString([]byte(plaintext))
	return pt, m.mustOK(logical.UpdateOperation, "encrypt/"+key, map[string]interface{}{"plaintext": pt}).Data["ciphertext"].(string)
}

func decryptB64(t *testing.T, m *testMount, key, ciphertext string) string {
	t.Helper()
	got, _ := m.mustOK(logical.UpdateOperation, "decrypt/"+key, map[string]interface{}{"ciphertext": ciphertext}).Data["plaintext"].(string)
	return got
}

// objectOnToken looks for any object with CKA_ID id, straight from the
// token.
func objectOnToken(t *testing.T, m *testMount, id []byte) bool {
	t.Helper()
	client, _, err := m.b.hsmClient(context.Background(), m.storage)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := client.ListObjects(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objects {
		if string(o.ID) == string(id) {
			return true
		}
	}
	return false
}

// Finding 4: another mount's KEK cannot be taken by naming its label, and
// kek_label cannot name the plugin's own objects.
func TestAnotherMountsKEKCannotBeTaken(t *testing.T) {
	a := configuredMount(t, nil)
	st, err := a.b.ring.KEK(context.Background(), a.storage)
	if err != nil {
		t.Fatal(err)
	}
	label := st.Versions[1].Label
	if !strings.Contains(label, a.b.owner) {
		t.Fatalf("mount A's KEK label %q does not name the mount", label)
	}
	b := newMount(t)
	for _, kekLabel := range []string{label, "hsmkms/" + a.b.owner + "/default/v1"} {
		resp, err := b.do(logical.UpdateOperation, "config", map[string]interface{}{
			"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN, "kek_label": kekLabel,
		})
		if err == nil || resp == nil || !resp.IsError() || !strings.Contains(respError(resp), "kek_label") {
			t.Fatalf("kek_label=%s: err %v, resp %v; want a 400 about kek_label", kekLabel, err, respError(resp))
		}
	}
}

// Finding 5: a KEK found by kek_label must wrap and unwrap only; a key
// that may also encrypt (pkcs11-tool's default) is refused as a KEK. No
// mount adopts a KEK as a data key: its own, one another mount found and
// recorded on the token (as a mount configured before this check may use a
// KEK that also encrypts), or a key that only wraps. An ordinary key that
// merely permits wrapping (SoftHSM's default) is still adoptable.
func TestAKEKNeverBecomesADataKey(t *testing.T) {
	ctx := context.Background()
	m, raw := rawMount(t)
	permissive := "corp-kek-" + hex.EncodeToString([]byte(t.Name()))[:16]
	permissiveID := raw.makeSecretKey(t, permissive, true)
	resp, err := newMount(t).do(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN, "kek_label": permissive,
	})
	if err == nil || !strings.Contains(respError(resp), "wraps and unwraps only") {
		t.Fatalf("config with a KEK that also encrypts: err %v, resp %v", err, respError(resp))
	}

	// A mount an older release configured with that KEK records it.
	legacy := configuredMount(t, map[string]interface{}{"default_key": "legacy-default"})
	st, err := keyring.LoadKEKState(ctx, legacy.storage)
	if err != nil {
		t.Fatal(err)
	}
	st.Versions[1] = &keyring.KEKVersion{ObjectID: permissiveID, Label: permissive, Found: true}
	if err := legacy.b.ring.StoreKEKState(ctx, legacy.storage, st); err != nil {
		t.Fatal(err)
	}
	legacy.b.markerDone.Store(false)
	legacy.mustOK(logical.ReadOperation, "status", nil) // a request: the records are written
	m.mustFail(logical.UpdateOperation, "keys/taken/adopt", map[string]interface{}{"label": permissive}, "the key-encryption key of mount "+legacy.b.owner)

	own, err := m.b.ring.KEK(ctx, m.storage)
	if err != nil {
		t.Fatal(err)
	}
	m.mustFail(logical.UpdateOperation, "keys/taken2/adopt", map[string]interface{}{"id": hex.EncodeToString(own.Versions[1].ObjectID)}, "this mount's key-encryption key")
	wrapOnly := raw.makeWrapOnlyKey(t, "wrap-only-"+hex.EncodeToString([]byte(t.Name()))[:12])
	m.mustFail(logical.UpdateOperation, "keys/taken3/adopt", map[string]interface{}{"id": hex.EncodeToString(wrapOnly)}, "only wrap and unwrap")

	ordinary := "ordinary-" + hex.EncodeToString([]byte(t.Name()))[:16]
	raw.makeSecretKey(t, ordinary, true)
	m.mustOK(logical.UpdateOperation, "keys/ceremony/adopt", map[string]interface{}{"label": ordinary})
}

// rawToken is the module a mount loaded, seen through its intercept, for
// tests that put objects on the token as the HSM's tools would (a module is
// loaded once per process, so a test cannot load it a second time).
type rawToken struct {
	p11  hsm.PKCS11
	slot uint
}

// rawMount is a mount on testToken with the raw module beside it.
func rawMount(t *testing.T) (*testMount, *rawToken) {
	t.Helper()
	m := newMount(t)
	raw := &rawToken{}
	m.b.intercept = func(inner hsm.PKCS11) hsm.PKCS11 { raw.p11 = inner; return inner }
	m.mustOK(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN,
	})
	client, _, err := m.b.hsmClient(context.Background(), m.storage)
	if err != nil {
		t.Fatal(err)
	}
	raw.slot = client.Slot()
	return m, raw
}

// session runs f on a session of its own; the login is the process's.
func (r *rawToken) session(t *testing.T, f func(sh pkcs11.SessionHandle) error) {
	t.Helper()
	sh, err := r.p11.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer r.p11.CloseSession(sh)
	if err := f(sh); err != nil {
		t.Fatal(err)
	}
}

// makeWrapOnlyKey puts a key on the token that may only wrap and unwrap:
// a KEK made by the HSM's tools.
func (r *rawToken) makeWrapOnlyKey(t *testing.T, label string) []byte {
	t.Helper()
	return r.makeKey(t, label, map[uint]bool{pkcs11.CKA_WRAP: true, pkcs11.CKA_UNWRAP: true, pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_SIGN: false, pkcs11.CKA_VERIFY: false})
}

// makeSecretKey puts an AES token key with label on the token, as the HSM's
// tools would: with wrap and unwrap as well as encrypt and decrypt when
// kekLike (pkcs11-tool's defaults).
func (r *rawToken) makeSecretKey(t *testing.T, label string, kekLike bool) []byte {
	t.Helper()
	return r.makeKey(t, label, map[uint]bool{pkcs11.CKA_ENCRYPT: true, pkcs11.CKA_DECRYPT: true, pkcs11.CKA_WRAP: kekLike, pkcs11.CKA_UNWRAP: kekLike})
}

func (r *rawToken) makeKey(t *testing.T, label string, usage map[uint]bool) []byte {
	t.Helper()
	id := []byte("test:" + label)
	template := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	for attr, v := range usage {
		template = append(template, pkcs11.NewAttribute(attr, v))
	}
	r.session(t, func(sh pkcs11.SessionHandle) error {
		_, err := r.p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, template)
		return err
	})
	t.Cleanup(func() {
		r.session(t, func(sh pkcs11.SessionHandle) error {
			if err := r.p11.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
				return err
			}
			found, _, err := r.p11.FindObjects(sh, 4)
			_ = r.p11.FindObjectsFinal(sh)
			for _, h := range found {
				_ = r.p11.DestroyObject(sh, h)
			}
			return err
		})
	})
	return id
}

// Finding 8: an upsert past max_keys is the caller's 400, as on keys/.
func TestUpsertPastTheQuotaIsA400(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 1}) // the default key fills it
	// Vault sends a create when the existence check finds no key (upsert).
	m.mustFail(logical.CreateOperation, "encrypt/upserted", map[string]interface{}{"plaintext": "aGk="}, "quota of 1 keys")
	m.mustFail(logical.UpdateOperation, "keys/created", nil, "quota of 1 keys")
}

// Finding 8: the seeds' import form never silently makes a key of another
// residency than asked.
func TestJWKListImportRefusesWrappedResidency(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	jwk := map[string]interface{}{"kty": "oct", "k": base64.RawURLEncoding.EncodeToString(make([]byte, 32))}
	m.mustFail(logical.UpdateOperation, "keys/imported", map[string]interface{}{"keys": []interface{}{jwk}, "residency": "wrapped"}, "residency \"wrapped\"")
	if k, err := keyring.Load(context.Background(), m.storage, "imported"); err != nil || k != nil {
		t.Fatalf("the refused import stored %v (%v)", k, err)
	}
	resp := m.mustOK(logical.UpdateOperation, "keys/imported", map[string]interface{}{"keys": []interface{}{jwk}})
	if resp.Data["residency"] != keyring.ResidencyHSM {
		t.Fatalf("residency %v", resp.Data["residency"])
	}
}

// Finding 8: SoftHSM answers a bad GCM tag with CKR_GENERAL_ERROR, as it
// answers a failure of its own. A CKR_GENERAL_ERROR on a good ciphertext
// is looked at again, never reported as altered data: once, it is retried
// and decrypts; for good, the token fails its known-answer test and the
// answer is 503. A really altered ciphertext is still a 400.
func TestGeneralErrorOnDecryptIsNeverCalledAlteredData(t *testing.T) {
	m, ft := faultyMount(t)
	ct := encrypt(t, m, "default", "good data", nil)
	ft.FailNext("C_Decrypt", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR))
	if got := decrypt(t, m, "default", ct, nil); got != "good data" {
		t.Fatalf("after one CKR_GENERAL_ERROR: decrypted %q", got)
	}
	ft.SetFailing("C_Decrypt", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR))
	m.mustStatus(logical.UpdateOperation, "decrypt/default", map[string]interface{}{"ciphertext": ct}, 503)
	ft.SetFailing("C_Decrypt", nil)
	if got := decrypt(t, m, "default", ct, nil); got != "good data" {
		t.Fatalf("after the token came back: decrypted %q", got)
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(ct, "vault:v1:"))
	raw[len(raw)-1] ^= 1
	m.mustFail(logical.UpdateOperation, "decrypt/default", map[string]interface{}{"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(raw)}, "could not be decrypted")
}

// Finding 8: a crash between making a version's object and storing it
// (kill -9 in the middle of a rotation) leaves the object and its WAL
// entry; Vault's rollback, once the entry is old enough, destroys the
// object and nothing else.
func TestRotationCrashIsRolledBack(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	ctx := context.Background()
	m.mustOK(logical.UpdateOperation, "keys/rot", map[string]interface{}{"type": "aes256-gcm96"})
	ct := encrypt(t, m, "rot", "before the crash", nil)
	crash := &crashingStorage{Storage: m.storage, key: keyring.KeyStoragePrefix + "rot"}
	req := &logical.Request{Operation: logical.UpdateOperation, Path: "keys/rot/rotate", Storage: crash, MountPoint: "kms/"}
	if _, err := m.b.HandleRequest(ctx, req); err == nil {
		t.Fatal("the rotation survived its crash")
	}
	walIDs, err := framework.ListWAL(ctx, m.storage)
	if err != nil || len(walIDs) != 2 {
		t.Fatalf("WAL entries after the crash: %v (%v), want the version's and its HMAC key's", walIDs, err)
	}
	label := keyring.ObjectLabel(m.b.owner, "rot", 2)
	if !labelOnToken(t, m, label) || !labelOnToken(t, m, label+"/hmac") {
		t.Fatal("the crash left no object behind: the test does not test the rollback")
	}
	// Not yet old enough: nothing happens.
	if _, err := m.do(logical.RollbackOperation, "", nil); err != nil {
		t.Fatal(err)
	}
	if !labelOnToken(t, m, label) {
		t.Fatal("the rollback destroyed an object younger than WALRollbackMinAge")
	}
	if _, err := m.do(logical.RollbackOperation, "", map[string]interface{}{"immediate": true}); err != nil {
		t.Fatal(err)
	}
	if labelOnToken(t, m, label) || labelOnToken(t, m, label+"/hmac") {
		t.Fatal("the rollback left the crashed version's objects on the token")
	}
	if ids, _ := framework.ListWAL(ctx, m.storage); len(ids) != 0 {
		t.Fatalf("WAL entries left: %v", ids)
	}
	if got := decrypt(t, m, "rot", ct, nil); got != "before the crash" {
		t.Fatalf("version 1 after the rollback: %q", got)
	}
	m.mustOK(logical.UpdateOperation, "keys/rot/rotate", nil)
}

// crashingStorage fails every write of one key, as a process killed before
// its storage write would leave it.
type crashingStorage struct {
	logical.Storage
	key string
}

func (c *crashingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if e.Key == c.key {
		return errors.New("killed before this write")
	}
	return c.Storage.Put(ctx, e)
}

func labelOnToken(t *testing.T, m *testMount, label string) bool {
	t.Helper()
	client, _, err := m.b.hsmClient(context.Background(), m.storage)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := client.ListObjects(context.Background(), label)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objects {
		if o.Label == label {
			return true
		}
	}
	return false
}
