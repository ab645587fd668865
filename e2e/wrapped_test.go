package e2e

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// wrappedTypes are the key types a wrapped key may have, with what each
// is checked with.
var wrappedTypes = []string{
	"aes128-gcm96", "aes192-gcm96", "aes256-gcm96", "rsa-2048", "rsa-3072",
	"ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "hmac",
}

// wrappedConfig is the mount config of the wrapped-key tests: every key is
// wrapped unless it says otherwise, no quota, and a TTL short enough that a
// test sees the unwrapped copies go.
var wrappedConfig = []string{"default_residency=wrapped", "max_keys=0", "unwrapped_cache_ttl=1"}

// wrappedCT is a ciphertext (or signature, or HMAC) made through kms/ and
// what it must give back later.
type wrappedCT struct {
	key, ct, plaintext string
}

// wrappedVault is one persistent Vault with a wrapped-default mount, and
// what the steps of TestWrappedKeysThroughVault carry from one to the next.
type wrappedVault struct {
	v                             *vaultServer
	tok                           *tokentest.Token
	dataDir, unsealKey, rootToken string
	port                          int
	owner                         string // the mount's uuid in its labels
	p11                           *pkcs11.Ctx
	sh                            pkcs11.SessionHandle

	cts        []wrappedCT       // AES and RSA ciphertexts to decrypt after each change
	signatures []wrappedCT       // key, signature, base64 input
	hmacs      map[string]string // input (base64) → HMAC of the hmac key
	publicKeys map[string]crypto.PublicKey
}

func TestWrappedKeysThroughVault(t *testing.T) {
	eachToken(t, func(t *testing.T, tok *tokentest.Token) {
		w := &wrappedVault{tok: tok, dataDir: t.TempDir(), port: freePort(t), hmacs: map[string]string{}, publicKeys: map[string]crypto.PublicKey{}}
		w.v, w.unsealKey, w.rootToken = startPersistentVault(t, tok, w.dataDir, w.port, "", "")
		w.v.registerAndMount("kms")
		w.v.configure("kms", wrappedConfig...)
		w.owner = wrMountOwner(t, w.v)
		// One session of this process for the whole test: a module is
		// initialised once per process.
		w.p11, w.sh = openTokenSession(t, tok)
		for _, step := range []struct {
			name string
			run  func(t *testing.T, w *wrappedVault)
		}{
			{"EveryTypeRoundTrips", testWrappedEveryTypeRoundTrips},
			{"BlobIsNotTheKey", testWrappedBlobIsNotTheKey},
			{"NoTokenObjectAndCacheExpires", testWrappedNoTokenObjectAndCacheExpires},
			{"KEKRotationUnderLoad", testWrappedKEKRotationUnderLoad},
			{"BackupDeleteRestore", testWrappedBackupDeleteRestore},
			{"VaultRestart", testWrappedVaultRestart}, // last: it replaces the server
		} {
			t.Run(step.name, func(t *testing.T) {
				w.v = w.v.forTest(t)
				step.run(t, w)
			})
		}
	})
}

func testWrappedEveryTypeRoundTrips(t *testing.T, w *wrappedVault) {
	v := w.v
	for _, typ := range wrappedTypes {
		wrPost(t, v, "kms/keys/"+typ, map[string]interface{}{"type": typ})
		data := wrRead(t, v, "kms/keys/"+typ)
		o := wrObject(t, data, 1)
		if data["residency"] != "wrapped" || data["type"] != typ || fmt.Sprint(o["kek_version"]) != "1" || o["origin"] != "generated" || o["extractable"] == true {
			t.Errorf("%s: read says residency %v type %v, hsm_objects[1] %v; want wrapped, kek_version 1, generated, not extractable", typ, data["residency"], data["type"], o)
		}
		if id, err := hex.DecodeString(fmt.Sprint(o["id"])); err != nil || len(id) == 0 {
			t.Errorf("%s: hsm_objects[1].id %v is not a CKA_ID", typ, o["id"])
		}
		if want := "hsmkms/" + w.owner + "/" + typ + "/v1"; o["label"] != want {
			t.Errorf("%s: label %v, want %s", typ, o["label"], want)
		}
		switch {
		case strings.HasPrefix(typ, "aes"):
			pt := b64("wrapped " + typ)
			ct := wrEncrypt(t, v, typ, pt, "vault:v1:")
			w.cts = append(w.cts, wrappedCT{typ, ct, pt})
			// A bound ciphertext opens only with its binding.
			bound := fmt.Sprint(wrPost(t, v, "kms/encrypt/"+typ, map[string]interface{}{"plaintext": pt, "context": b64("tenant")})["ciphertext"])
			if got := wrPost(t, v, "kms/decrypt/"+typ, map[string]interface{}{"ciphertext": bound, "context": b64("tenant")})["plaintext"]; got != pt {
				t.Errorf("%s: bound decrypt gave %v", typ, got)
			}
			if status, resp := v.raw("POST", "kms/decrypt/"+typ, v.token, map[string]interface{}{"ciphertext": bound, "context": b64("other")}); status != http.StatusBadRequest {
				t.Errorf("%s: decrypt with the wrong context: %d %v, want 400", typ, status, resp)
			}
		case strings.HasPrefix(typ, "rsa"):
			pub := wrPublicKey(t, data, 1).(*rsa.PublicKey)
			w.publicKeys[typ] = pub
			for _, alg := range []string{"RS256", "PS256", "RS512", "PS512"} {
				w.signAndCheck(t, typ, alg)
			}
			// Go encrypts with the public key from the read; the wrapped key
			// decrypts. And kms/ round-trips with both paddings.
			msg := []byte("a data key for " + typ)
			goCT, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
			if err != nil {
				t.Fatal(err)
			}
			ct := "vault:v1:" + base64.StdEncoding.EncodeToString(goCT)
			if got := wrPost(t, v, "kms/decrypt/"+typ, map[string]interface{}{"ciphertext": ct, "padding_scheme": "oaep"})["plaintext"]; got != base64.StdEncoding.EncodeToString(msg) {
				t.Errorf("%s: decrypt of Go's OAEP ciphertext gave %v", typ, got)
			}
			w.cts = append(w.cts, wrappedCT{typ, ct, base64.StdEncoding.EncodeToString(msg)})
			for _, padding := range []string{"oaep", "pkcs1v15"} {
				pt := b64(padding + " through " + typ)
				ct := fmt.Sprint(wrPost(t, v, "kms/encrypt/"+typ, map[string]interface{}{"plaintext": pt, "padding_scheme": padding})["ciphertext"])
				if got := wrPost(t, v, "kms/decrypt/"+typ, map[string]interface{}{"ciphertext": ct, "padding_scheme": padding})["plaintext"]; got != pt {
					t.Errorf("%s %s: round trip gave %v", typ, padding, got)
				}
			}
		case strings.HasPrefix(typ, "ecdsa"):
			w.publicKeys[typ] = wrPublicKey(t, data, 1).(*ecdsa.PublicKey)
			w.signAndCheck(t, typ, map[string]string{"ecdsa-p256": "ES256", "ecdsa-p384": "ES384", "ecdsa-p521": "ES512"}[typ])
		case typ == "hmac":
			for _, input := range []string{b64("message one"), b64("message two")} {
				first := fmt.Sprint(wrPost(t, v, "kms/hmac/hmac", map[string]interface{}{"input": input})["hmac"])
				second := fmt.Sprint(wrPost(t, v, "kms/hmac/hmac", map[string]interface{}{"input": input})["hmac"])
				if !strings.HasPrefix(first, "vault:v1:") || first != second {
					t.Errorf("hmac of one input twice: %q then %q", first, second)
				}
				w.hmacs[input] = first
				if !wrValid(t, v, "hmac", map[string]interface{}{"input": input, "hmac": first}) {
					t.Errorf("kms/verify rejects the hmac of %s", input)
				}
			}
			if w.hmacs[b64("message one")] == w.hmacs[b64("message two")] {
				t.Errorf("two inputs have the same hmac %q", w.hmacs[b64("message one")])
			}
		}
	}

	// Rotation makes a second wrapped version; both decrypt.
	wrPost(t, v, "kms/keys/aes128-gcm96/rotate", nil)
	o := wrObject(t, wrRead(t, v, "kms/keys/aes128-gcm96"), 2)
	if fmt.Sprint(o["kek_version"]) != "1" || o["label"] != "hsmkms/"+w.owner+"/aes128-gcm96/v2" {
		t.Errorf("aes128-gcm96 v2 after rotate: %v", o)
	}
	pt := b64("after rotate")
	w.cts = append(w.cts, wrappedCT{"aes128-gcm96", wrEncrypt(t, v, "aes128-gcm96", pt, "vault:v2:"), pt})
	w.checkAll(t)
}

// signAndCheck signs through kms/sign with alg and verifies the signature in
// Go against the public key of the key read, and through kms/verify.
func (w *wrappedVault) signAndCheck(t *testing.T, key, alg string) {
	t.Helper()
	msg := []byte("signed by wrapped " + key + " with " + alg)
	input := base64.StdEncoding.EncodeToString(msg)
	sig := fmt.Sprint(wrPost(t, w.v, "kms/sign/"+key, map[string]interface{}{"input": input, "alg": alg})["signature"])
	if err := wrVerifyInGo(w.publicKeys[key], alg, msg, sig); err != nil {
		t.Errorf("%s %s: Go rejects the signature %q: %v", key, alg, sig, err)
	}
	if !wrValid(t, w.v, key, map[string]interface{}{"input": input, "signature": sig, "alg": alg}) {
		t.Errorf("%s %s: kms/verify rejects its own signature", key, alg)
	}
	w.signatures = append(w.signatures, wrappedCT{key, sig, alg + ":" + input})
}

// wrVerifyInGo checks a "vault:v1:" signature over msg with pub.
func wrVerifyInGo(pub crypto.PublicKey, alg string, msg []byte, sig string) error {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sig, "vault:v1:"))
	if err != nil || !strings.HasPrefix(sig, "vault:v1:") {
		return fmt.Errorf("not a vault:v1: signature (%v)", err)
	}
	var hash crypto.Hash
	switch alg[2:] {
	case "256":
		hash = crypto.SHA256
	case "384":
		hash = crypto.SHA384
	case "512":
		hash = crypto.SHA512
	default:
		return fmt.Errorf("alg %s", alg)
	}
	h := hash.New()
	h.Write(msg)
	digest := h.Sum(nil)
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		if strings.HasPrefix(alg, "PS") {
			return rsa.VerifyPSS(pub, hash, digest, raw, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		}
		return rsa.VerifyPKCS1v15(pub, hash, digest, raw)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pub, digest, raw) {
			return fmt.Errorf("ecdsa.VerifyASN1 is false")
		}
		return nil
	}
	return fmt.Errorf("public key %T", pub)
}

// checkAll decrypts every ciphertext kept so far, verifies every signature
// in Go and through kms/verify, and recomputes every HMAC.
func (w *wrappedVault) checkAll(t *testing.T) {
	t.Helper()
	for _, c := range w.cts {
		body := map[string]interface{}{"ciphertext": c.ct}
		if strings.HasPrefix(c.key, "rsa") {
			body["padding_scheme"] = "oaep"
		}
		status, resp := w.v.raw("POST", "kms/decrypt/"+c.key, w.v.token, body)
		data, _ := resp["data"].(map[string]interface{})
		if status != 200 || data["plaintext"] != c.plaintext {
			t.Errorf("decrypt %s %.30s…: %d %v, want plaintext %s", c.key, c.ct, status, resp, c.plaintext)
		}
	}
	for _, s := range w.signatures {
		alg, input, _ := strings.Cut(s.plaintext, ":")
		msg, _ := base64.StdEncoding.DecodeString(input)
		if err := wrVerifyInGo(w.publicKeys[s.key], alg, msg, s.ct); err != nil {
			t.Errorf("%s %s: Go rejects the signature: %v", s.key, alg, err)
		}
		if !wrValid(t, w.v, s.key, map[string]interface{}{"input": input, "signature": s.ct, "alg": alg}) {
			t.Errorf("%s %s: kms/verify rejects a signature it made", s.key, alg)
		}
	}
	for input, mac := range w.hmacs {
		if got := fmt.Sprint(wrPost(t, w.v, "kms/hmac/hmac", map[string]interface{}{"input": input})["hmac"]); got != mac {
			t.Errorf("hmac of %s is now %q, was %q", input, got, mac)
		}
	}
}

// wrappedBackup is the part of a backup/:name answer the tests read.
type wrappedBackup struct {
	Format string `json:"format"`
	Key    struct {
		Name      string `json:"name"`
		Type      string `json:"type"`
		Residency string `json:"residency"`
		Versions  map[string]struct {
			ObjectID   []byte `json:"object_id"`
			Label      string `json:"label"`
			Blob       []byte `json:"blob"`
			KEKVersion int    `json:"kek_version"`
		} `json:"versions"`
	} `json:"key"`
	KEKs map[string]struct {
		ObjectID []byte `json:"object_id"`
		Label    string `json:"label"`
	} `json:"keks"`
}

func wrBackup(t *testing.T, v *vaultServer, name string) (string, wrappedBackup) {
	t.Helper()
	encoded := fmt.Sprint(wrRead(t, v, "kms/backup/"+name)["backup"])
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		t.Fatalf("backup of %s is not base64: %v", name, err)
	}
	var b wrappedBackup
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatalf("backup of %s is not the JSON of the contract: %v: %.300s", name, err, raw)
	}
	if b.Format != "hsmkms-wrapped-key-v1" || b.Key.Name != name || b.Key.Residency != "wrapped" || len(b.Key.Versions) == 0 {
		t.Fatalf("backup of %s: format %q, key %q, residency %q, %d versions", name, b.Format, b.Key.Name, b.Key.Residency, len(b.Key.Versions))
	}
	return encoded, b
}

// wrAEADDomain is the AAD the plugin binds a ciphertext with no context,
// associated_data or encryption_context to (internal/wire's AAD):
// the domain, two empty length-prefixed parts and a zero pair count.
var wrAEADDomain = append([]byte("hsmkms.aead.v1"), make([]byte, 12)...)

// wrOpens reports whether key opens the kms ciphertext ct with either AAD
// the plugin could have used (none, or its domain AAD).
func wrOpens(key []byte, ct string) bool {
	parts := strings.Split(ct, ":")
	if len(parts) != 3 {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	block, berr := aes.NewCipher(key)
	if err != nil || berr != nil || len(raw) < 12+16 {
		return false
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return false
	}
	for _, aad := range [][]byte{nil, wrAEADDomain} {
		if _, err := gcm.Open(nil, raw[:12], raw[12:], aad); err == nil {
			return true
		}
	}
	return false
}

// wrWindowOpens tries every 32-byte window of blob as the key of ct and
// returns the offsets that open it, and how many windows were tried.
func wrWindowOpens(blob []byte, ct string) (opened []int, tried int) {
	for i := 0; i+32 <= len(blob); i++ {
		tried++
		if wrOpens(blob[i:i+32], ct) {
			opened = append(opened, i)
		}
	}
	return opened, tried
}

func testWrappedBlobIsNotTheKey(t *testing.T, w *wrappedVault) {
	v := w.v
	// The control: a key of known material (imported, residency hsm) shows
	// that wrOpens reads kms ciphertexts as the plugin makes them, so that
	// a blob holding the key in any window would be caught.
	known := impRandom(t, 32)
	wrPost(t, v, "kms/keys/control/import", map[string]interface{}{
		"ciphertext": base64.StdEncoding.EncodeToString(impWrap(t, impWrappingKey(t, v), known, "SHA256")), "type": "aes256-gcm96",
	})
	controlCT := wrEncrypt(t, v, "control", b64("control"), "vault:v1:")
	if !wrOpens(known, controlCT) {
		t.Fatalf("the known key does not open its kms ciphertext %q: the test's reading of the layout or the AAD is wrong", controlCT)
	}
	planted := append(append(impRandom(t, 5), known...), impRandom(t, 3)...)
	if opened, _ := wrWindowOpens(planted, controlCT); !slices.Equal(opened, []int{5}) {
		t.Fatalf("the window scan finds the planted key at %v, want [5]", opened)
	}

	ct := wrEncrypt(t, v, "aes256-gcm96", b64("is the blob the key?"), "vault:v1:")
	_, backup := wrBackup(t, v, "aes256-gcm96")
	blob := backup.Key.Versions["1"].Blob
	if len(blob) < 32 {
		t.Fatalf("the blob of aes256-gcm96 v1 is %d bytes: %x", len(blob), blob)
	}
	opened, tried := wrWindowOpens(blob, ct)
	if len(opened) != 0 {
		t.Fatalf("the stored blob holds the key in the clear: windows at %v open a kms ciphertext", opened)
	}
	// Nor is any other blob of the mount this key.
	for _, typ := range []string{"aes128-gcm96", "aes192-gcm96", "hmac"} {
		_, other := wrBackup(t, v, typ)
		for ver, kv := range other.Key.Versions {
			o, n := wrWindowOpens(kv.Blob, ct)
			if len(o) != 0 {
				t.Errorf("a window of %s v%s's blob opens aes256-gcm96's ciphertext", typ, ver)
			}
			tried += n
		}
	}
	t.Logf("%s: blob of aes256-gcm96 v1 is %d bytes; %d windows tried, each with 2 AADs, none opens", w.tok.Kind, len(blob), tried)

	if backup.Key.Versions["1"].KEKVersion != 1 || len(backup.KEKs) != 1 || backup.KEKs["1"].Label != "hsmkms-kek/"+w.owner+"/v1" || len(backup.KEKs["1"].ObjectID) == 0 {
		t.Errorf("backup names KEKs %+v (blob kek_version %d), want v1 labelled hsmkms-kek/%s/v1", backup.KEKs, backup.Key.Versions["1"].KEKVersion, w.owner)
	}
}

func testWrappedNoTokenObjectAndCacheExpires(t *testing.T, w *wrappedVault) {
	v := w.v
	// Every operation so far pinned the keys' unwrapped copies: session
	// objects of the plugin's process, so this process finds none of them.
	for _, typ := range wrappedTypes {
		data := wrRead(t, v, "kms/keys/"+typ)
		for ver := range wrObjects(t, data) {
			o := wrObject(t, data, ver)
			id, _ := hex.DecodeString(fmt.Sprint(o["id"]))
			if n := wrCount(t, w.p11, w.sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); n != 0 {
				t.Errorf("%s v%d: %d token objects carry its CKA_ID %x", typ, ver, n, id)
			}
			if n := wrCount(t, w.p11, w.sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, fmt.Sprint(o["label"]))}); n != 0 {
				t.Errorf("%s v%d: %d token objects carry its label %v", typ, ver, n, o["label"])
			}
		}
	}
	// What the mount has on the token: its residency-hsm keys (default,
	// and control from the previous step) and the BYOK wrapping key pair
	// that import made, besides its KEK (which has its own label prefix).
	want := []string{"hsmkms/" + w.owner + "/.wrapping_key/v1", "hsmkms/" + w.owner + "/.wrapping_key/v1"}
	for _, name := range []string{"default", "control"} {
		for _, o := range wrObjects(t, wrRead(t, v, "kms/keys/"+name)) {
			want = append(want, fmt.Sprint(o["label"]))
			if l, ok := o["hmac_label"]; ok { // an AES version's HMAC companion
				want = append(want, fmt.Sprint(l))
			}
		}
	}
	slices.Sort(want)
	if mine := wrKeyObjects(t, wrPrefixed(wrLabels(t, w.p11, w.sh), "hsmkms/"+w.owner+"/")); !slices.Equal(mine, want) {
		t.Errorf("the mount's token objects are %v, want exactly %v", mine, want)
	}

	// The cache holds copies right after use; they go after the 1 s TTL.
	var entries, evictions int64
	for try := 0; try < 5 && entries == 0; try++ {
		wrEncrypt(t, v, "aes256-gcm96", b64("pin me"), "vault:v1:")
		wrPost(t, v, "kms/sign/ecdsa-p256", map[string]interface{}{"input": b64("pin me")})
		cache := wrStatus(t, v, "unwrapped_cache")
		entries, evictions = wrInt(t, cache["entries"]), wrInt(t, cache["evictions"])
	}
	if entries == 0 {
		t.Fatal("status.unwrapped_cache.entries stayed 0 right after operations on wrapped keys (5 tries)")
	}
	deadline := time.Now().Add(10 * time.Second)
	var cache map[string]interface{}
	for {
		cache = wrStatus(t, v, "unwrapped_cache")
		if wrInt(t, cache["entries"]) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if wrInt(t, cache["entries"]) != 0 || wrInt(t, cache["evictions"]) <= evictions || wrInt(t, cache["pinned"]) != 0 {
		t.Errorf("10 s after the last use with a 1 s TTL: unwrapped_cache %v; want entries 0, pinned 0 and evictions above %d", cache, evictions)
	}
	t.Logf("%s: cache had %d entries after use, then %v", w.tok.Kind, entries, cache)
	// Gone from the cache is not gone from the key: it unwraps again.
	unwraps := wrInt(t, cache["unwraps"])
	w.checkAll(t)
	if got := wrInt(t, wrStatus(t, v, "unwrapped_cache")["unwraps"]); got <= unwraps {
		t.Errorf("decrypting after the TTL did not unwrap again: unwraps %d, was %d", got, unwraps)
	}
}

func testWrappedKEKRotationUnderLoad(t *testing.T, w *wrappedVault) {
	v := w.v
	kekPrefix := "hsmkms-kek/" + w.owner + "/"
	if got := wrPrefixed(wrLabels(t, w.p11, w.sh), kekPrefix); !slices.Equal(got, []string{kekPrefix + "v1"}) {
		t.Fatalf("the mount's KEKs on the token before rotation: %v, want [%sv1]", got, kekPrefix)
	}
	_, backup := wrBackup(t, v, "aes256-gcm96")
	kek1 := backup.KEKs["1"].ObjectID
	wrCheckKEKObject(t, w, kekPrefix+"v1")
	kek := wrStatus(t, v, "kek")
	if fmt.Sprint(kek["latest_version"]) != "1" || fmt.Sprint(kek["versions"]) != "[1]" {
		t.Errorf("status.kek before rotation: %v", kek)
	}

	loadKeys := []string{"load-0", "load-1", "load-2", "load-3", "load-4", "load-5"}
	for _, k := range loadKeys {
		wrPost(t, v, "kms/keys/"+k, map[string]interface{}{"type": "aes256-gcm96"})
	}
	// 0: before the rotation was asked for, 1: until the job is done,
	// 2: after it.
	var phase atomic.Int32
	type made struct {
		wrappedCT
		phase int32
	}
	var (
		mu      sync.Mutex
		all     []made
		errs    []string
		perPh   [3]int
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		counter atomic.Int64
	)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := loadKeys[(g+i)%len(loadKeys)]
				ph := phase.Load()
				pt := b64(fmt.Sprintf("load %d/%d phase %d", g, counter.Add(1), ph))
				var ct string
				s, err := v.client.Logical().Write("kms/encrypt/"+key, map[string]interface{}{"plaintext": pt})
				if err == nil {
					ct, _ = s.Data["ciphertext"].(string)
					s, err = v.client.Logical().Write("kms/decrypt/"+key, map[string]interface{}{"ciphertext": ct})
				}
				mu.Lock()
				switch {
				case err != nil:
					errs = append(errs, fmt.Sprintf("%s in phase %d: %v", key, ph, err))
				case s.Data["plaintext"] != pt:
					errs = append(errs, fmt.Sprintf("%s in phase %d: decrypt right after encrypt gave %v", key, ph, s.Data["plaintext"]))
				default:
					all = append(all, made{wrappedCT{key, ct, pt}, ph})
					perPh[ph]++
				}
				mu.Unlock()
			}
		}()
	}
	count := func(ph int) int { mu.Lock(); defer mu.Unlock(); return perPh[ph] }
	waitFor := func(ph, n int) {
		deadline := time.Now().Add(60 * time.Second)
		for count(ph) < n && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(0, 40)
	phase.Store(1)
	rotated := wrPost(t, v, "kms/config/kek/rotate", nil)
	if fmt.Sprint(rotated["latest_version"]) != "2" {
		t.Errorf("config/kek/rotate answered %v, want latest_version 2", rotated)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		kek = wrStatus(t, v, "kek")
		rewrap, _ := kek["rewrap"].(map[string]interface{})
		if rewrap["done"] == true || rewrap["error"] != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	phase.Store(2)
	waitFor(2, 40)
	close(stop)
	wg.Wait()
	t.Logf("%s: %d encrypt+decrypt pairs before, %d during, %d after the rotation; status.kek %v", w.tok.Kind, perPh[0], perPh[1], perPh[2], kek)
	for _, e := range errs {
		t.Errorf("under load: %s", e)
	}
	for ph, n := range perPh {
		if n == 0 {
			t.Errorf("no ciphertext was made in phase %d", ph)
		}
	}
	rewrap, _ := kek["rewrap"].(map[string]interface{})
	// Version 1 is retired, not destroyed: backups made under it restore.
	if rewrap["done"] != true || rewrap["error"] != nil || fmt.Sprint(rewrap["target"]) != "2" ||
		fmt.Sprint(kek["latest_version"]) != "2" || fmt.Sprint(kek["versions"]) != "[1 2]" || fmt.Sprint(kek["retired_versions"]) != "[1]" {
		t.Fatalf("status.kek after the rewrap: %v; want latest 2, versions [1 2] with 1 retired, rewrap done to 2 without error", kek)
	}
	// The job moved every wrapped version of the mount, and each now names
	// KEK version 2.
	versions := 0
	list, err := v.client.Logical().List("kms/keys")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range list.Data["keys"].([]interface{}) {
		data := wrRead(t, v, "kms/keys/"+fmt.Sprint(name))
		if data["residency"] != "wrapped" {
			continue
		}
		for ver, o := range wrObjects(t, data) {
			versions++
			if fmt.Sprint(o["kek_version"]) != "2" {
				t.Errorf("%v v%d names KEK version %v after the rewrap", name, ver, o["kek_version"])
			}
		}
	}
	if got := wrInt(t, rewrap["rewrapped"]); got != int64(versions) {
		t.Errorf("rewrap.rewrapped is %d; the mount has %d wrapped versions", got, versions)
	}

	for _, m := range all {
		status, resp := v.raw("POST", "kms/decrypt/"+m.key, v.token, map[string]interface{}{"ciphertext": m.ct})
		data, _ := resp["data"].(map[string]interface{})
		if status != 200 || data["plaintext"] != m.plaintext {
			t.Errorf("ciphertext of phase %d by %s: %d %v, want %s", m.phase, m.key, status, resp, m.plaintext)
		}
	}
	w.checkAll(t)
	// A few of them stay for the checks after the restart.
	for i := 0; i < len(all); i += max(1, len(all)/20) {
		w.cts = append(w.cts, all[i].wrappedCT)
	}

	// Version 1 is retired, not destroyed (backups made under it still
	// restore) until a trim destroys it.
	if got := wrPrefixed(wrLabels(t, w.p11, w.sh), kekPrefix); !slices.Equal(got, []string{kekPrefix + "v1", kekPrefix + "v2"}) {
		t.Errorf("the mount's KEKs on the token after the rewrap: %v, want [%sv1 %sv2]", got, kekPrefix, kekPrefix)
	}
	wrCheckKEKObject(t, w, kekPrefix+"v2")
	trim := wrPost(t, v, "kms/config/kek/trim", map[string]interface{}{"min_version": 2})
	if fmt.Sprint(trim["destroyed_versions"]) != "[1]" {
		t.Errorf("config/kek/trim answered %v, want destroyed_versions [1]", trim)
	}
	if n := wrCount(t, w.p11, w.sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, kek1)}); n != 0 {
		t.Errorf("KEK v1 (CKA_ID %x) is still on the token after the trim: %d objects", kek1, n)
	}
	wrPost(t, v, "kms/keys/after-kek-rotation", map[string]interface{}{"type": "aes256-gcm96"})
	if o := wrObject(t, wrRead(t, v, "kms/keys/after-kek-rotation"), 1); fmt.Sprint(o["kek_version"]) != "2" {
		t.Errorf("a key made after the rotation: %v, want kek_version 2", o)
	}
}

// wrCheckKEKObject checks the KEK labelled label from this process: one
// AES-256 token key, sensitive, never extractable, that wraps and unwraps
// and does nothing else.
func wrCheckKEKObject(t *testing.T, w *wrappedVault, label string) {
	t.Helper()
	template := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}
	handles := wrFind(t, w.p11, w.sh, template)
	if len(handles) != 1 {
		t.Fatalf("%d secret keys labelled %q", len(handles), label)
	}
	attrs, err := w.p11.GetAttributeValue(w.sh, handles[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_WRAP, nil),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, nil), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, nil),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, nil), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"token=1", "sensitive=1", "extractable=0", "wrap=1", "unwrap=1", "encrypt=0", "decrypt=0"}
	var got []string
	for i, name := range []string{"token", "sensitive", "extractable", "wrap", "unwrap", "encrypt", "decrypt"} {
		got = append(got, fmt.Sprintf("%s=%d", name, attrs[i].Value[0]))
	}
	if !slices.Equal(got, want) || wrULong(attrs[7].Value) != 32 {
		t.Errorf("KEK %q: %v value_len %x; want %v, 32 bytes", label, got, attrs[7].Value, want)
	}
}

func testWrappedBackupDeleteRestore(t *testing.T, w *wrappedVault) {
	v := w.v
	wrPost(t, v, "kms/keys/br", map[string]interface{}{"type": "aes256-gcm96"})
	wrPost(t, v, "kms/keys/br/rotate", nil)
	pt1, pt2 := b64("backed up v1"), b64("backed up v2")
	ct1 := fmt.Sprint(wrPost(t, v, "kms/encrypt/br", map[string]interface{}{"plaintext": pt1, "key_version": 1})["ciphertext"])
	ct2 := wrEncrypt(t, v, "br", pt2, "vault:v2:")
	if !strings.HasPrefix(ct1, "vault:v1:") {
		t.Fatalf("encrypt with key_version 1: %q", ct1)
	}
	encoded, backup := wrBackup(t, v, "br")
	if len(backup.Key.Versions) != 2 || backup.Key.Versions["1"].KEKVersion != 2 || backup.KEKs["2"].Label != "hsmkms-kek/"+w.owner+"/v2" {
		t.Errorf("backup of br: versions %d, kek_version %d, KEKs %+v", len(backup.Key.Versions), backup.Key.Versions["1"].KEKVersion, backup.KEKs)
	}

	// Transit's backup, delete, restore: its delete is immediate, and the
	// restore brings the key back under its name at once. The mount deletes
	// at once from here on (deletion_window=0s); the scheduled deletion has
	// its own tests (deletion_test.go).
	wrPost(t, v, "kms/config", map[string]interface{}{"deletion_window": "0s"})
	wrPost(t, v, "kms/keys/br/deactivate", nil)
	if status, resp := v.raw("DELETE", "kms/keys/br", v.token, nil); status != http.StatusNoContent && status != http.StatusOK {
		t.Fatalf("DELETE kms/keys/br after deactivate: %d %v", status, resp)
	}
	if status, resp := v.raw("POST", "kms/decrypt/br", v.token, map[string]interface{}{"ciphertext": ct1}); status < 400 || status >= 500 {
		t.Fatalf("decrypt with the deleted key: %d %v, want a 4xx", status, resp)
	}
	restored := wrPost(t, v, "kms/restore", map[string]interface{}{"backup": encoded})
	if restored["name"] != "br" || restored["residency"] != "wrapped" || fmt.Sprint(restored["latest_version"]) != "2" {
		t.Errorf("restore answered %v", restored)
	}
	for ver, o := range wrObjects(t, restored) {
		if fmt.Sprint(o["kek_version"]) != "2" {
			t.Errorf("restored br v%d: %v, want kek_version 2 (the mount's current KEK)", ver, o)
		}
	}
	for ct, pt := range map[string]string{ct1: pt1, ct2: pt2} {
		if got := wrPost(t, v, "kms/decrypt/br", map[string]interface{}{"ciphertext": ct})["plaintext"]; got != pt {
			t.Errorf("restored br decrypts %.20s… to %v, want %s", ct, got, pt)
		}
	}
	w.cts = append(w.cts, wrappedCT{"br", ct1, pt1}, wrappedCT{"br", ct2, pt2})

	status, resp := v.raw("POST", "kms/restore", v.token, map[string]interface{}{"backup": encoded})
	if status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp["errors"]), "force") {
		t.Errorf("restore over an existing key without force: %d %v, want 400 naming force", status, resp)
	}
	wrPost(t, v, "kms/restore", map[string]interface{}{"backup": encoded, "force": true})
	wrPost(t, v, "kms/restore/br-copy", map[string]interface{}{"backup": encoded})
	if got := wrPost(t, v, "kms/decrypt/br-copy", map[string]interface{}{"ciphertext": ct2})["plaintext"]; got != pt2 {
		t.Errorf("br restored as br-copy decrypts to %v", got)
	}
	w.cts = append(w.cts, wrappedCT{"br-copy", ct1, pt1})

	status, resp = v.raw("GET", "kms/backup/default", v.token, nil)
	msg := fmt.Sprint(resp["errors"])
	if status != http.StatusBadRequest || !strings.Contains(msg, "non-extractable") || !strings.Contains(msg, "hsm") {
		t.Errorf("backup of the residency-hsm key default: %d %v, want 400 saying it is non-extractable", status, resp)
	}
	for _, tc := range []struct {
		name, method, path, field string
		body                      map[string]interface{}
	}{
		{"backup of a missing key", "GET", "kms/backup/missing", "missing", nil},
		{"restore of garbage", "POST", "kms/restore", "backup", map[string]interface{}{"backup": b64("not a backup")}},
		{"restore of no backup", "POST", "kms/restore/x", "backup", map[string]interface{}{}},
	} {
		status, resp := v.raw(tc.method, tc.path, v.token, tc.body)
		if status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(resp["errors"]), tc.field) {
			t.Errorf("%s: %d %v, want 400 naming %s", tc.name, status, resp, tc.field)
		}
	}
}

func testWrappedVaultRestart(t *testing.T, w *wrappedVault) {
	w.v.stop()
	w.v, _, _ = startPersistentVault(t, w.tok, w.dataDir, w.port, w.unsealKey, w.rootToken)
	cache := wrStatus(t, w.v, "unwrapped_cache")
	if wrInt(t, cache["unwraps"]) != 0 || wrInt(t, cache["entries"]) != 0 {
		t.Errorf("unwrapped_cache of a fresh plugin: %v, want unwraps 0 and entries 0", cache)
	}
	w.checkAll(t)
	for _, typ := range []string{"rsa-3072", "ecdsa-p521"} {
		alg := map[string]string{"rsa-3072": "PS384", "ecdsa-p521": "ES512"}[typ]
		w.signAndCheck(t, typ, alg)
	}
	if got := wrInt(t, wrStatus(t, w.v, "unwrapped_cache")["unwraps"]); got == 0 {
		t.Error("the keys worked after the restart with no unwrap")
	}
	if kek := wrStatus(t, w.v, "kek"); fmt.Sprint(kek["versions"]) != "[2]" { // v1 was trimmed before the restart
		t.Errorf("status.kek after the restart: %v", kek)
	}
}

// TestWrappedKeysAtScale makes 2,000 wrapped keys in one mount and uses
// each: the token holds none of them, and the cache stays in its bound.
func TestWrappedKeysAtScale(t *testing.T) {
	const (
		keys      = 2000
		workers   = 16
		cacheSize = 100
	)
	tok := softHSM()
	v := startDevVault(t, tok)
	v.configure("kms", "default_residency=wrapped", "max_keys=0", fmt.Sprintf("unwrapped_cache_size=%d", cacheSize))
	owner := wrMountOwner(t, v)
	name := func(i int) string { return fmt.Sprintf("scale-%04d", i) }

	parallel := func(what string, f func(i int) error) time.Duration {
		start := time.Now()
		var (
			next atomic.Int64
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []string
		)
		for g := 0; g < workers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < keys; i = int(next.Add(1)) - 1 {
					if err := f(i); err != nil {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("%s %s: %v", what, name(i), err))
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
		for _, e := range errs[:min(len(errs), 10)] {
			t.Error(e)
		}
		if len(errs) > 0 {
			t.Fatalf("%d of %d %s failed", len(errs), keys, what)
		}
		return time.Since(start)
	}

	took := parallel("create", func(i int) error {
		s, err := v.client.Logical().Write("kms/keys/"+name(i), map[string]interface{}{"type": "aes256-gcm96"})
		if err == nil && (s == nil || s.Data["residency"] != "wrapped") {
			err = fmt.Errorf("answered %v, want residency wrapped", s)
		}
		return err
	})
	t.Logf("created %d wrapped keys in %v: %.0f keys/s", keys, took.Round(time.Millisecond), float64(keys)/took.Seconds())

	cts := make([]string, keys)
	took = parallel("encrypt", func(i int) error {
		s, err := v.client.Logical().Write("kms/encrypt/"+name(i), map[string]interface{}{"plaintext": b64(name(i))})
		if err != nil {
			return err
		}
		cts[i], _ = s.Data["ciphertext"].(string)
		return nil
	})
	t.Logf("encrypted once with each key in %v: %.0f encrypts/s", took.Round(time.Millisecond), float64(keys)/took.Seconds())
	for i := 0; i < keys; i += 37 {
		s, err := v.client.Logical().Write("kms/decrypt/"+name(i), map[string]interface{}{"ciphertext": cts[i]})
		if err != nil || s.Data["plaintext"] != b64(name(i)) {
			t.Errorf("decrypt with %s: %v %v", name(i), err, s)
		}
	}
	// Another key's ciphertext stays another key's.
	if status, resp := v.raw("POST", "kms/decrypt/"+name(1), v.token, map[string]interface{}{"ciphertext": cts[2]}); status != http.StatusBadRequest {
		t.Errorf("decrypt of %s's ciphertext with %s: %d %v, want 400", name(2), name(1), status, resp)
	}

	cache := wrStatus(t, v, "unwrapped_cache")
	if n := wrInt(t, cache["entries"]); n > cacheSize || n == 0 {
		t.Errorf("unwrapped_cache after using %d keys: %v; want 1..%d entries", keys, cache, cacheSize)
	}
	if n := wrInt(t, cache["unwraps"]); n < keys {
		t.Errorf("unwrapped_cache.unwraps %d after first use of %d keys", n, keys)
	}

	p11, sh := openTokenSession(t, tok)
	labels := wrLabels(t, p11, sh)
	mine := wrKeyObjects(t, wrPrefixed(labels, "hsmkms/"+owner+"/"))
	keks := wrPrefixed(labels, "hsmkms-kek/"+owner+"/")
	want := []string{}
	for _, o := range wrObjects(t, wrRead(t, v, "kms/keys/default")) {
		want = append(want, fmt.Sprint(o["label"]))
		if l, ok := o["hmac_label"]; ok { // an AES version's HMAC companion
			want = append(want, fmt.Sprint(l))
		}
	}
	slices.Sort(want)
	if !slices.Equal(mine, want) || !slices.Equal(keks, []string{"hsmkms-kek/" + owner + "/v1"}) {
		t.Errorf("the mount's token objects: %v and KEKs %v; want only the default key's %v and one KEK", mine, keks, want)
	}
	t.Logf("%d objects on the token, %d of this mount with its %d keys (+ %d KEK); cache %v", len(labels), len(mine), keys+1, len(keks), cache)
}

// wrKeyObjects is a mount's labels without its marker (hsmkms/<uuid>/.mount/
// <cluster>/<accessor>, which ties the mount to its accessor for tidy),
// after checking that there is exactly one.
func wrKeyObjects(t *testing.T, labels []string) []string {
	t.Helper()
	var keys []string
	markers := 0
	for _, l := range labels {
		if strings.Contains(l, "/.mount/") {
			markers++
			continue
		}
		keys = append(keys, l)
	}
	if markers != 1 {
		t.Errorf("the mount has %d markers on the token, want 1: %v", markers, labels)
	}
	return keys
}

// wrMountOwner is the mount's uuid as its labels carry it, read from the
// default key's object label hsmkms/<uuid>/default/v1.
func wrMountOwner(t *testing.T, v *vaultServer) string {
	t.Helper()
	label := fmt.Sprint(wrObject(t, wrRead(t, v, "kms/keys/default"), 1)["label"])
	rest, ok := strings.CutPrefix(label, "hsmkms/")
	owner, _, found := strings.Cut(rest, "/")
	if !ok || !found || owner == "" || !strings.HasSuffix(label, "/default/v1") {
		t.Fatalf("default key's label %q is not hsmkms/<mount uuid>/default/v1", label)
	}
	return owner
}

// wrPost POSTs body and returns the response's data; anything but 200 or
// 204 fails t.
func wrPost(t *testing.T, v *vaultServer, path string, body map[string]interface{}) map[string]interface{} {
	t.Helper()
	if body == nil {
		body = map[string]interface{}{}
	}
	status, resp := v.raw("POST", path, v.token, body)
	if status != 200 && status != 204 {
		t.Fatalf("POST %s: %d %v", path, status, resp)
	}
	data, _ := resp["data"].(map[string]interface{})
	return data
}

func wrRead(t *testing.T, v *vaultServer, path string) map[string]interface{} {
	t.Helper()
	status, resp := v.raw("GET", path, v.token, nil)
	data, _ := resp["data"].(map[string]interface{})
	if status != 200 || data == nil {
		t.Fatalf("GET %s: %d %v", path, status, resp)
	}
	return data
}

// wrStatus is one part of GET kms/status.
func wrStatus(t *testing.T, v *vaultServer, part string) map[string]interface{} {
	t.Helper()
	data := wrRead(t, v, "kms/status")
	m, ok := data[part].(map[string]interface{})
	if !ok {
		t.Fatalf("status has no %s: %v", part, data)
	}
	return m
}

func wrEncrypt(t *testing.T, v *vaultServer, key, pt, prefix string) string {
	t.Helper()
	ct := fmt.Sprint(wrPost(t, v, "kms/encrypt/"+key, map[string]interface{}{"plaintext": pt})["ciphertext"])
	if !strings.HasPrefix(ct, prefix) {
		t.Fatalf("encrypt with %s: %q, want a %s ciphertext", key, ct, prefix)
	}
	if got := wrPost(t, v, "kms/decrypt/"+key, map[string]interface{}{"ciphertext": ct})["plaintext"]; got != pt {
		t.Fatalf("decrypt with %s: %v, want %s", key, got, pt)
	}
	return ct
}

func wrValid(t *testing.T, v *vaultServer, key string, body map[string]interface{}) bool {
	t.Helper()
	return wrPost(t, v, "kms/verify/"+key, body)["valid"] == true
}

func wrInt(t *testing.T, x interface{}) int64 {
	t.Helper()
	n, err := strconv.ParseInt(fmt.Sprint(x), 10, 64)
	if err != nil {
		t.Fatalf("%v (%T) is not an integer", x, x)
	}
	return n
}

func wrObjects(t *testing.T, data map[string]interface{}) map[int]map[string]interface{} {
	t.Helper()
	objects, _ := data["hsm_objects"].(map[string]interface{})
	out := map[int]map[string]interface{}{}
	for ver, o := range objects {
		n, err := strconv.Atoi(ver)
		m, ok := o.(map[string]interface{})
		if err != nil || !ok {
			t.Fatalf("%v: hsm_objects %v", data["name"], objects)
		}
		out[n] = m
	}
	if len(out) == 0 {
		t.Fatalf("%v: no hsm_objects", data["name"])
	}
	return out
}

func wrObject(t *testing.T, data map[string]interface{}, version int) map[string]interface{} {
	t.Helper()
	o, ok := wrObjects(t, data)[version]
	if !ok {
		t.Fatalf("%v: no hsm_objects[%d] in %v", data["name"], version, data["hsm_objects"])
	}
	return o
}

func wrPublicKey(t *testing.T, data map[string]interface{}, version int) crypto.PublicKey {
	t.Helper()
	return impPublicKey(t, data, version)
}

// wrFind is every token object this process sees that matches template.
func wrFind(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, template []*pkcs11.Attribute) []pkcs11.ObjectHandle {
	t.Helper()
	if err := p11.FindObjectsInit(sh, template); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p11.FindObjectsFinal(sh) }()
	var all []pkcs11.ObjectHandle
	for {
		handles, _, err := p11.FindObjects(sh, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(handles) == 0 {
			return all
		}
		all = append(all, handles...)
	}
}

func wrCount(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, template []*pkcs11.Attribute) int {
	t.Helper()
	return len(wrFind(t, p11, sh, template))
}

// wrLabels is the CKA_LABEL of every object on the token, sorted.
func wrLabels(t *testing.T, p11 *pkcs11.Ctx, sh pkcs11.SessionHandle) []string {
	t.Helper()
	var labels []string
	for _, h := range wrFind(t, p11, sh, nil) {
		// An object without a label (NSS has some) counts as "".
		label := ""
		if attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)}); err == nil {
			label = string(attrs[0].Value)
		}
		labels = append(labels, label)
	}
	slices.Sort(labels)
	return labels
}

func wrPrefixed(labels []string, prefix string) []string {
	out := []string{}
	for _, l := range labels {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

// wrULong reads a CK_ULONG attribute (native byte order, little-endian on
// the platforms the tests run on).
func wrULong(b []byte) uint64 {
	var n uint64
	for i := len(b) - 1; i >= 0; i-- {
		n = n<<8 | uint64(b[i])
	}
	return n
}
