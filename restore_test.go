package hsmkms

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// decodeBackup and encodeBackup turn a backup into its JSON document and
// back, for tests that change what it says.
func decodeBackup(t *testing.T, backup string) map[string]interface{} {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(backup)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]interface{}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func encodeBackup(t *testing.T, doc map[string]interface{}) string {
	t.Helper()
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(raw)
}

// storageSnapshot is every entry of a mount's storage but the WAL, to show
// that a refused restore wrote nothing.
func storageSnapshot(t *testing.T, m *testMount) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(prefix string)
	walk = func(prefix string) {
		keys, err := m.storage.List(context.Background(), prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if strings.HasSuffix(k, "/") {
				walk(prefix + k)
				continue
			}
			e, err := m.storage.Get(context.Background(), prefix+k)
			if err != nil {
				t.Fatal(err)
			}
			if e != nil && !strings.HasPrefix(prefix+k, "wal/") && prefix+k != keyring.KEKStorageKey {
				out[prefix+k] = string(e.Value)
			}
		}
	}
	walk("")
	return out
}

func versionDoc(doc map[string]interface{}, v string) map[string]interface{} {
	return doc["key"].(map[string]interface{})["versions"].(map[string]interface{})[v].(map[string]interface{})
}

// Finding 3: restore verifies before it stores. Every case is a 400 that
// names what is wrong and writes nothing; force never replaces a good key
// with one that does not verify; object ids from the backup are never used.
func TestRestoreRefusesWhatDoesNotVerify(t *testing.T) {
	for _, tok := range []string{"softhsm2", "nss"} {
		t.Run(tok, func(t *testing.T) {
			m := wrappedMountOn(t, tok)
			m.mustOK(logical.UpdateOperation, "keys/good", map[string]interface{}{"type": "aes256-gcm96"})
			m.mustOK(logical.UpdateOperation, "keys/good/rotate", nil)
			m.mustOK(logical.UpdateOperation, "keys/signer", map[string]interface{}{"type": "ecdsa-p256"})
			pt, ct := encryptB64(t, m, "good", "must survive every bad restore")
			backup := m.mustOK(logical.ReadOperation, "backup/good", nil).Data["backup"].(string)
			signerBackup := m.mustOK(logical.ReadOperation, "backup/signer", nil).Data["backup"].(string)
			defaultKey, err := keyring.Load(context.Background(), m.storage, "default")
			if err != nil {
				t.Fatal(err)
			}
			b64 := base64.StdEncoding.EncodeToString
			cases := map[string]struct {
				base   string
				change func(doc map[string]interface{})
				want   string
			}{
				"flipped blob": {backup, func(d map[string]interface{}) {
					blob, _ := base64.StdEncoding.DecodeString(versionDoc(d, "1")["blob"].(string))
					blob[5] ^= 1
					versionDoc(d, "1")["blob"] = b64(blob)
				}, "version 1 is not the aes256-gcm96 key"},
				"truncated blob": {backup, func(d map[string]interface{}) {
					blob, _ := base64.StdEncoding.DecodeString(versionDoc(d, "2")["blob"].(string))
					versionDoc(d, "2")["blob"] = b64(blob[:len(blob)-8])
				}, "version 2"},
				"empty blob":      {backup, func(d map[string]interface{}) { versionDoc(d, "1")["blob"] = "" }, "a blob of 0 bytes"},
				"1 MiB blob":      {backup, func(d map[string]interface{}) { versionDoc(d, "1")["blob"] = b64(make([]byte, 1<<20)) }, "a blob of 1048576 bytes"},
				"wrong type":      {backup, func(d map[string]interface{}) { d["key"].(map[string]interface{})["type"] = "aes128-gcm96" }, "not the aes128-gcm96 key"},
				"unknown type":    {backup, func(d map[string]interface{}) { d["key"].(map[string]interface{})["type"] = "des" }, "not a key type"},
				"RSA blob as EC":  {signerBackup, func(d map[string]interface{}) { d["key"].(map[string]interface{})["type"] = "rsa-2048" }, "public key is not a rsa-2048 key"},
				"bogus operation": {backup, func(d map[string]interface{}) { d["key"].(map[string]interface{})["operations"] = []string{"launch"} }, "operations"},
				"no operation":    {backup, func(d map[string]interface{}) { d["key"].(map[string]interface{})["operations"] = []string{} }, "operations"},
				"negative version": {backup, func(d map[string]interface{}) {
					d["key"].(map[string]interface{})["latest_version"] = -1
				}, "latest_version -1"},
				"missing version": {backup, func(d map[string]interface{}) {
					delete(d["key"].(map[string]interface{})["versions"].(map[string]interface{}), "1")
				}, "versions"},
				"min_decryption above latest": {backup, func(d map[string]interface{}) {
					d["key"].(map[string]interface{})["min_decryption_version"] = 9
				}, "min_decryption_version 9"},
				"another key's public key": {signerBackup, func(d map[string]interface{}) {
					pub := versionDoc(d, "1")["public_key"]
					other := m.mustOK(logical.UpdateOperation, "keys/other-signer", map[string]interface{}{"type": "ecdsa-p256"})
					_ = other
					o, _ := keyring.Load(context.Background(), m.storage, "other-signer")
					versionDoc(d, "1")["public_key"] = b64(o.Versions[1].PublicKey)
					_ = pub
				}, "not the ecdsa-p256 key"},
				"a key object named as the KEK": {backup, func(d map[string]interface{}) {
					for _, ref := range d["keks"].(map[string]interface{}) {
						ref.(map[string]interface{})["object_id"] = b64(defaultKey.Versions[1].ObjectID)
					}
				}, "cannot be a KEK"},
				"a KEK that is not on the token": {backup, func(d map[string]interface{}) {
					for _, ref := range d["keks"].(map[string]interface{}) {
						ref.(map[string]interface{})["object_id"] = b64([]byte("no such object!!"))
					}
				}, "does not hold the KEK"},
				"a version whose KEK is not described": {backup, func(d map[string]interface{}) { d["keks"] = map[string]interface{}{} }, "does not describe"},
				"not a backup":                         {backup, func(d map[string]interface{}) { d["format"] = "transit" }, "what backup/:name returned"},
			}
			before := storageSnapshot(t, m)
			for name, tc := range cases {
				doc := decodeBackup(t, tc.base)
				tc.change(doc)
				for _, target := range []string{"restore/fresh", "restore/good"} {
					data := map[string]interface{}{"backup": encodeBackup(t, doc), "force": true}
					resp, err := m.do(logical.UpdateOperation, target, data)
					if err == nil || resp == nil || !resp.IsError() || !strings.Contains(respError(resp), tc.want) {
						t.Errorf("%s (%s): err %v, resp %q; want a 400 containing %q", name, target, err, respError(resp), tc.want)
					}
				}
				delete(before, keyring.KeyStoragePrefix+"other-signer")
				delete(before, keyring.RotationIndexPrefix+"other-signer")
				after := storageSnapshot(t, m)
				delete(after, keyring.KeyStoragePrefix+"other-signer")
				delete(after, keyring.RotationIndexPrefix+"other-signer")
				if fmt.Sprint(after) != fmt.Sprint(before) {
					t.Errorf("%s: a refused restore changed storage", name)
				}
			}
			if got := decryptB64(t, m, "good", ct); got != pt {
				t.Fatalf("the good key decrypts to %q after the refused restores", got)
			}
		})
	}
}

// Finding 3: a backup's object ids are never trusted. A crafted backup
// naming mount A's HMAC object restores in mount B without it (no HMAC
// with A's key, no forged verification in A), and deleting it in B leaves
// A's object alone. A backup of mount A restores in mount B only through a
// KEK no mount owns: A's own KEK is A's.
func TestRestoreNeverUsesAnotherMountsObjects(t *testing.T) {
	a := wrappedMountOn(t, "softhsm2")
	b := wrappedMountOn(t, "softhsm2")
	a.mustOK(logical.UpdateOperation, "keys/hsm-aes", map[string]interface{}{"type": "aes256-gcm96", "residency": "hsm"})
	input := base64.StdEncoding.EncodeToString([]byte("payload"))
	aHMAC := a.mustOK(logical.UpdateOperation, "hmac/hsm-aes", map[string]interface{}{"input": input}).Data["hmac"].(string)
	aKey, err := keyring.Load(context.Background(), a.storage, "hsm-aes")
	if err != nil {
		t.Fatal(err)
	}
	b.mustOK(logical.UpdateOperation, "keys/w", map[string]interface{}{"type": "aes256-gcm96"})
	doc := decodeBackup(t, b.mustOK(logical.ReadOperation, "backup/w", nil).Data["backup"].(string))
	versionDoc(doc, "1")["hmac_object_id"] = base64.StdEncoding.EncodeToString(aKey.Versions[1].HMACObjectID)
	versionDoc(doc, "1")["object_id"] = base64.StdEncoding.EncodeToString(aKey.Versions[1].ObjectID)
	b.mustOK(logical.UpdateOperation, "restore/forged", map[string]interface{}{"backup": encodeBackup(t, doc)})
	forged, err := keyring.Load(context.Background(), b.storage, "forged")
	if err != nil {
		t.Fatal(err)
	}
	if forged.Versions[1].HMACObjectID != nil || string(forged.Versions[1].ObjectID) == string(aKey.Versions[1].ObjectID) {
		t.Fatalf("the restored key took mount A's object ids: %+v", forged.Versions[1])
	}
	if resp, _ := b.do(logical.UpdateOperation, "hmac/forged", map[string]interface{}{"input": input}); resp != nil && !resp.IsError() && resp.Data["hmac"] == aHMAC {
		t.Fatal("mount B computed mount A's HMAC")
	}
	b.mustOK(logical.UpdateOperation, "keys/forged/deactivate", nil)
	b.mustOK(logical.DeleteOperation, "keys/forged", nil)
	verify := a.mustOK(logical.UpdateOperation, "verify/hsm-aes", map[string]interface{}{"input": input, "hmac": aHMAC})
	if verify.Data["valid"] != true {
		t.Fatalf("mount A's HMAC key was harmed: verify %v", verify.Data)
	}
	// A's backup in B: A's KEK belongs to A.
	a.mustOK(logical.UpdateOperation, "keys/a-wrapped", map[string]interface{}{"type": "aes256-gcm96"})
	aBackup := a.mustOK(logical.ReadOperation, "backup/a-wrapped", nil).Data["backup"].(string)
	b.mustFail(logical.UpdateOperation, "restore/from-a", map[string]interface{}{"backup": aBackup}, "belongs to mount "+a.b.owner)
}

// The restore fuzz of issue 17: random mutations of valid backups. Every
// one is a 400 that writes nothing, or restores a key that works: its
// ciphertexts decrypt exactly, or its signatures verify. Never a 5xx or a
// crash.
func TestRestoreFuzz(t *testing.T) {
	for _, tok := range []string{"softhsm2", "nss"} {
		t.Run(tok, func(t *testing.T) {
			m := wrappedMountOn(t, tok)
			m.mustOK(logical.UpdateOperation, "keys/aes", map[string]interface{}{"type": "aes256-gcm96"})
			m.mustOK(logical.UpdateOperation, "keys/aes/rotate", nil)
			m.mustOK(logical.UpdateOperation, "keys/ec", map[string]interface{}{"type": "ecdsa-p256"})
			m.mustOK(logical.UpdateOperation, "keys/rsa", map[string]interface{}{"type": "rsa-2048"})
			m.mustOK(logical.UpdateOperation, "keys/mac", map[string]interface{}{"type": "hmac"})
			pt, ct := encryptB64(t, m, "aes", "fuzzed restores")
			backups := map[string]string{}
			for _, k := range []string{"aes", "ec", "rsa", "mac"} {
				backups[k] = m.mustOK(logical.ReadOperation, "backup/"+k, nil).Data["backup"].(string)
			}
			rng := rand.New(rand.NewPCG(17, 2026))
			rounds := 150
			restored, refused := 0, 0
			for i := range rounds {
				src := []string{"aes", "ec", "rsa", "mac"}[rng.IntN(4)]
				doc := decodeBackup(t, backups[src])
				what := mutateBackup(rng, doc)
				name := fmt.Sprintf("fuzz-%d", i)
				before := storageSnapshot(t, m)
				resp, err := m.do(logical.UpdateOperation, "restore/"+name, map[string]interface{}{"backup": encodeBackup(t, doc)})
				status := httpStatus(resp, err)
				switch {
				case status == http.StatusBadRequest:
					refused++
					if after := storageSnapshot(t, m); fmt.Sprint(after) != fmt.Sprint(before) {
						t.Fatalf("round %d (%s: %s): a refused restore changed storage", i, src, what)
					}
				case status == http.StatusOK:
					restored++
					checkRestoredKeyWorks(t, m, name, src, ct, pt)
				default:
					t.Fatalf("round %d (%s: %s): status %d, err %v, resp %v", i, src, what, status, err, respError(resp))
				}
			}
			t.Logf("%d mutated backups: %d restored and working, %d refused with a 400", rounds, restored, refused)
			if refused == 0 || restored == 0 {
				t.Fatalf("the mutations restored %d and refused %d: the fuzz does not reach both outcomes", restored, refused)
			}
		})
	}
}

// mutateBackup changes one thing in a backup document and says what.
func mutateBackup(rng *rand.Rand, doc map[string]interface{}) string {
	key := doc["key"].(map[string]interface{})
	versions := key["versions"].(map[string]interface{})
	var vnames []string
	for v := range versions {
		vnames = append(vnames, v)
	}
	v := versions[vnames[rng.IntN(len(vnames))]].(map[string]interface{})
	fields := []string{"name", "type", "bits", "operations", "state", "description", "deletion_allowed", "auto_rotate_period",
		"latest_version", "min_decryption_version", "min_encryption_version", "min_available_version", "imported", "allow_rotation"}
	values := []interface{}{nil, "", "aes128-gcm96", "rsa-4096", "ecdsa-p384", "hmac", "ed25519", -1, 0, 1, 2, 3, 1 << 40,
		[]string{"sign"}, []string{"encrypt", "decrypt"}, []string{"wrapKey"}, "deactivated", "pending", true, false, strings.Repeat("x", 5000)}
	switch rng.IntN(8) {
	case 0, 1:
		blob, _ := base64.StdEncoding.DecodeString(fmt.Sprint(v["blob"]))
		if len(blob) > 0 {
			blob[rng.IntN(len(blob))] ^= byte(1 + rng.IntN(255))
		}
		v["blob"] = base64.StdEncoding.EncodeToString(blob)
		return "a blob byte"
	case 2:
		blob, _ := base64.StdEncoding.DecodeString(fmt.Sprint(v["blob"]))
		v["blob"] = base64.StdEncoding.EncodeToString(blob[:rng.IntN(len(blob)+1)])
		return "a blob cut"
	case 3:
		f := []string{"object_id", "hmac_object_id", "public_key", "kek_version", "origin", "extractable", "destroy_on_delete", "transit_layout", "label"}[rng.IntN(9)]
		v[f] = values[rng.IntN(len(values))]
		return "version field " + f
	case 4:
		for _, ref := range doc["keks"].(map[string]interface{}) {
			ref.(map[string]interface{})["object_id"] = base64.StdEncoding.EncodeToString([]byte(fmt.Sprint(rng.Int())))
		}
		return "the KEK id"
	default:
		f := fields[rng.IntN(len(fields))]
		key[f] = values[rng.IntN(len(values))]
		return "key field " + f
	}
}

// checkRestoredKeyWorks uses a restored key as its type allows.
func checkRestoredKeyWorks(t *testing.T, m *testMount, name, src, ct, pt string) {
	t.Helper()
	k, err := keyring.Load(context.Background(), m.storage, name)
	if err != nil || k == nil {
		t.Fatalf("%s restored but not stored: %v", name, err)
	}
	if k.State != keyring.StateActive {
		m.mustOK(logical.UpdateOperation, "keys/"+name+"/activate", nil)
	}
	input := base64.StdEncoding.EncodeToString([]byte("restored"))
	switch {
	case src == "aes" && k.Allows(keyring.OpDecrypt) && k.MinDecryptionVersion <= 1:
		if got := decryptB64(t, m, name, ct); got != pt {
			t.Fatalf("%s decrypts the original ciphertext to %q", name, got)
		}
	case k.KeyType().Asymmetric() && k.Allows(keyring.OpSign):
		sig := m.mustOK(logical.UpdateOperation, "sign/"+name, map[string]interface{}{"input": input}).Data["signature"]
		if v := m.mustOK(logical.UpdateOperation, "verify/"+name, map[string]interface{}{"input": input, "signature": sig}).Data["valid"]; v != true {
			t.Fatalf("%s: its own signature does not verify", name)
		}
	case k.KeyType().Family == keyring.FamilyHMAC:
		m.mustOK(logical.UpdateOperation, "hmac/"+name, map[string]interface{}{"input": input})
	}
}

// httpStatus is the status Vault would answer a backend response with.
func httpStatus(resp *logical.Response, err error) int {
	var coded logical.HTTPCodedError
	switch {
	case errors.As(err, &coded):
		return coded.Code()
	case err == logical.ErrInvalidRequest || (err != nil && strings.Contains(err.Error(), logical.ErrInvalidRequest.Error())):
		return http.StatusBadRequest
	case err != nil:
		return http.StatusInternalServerError
	case resp != nil && resp.IsError():
		return http.StatusBadRequest
	}
	return http.StatusOK
}
