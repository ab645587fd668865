package e2e

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// Issue 20's scheduled deletion on a real Vault, on both tokens: a delete
// leaves the key pending_deletion until its deletion date; until then it
// serves nothing, stays readable and listed, keeps its name, and can be
// cancelled; after it, Vault's periodic call to the plugin destroys the
// key's objects on the token and then its metadata.

// purgedEvent is what the plugin logs, once per key, when its periodic
// function destroys a key whose deletion date has passed.
const purgedEvent = "key purged after its deletion window"

// purgeWait is how long after a key's deletion date a test waits for the
// purge. Vault's rollback manager calls each mount's periodic function
// once a minute (vault/rollback.go; core's rollbackPeriod is fixed at a
// minute outside Vault's own test cores, and no server setting or plugin
// setting changes it), so the purge comes within a minute of the date;
// three absorb a loaded machine.
const purgePoll, purgeWait = time.Second, 3 * time.Minute

// delKey is a key of these tests: its name and type, and whether it is
// deleted active with deletion_allowed (Transit's way, Terraform's) rather
// than deactivated first.
type delKey struct {
	name, typ string
	active    bool
}

// delKeys are an AES key (two versions, each with its HMAC companion), an
// EC key, an RSA key and an HMAC key.
var delKeys = []delKey{
	{"aes", "aes256-gcm96", false},
	{"ec", "ecdsa-p256", true},
	{"rsa", "rsa-2048", false},
	{"mac", "hmac", true},
}

func delKeyNames(keys []delKey) []string {
	var names []string
	for _, k := range keys {
		names = append(names, k.name)
	}
	sort.Strings(names)
	return names
}

// delCreate makes keys on mount; the AES key gets a second version.
func delCreate(t *testing.T, v *vaultServer, mount string, keys []delKey) {
	t.Helper()
	for _, k := range keys {
		trustOK(t, v, "POST", mount+"/keys/"+k.name, map[string]interface{}{"type": k.typ})
		if strings.HasPrefix(k.typ, "aes") {
			trustOK(t, v, "POST", mount+"/keys/"+k.name+"/rotate", nil)
		}
	}
}

// delSchedule deletes k the way it says (deactivated first, or active with
// deletion_allowed) and checks the answer: 200, the key pending_deletion,
// its deletion_date window after the delete, a warning saying how to
// cancel. It returns the deletion date as the plugin writes it, and the
// warnings.
func delSchedule(t *testing.T, v *vaultServer, mount string, k delKey, window time.Duration) (string, string) {
	t.Helper()
	if k.active {
		trustOK(t, v, "POST", mount+"/keys/"+k.name+"/config", map[string]interface{}{"deletion_allowed": true})
	} else {
		trustOK(t, v, "POST", mount+"/keys/"+k.name+"/deactivate", nil)
	}
	before := time.Now().UTC().Truncate(time.Second)
	status, resp := v.raw("DELETE", mount+"/keys/"+k.name, v.token, nil)
	after := time.Now().UTC()
	data, _ := resp["data"].(map[string]interface{})
	date := fmt.Sprint(data["deletion_date"])
	parsed, err := time.Parse(time.RFC3339, date)
	if status != http.StatusOK || data["state"] != "pending_deletion" || err != nil {
		t.Fatalf("DELETE %s/keys/%s: %d %v; want 200 with the key pending_deletion and its deletion_date", mount, k.name, status, resp)
	}
	if parsed.Before(before.Add(window)) || parsed.After(after.Add(window)) {
		t.Errorf("%s: deletion_date %s; want %v after the delete (%s to %s)", k.name, date, window, before, after)
	}
	w := fmt.Sprint(resp["warnings"])
	if !strings.Contains(w, date) || !strings.Contains(w, "keys/"+k.name+"/cancel_deletion") {
		t.Errorf("%s: the delete's warnings %q do not name the date and cancel_deletion", k.name, w)
	}
	return date, w
}

// delIDs are the CKA_IDs (hex) of every object a key's read names: each
// version's object and, for AES, its HMAC companion.
func delIDs(t *testing.T, data map[string]interface{}) []string {
	t.Helper()
	var ids []string
	for _, o := range wrObjects(t, data) {
		ids = append(ids, fmt.Sprint(o["id"]))
		if h, ok := o["hmac_id"]; ok {
			ids = append(ids, fmt.Sprint(h))
		}
	}
	sort.Strings(ids)
	return ids
}

// onToken is what this process finds on a token, apart from Vault: how
// many objects carry each CKA_ID asked about, and the labels that start
// with a prefix.
type onToken struct {
	byID   map[string]int
	labels []string
}

// readToken opens tok from this process (ceremonySession: initialised,
// read, finalised, so each read sees the token as it is now), and counts
// the objects of every CKA_ID in ids, of every class, public halves
// included, and lists the labels under prefix.
func readToken(t *testing.T, tok *tokentest.Token, ids []string, prefix string) onToken {
	t.Helper()
	p11, sh, done := ceremonySession(t, tok)
	defer done()
	got := onToken{byID: map[string]int{}}
	for _, id := range ids {
		raw, err := hex.DecodeString(id)
		if err != nil || len(raw) == 0 {
			t.Fatalf("CKA_ID %q from a key's read is not hex", id)
		}
		got.byID[id] = len(wrFind(t, p11, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, raw)}))
	}
	for _, o := range tokenObjects(t, p11, sh, prefix) {
		got.labels = append(got.labels, o.label)
	}
	return got
}

// wantAll fails t unless every id has objects on the token and some label
// starts with the prefix read: a later wantNone means something only if
// the same read saw the key's objects before.
func (o onToken) wantAll(t *testing.T, what string) {
	t.Helper()
	for id, n := range o.byID {
		if n == 0 {
			t.Fatalf("%s: no object with CKA_ID %s on the token; the read names it", what, id)
		}
	}
	if len(o.labels) == 0 {
		t.Fatalf("%s: no object labelled under the key's prefix on the token", what)
	}
}

func (o onToken) wantNone(t *testing.T, what string) {
	t.Helper()
	for id, n := range o.byID {
		if n != 0 {
			t.Errorf("%s: %d object(s) with CKA_ID %s are still on the token", what, n, id)
		}
	}
	if len(o.labels) != 0 {
		t.Errorf("%s: objects still on the token: %v", what, o.labels)
	}
}

// waitPurged polls v until every key of names reads 404 (the purge's
// result, which sends no signal this process could wait on) and returns
// when that was seen; it fails t at deadline.
func waitPurged(t *testing.T, v *vaultServer, mount string, names []string, deadline time.Time) time.Time {
	t.Helper()
	for {
		var left []string
		for _, name := range names {
			status, resp := v.raw("GET", mount+"/keys/"+name, v.token, nil)
			switch {
			case status == http.StatusNotFound:
			case status == http.StatusOK:
				left = append(left, name)
			default:
				t.Fatalf("GET %s/keys/%s while waiting for the purge: %d %v", mount, name, status, resp)
			}
		}
		if len(left) == 0 {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("keys %v are still there at %s: the periodic purge did not destroy them", left, deadline.Format(time.RFC3339))
		}
		time.Sleep(purgePoll)
	}
}

// purgeEvents are the lines of a Vault log in which the plugin says it
// purged key after its window.
func purgeEvents(t *testing.T, logPath, key string) []string {
	t.Helper()
	return keyEvents(t, logPath, purgedEvent, key)
}

// keyEvents are the lines of a Vault log in which the plugin logs event
// (the message, or its start) for key.
func keyEvents(t *testing.T, logPath, event, key string) []string {
	t.Helper()
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range matching(pluginLines(string(raw)), event) {
		if strings.Contains(line, " key="+key+" ") || strings.HasSuffix(line, " key="+key) {
			out = append(out, line)
		}
	}
	return out
}

// listKeys is LIST keys with key_info, through Vault's list-with-info
// (GET ?list=true), with query's filters; an empty list is Vault's 404.
func listKeys(t *testing.T, v *vaultServer, mount, query string) ([]string, map[string]interface{}) {
	t.Helper()
	path := mount + "/keys?list=true"
	if query != "" {
		path += "&" + query
	}
	status, resp := v.raw("GET", path, v.token, nil)
	if status == http.StatusNotFound {
		return nil, nil
	}
	data, _ := resp["data"].(map[string]interface{})
	if status != http.StatusOK || data == nil {
		t.Fatalf("GET %s: %d %v", path, status, resp)
	}
	var keys []string
	for _, k := range data["keys"].([]interface{}) {
		keys = append(keys, fmt.Sprint(k))
	}
	info, _ := data["key_info"].(map[string]interface{})
	return keys, info
}

// delProof is an answer a key gave before its deletion, asked again: it
// must be the same once the deletion is cancelled and the key activated.
type delProof struct {
	what, path  string
	body        map[string]interface{}
	field, want string
}

func (p delProof) check(t *testing.T, v *vaultServer, when string) {
	t.Helper()
	status, resp := v.raw("POST", p.path, v.token, p.body)
	data, _ := resp["data"].(map[string]interface{})
	if status != http.StatusOK || fmt.Sprint(data[p.field]) != p.want {
		t.Errorf("%s %s: %d %v; want %s=%s", p.what, when, status, resp, p.field, p.want)
	}
}

// delOp is a request a pending key must refuse.
type delOp struct {
	what, path string
	body       map[string]interface{}
}

// delMakeProofs uses every key of delKeys for each of its operations and
// returns the proofs to check again, and the requests a pending key must
// refuse (every operation, with the inputs just made).
func delMakeProofs(t *testing.T, v *vaultServer) ([]delProof, map[string][]delOp) {
	t.Helper()
	var proofs []delProof
	post := func(path string, body map[string]interface{}) map[string]interface{} {
		t.Helper()
		return trustOK(t, v, "POST", "kms/"+path, body)
	}
	decrypt := func(key, what, ct, pt string) {
		proofs = append(proofs, delProof{what, "kms/decrypt/" + key, map[string]interface{}{"ciphertext": ct}, "plaintext", pt})
	}

	pt1, pt2 := b64("sealed under aes v1"), b64("sealed under aes v2")
	ct1 := fmt.Sprint(post("encrypt/aes", map[string]interface{}{"plaintext": pt1, "key_version": 1})["ciphertext"])
	ct2 := fmt.Sprint(post("encrypt/aes", map[string]interface{}{"plaintext": pt2})["ciphertext"])
	if !strings.HasPrefix(ct1, "vault:v1:") || !strings.HasPrefix(ct2, "vault:v2:") {
		t.Fatalf("aes ciphertexts %q and %q; want versions 1 and 2", ct1, ct2)
	}
	decrypt("aes", "aes v1 ciphertext", ct1, pt1)
	decrypt("aes", "aes v2 ciphertext", ct2, pt2)
	dk := post("datakey/plaintext/aes", nil)
	dkCT, dkPT := fmt.Sprint(dk["ciphertext"]), fmt.Sprint(dk["plaintext"])
	decrypt("aes", "aes data key through decrypt", dkCT, dkPT)
	proofs = append(proofs, delProof{"aes data key through datakey/decrypt", "kms/datakey/decrypt/aes", map[string]interface{}{"ciphertext": dkCT}, "plaintext", dkPT})
	input := b64("authenticated by an hmac")
	aesMAC := fmt.Sprint(post("hmac/aes", map[string]interface{}{"input": input})["hmac"])
	proofs = append(proofs, delProof{"aes hmac", "kms/verify/aes", map[string]interface{}{"input": input, "hmac": aesMAC}, "valid", "true"})
	signed := b64("signed before the delete")
	ecSig := fmt.Sprint(post("sign/ec", map[string]interface{}{"input": signed})["signature"])
	proofs = append(proofs, delProof{"ec signature", "kms/verify/ec", map[string]interface{}{"input": signed, "signature": ecSig}, "valid", "true"})
	rsaPT := b64("sealed under rsa")
	rsaCT := fmt.Sprint(post("encrypt/rsa", map[string]interface{}{"plaintext": rsaPT})["ciphertext"])
	decrypt("rsa", "rsa ciphertext", rsaCT, rsaPT)
	rsaSig := fmt.Sprint(post("sign/rsa", map[string]interface{}{"input": signed})["signature"])
	proofs = append(proofs, delProof{"rsa signature", "kms/verify/rsa", map[string]interface{}{"input": signed, "signature": rsaSig}, "valid", "true"})
	macMAC := fmt.Sprint(post("hmac/mac", map[string]interface{}{"input": input})["hmac"])
	proofs = append(proofs, delProof{"mac hmac", "kms/verify/mac", map[string]interface{}{"input": input, "hmac": macMAC}, "valid", "true"})

	fresh := map[string]interface{}{"plaintext": b64("new")}
	refusals := map[string][]delOp{
		"aes": {
			{"encrypt", "kms/encrypt/aes", fresh},
			{"batch encrypt", "kms/encrypt/aes", map[string]interface{}{"batch_input": []interface{}{fresh, fresh}}},
			{"decrypt", "kms/decrypt/aes", map[string]interface{}{"ciphertext": ct1}},
			{"rewrap", "kms/rewrap/aes", map[string]interface{}{"ciphertext": ct1}},
			{"datakey plaintext", "kms/datakey/plaintext/aes", map[string]interface{}{}},
			{"datakey wrapped", "kms/datakey/wrapped/aes", map[string]interface{}{}},
			{"datakey decrypt", "kms/datakey/decrypt/aes", map[string]interface{}{"ciphertext": dkCT}},
			{"hmac", "kms/hmac/aes", map[string]interface{}{"input": input}},
			{"verify hmac", "kms/verify/aes", map[string]interface{}{"input": input, "hmac": aesMAC}},
		},
		"ec": {
			{"sign", "kms/sign/ec", map[string]interface{}{"input": signed}},
			{"verify", "kms/verify/ec", map[string]interface{}{"input": signed, "signature": ecSig}},
		},
		"rsa": {
			{"encrypt", "kms/encrypt/rsa", fresh},
			{"decrypt", "kms/decrypt/rsa", map[string]interface{}{"ciphertext": rsaCT}},
			{"sign", "kms/sign/rsa", map[string]interface{}{"input": signed}},
			{"verify", "kms/verify/rsa", map[string]interface{}{"input": signed, "signature": rsaSig}},
		},
		"mac": {
			{"hmac", "kms/hmac/mac", map[string]interface{}{"input": input}},
			{"verify hmac", "kms/verify/mac", map[string]interface{}{"input": input, "hmac": macMAC}},
		},
	}
	for _, k := range delKeys {
		refusals[k.name] = append(refusals[k.name],
			delOp{"rotate", "kms/keys/" + k.name + "/rotate", nil},
			delOp{"activate", "kms/keys/" + k.name + "/activate", nil},
			delOp{"deactivate", "kms/keys/" + k.name + "/deactivate", nil})
	}
	return proofs, refusals
}

// A delete leaves each key pending_deletion: every operation is a 400
// naming the deletion date and cancel_deletion; reads and LIST still show
// it; its name cannot be taken again. cancel_deletion brings it back
// deactivated, and activated, every ciphertext, data key, signature and
// HMAC made before the delete works again.
func TestScheduledDeletionIsCancelled(t *testing.T) {
	eachToken(t, testScheduledDeletionIsCancelled)
}

func testScheduledDeletionIsCancelled(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	if w := fmt.Sprint(trustOK(t, v, "GET", "kms/config", nil)["deletion_window"]); w != "604800" {
		t.Fatalf("kms/config deletion_window %s; want the default, 604800 (168h)", w)
	}
	delCreate(t, v, "kms", delKeys)
	proofs, refusals := delMakeProofs(t, v)
	for _, p := range proofs {
		p.check(t, v, "before the delete")
	}
	const window = 168 * time.Hour
	dates := map[string]string{}
	for _, k := range delKeys {
		var warnings string
		dates[k.name], warnings = delSchedule(t, v, "kms", k, window)
		// Every key was used just now: the delete says when
		// (deletion_warn_recent, 720h by default).
		if !strings.Contains(warnings, "was last used") {
			t.Errorf("delete of %s, used just now: warnings %q do not name its last use", k.name, warnings)
		}
	}
	status, resp := v.raw("DELETE", "kms/keys/aes", v.token, nil)
	if w := fmt.Sprint(resp["warnings"]); status != http.StatusOK || !strings.Contains(w, "already scheduled for deletion on "+dates["aes"]) {
		t.Errorf("a second DELETE of a pending key: %d %v; want 200 saying it is already scheduled for %s", status, resp, dates["aes"])
	}

	for _, k := range delKeys {
		for _, op := range refusals[k.name] {
			trustRefused(t, v, k.name+" "+op.what+" while pending", "POST", op.path, v.token, op.body,
				"scheduled for deletion on "+dates[k.name], "keys/"+k.name+"/cancel_deletion")
		}
		// Its name is not free: creating it, with its type or another, is a
		// 400 saying until when.
		for _, typ := range []string{k.typ, "aes128-gcm96"} {
			trustRefused(t, v, "create "+k.name+" as "+typ+" while pending", "POST", "kms/keys/"+k.name, v.token,
				map[string]interface{}{"type": typ}, "scheduled for deletion on "+dates[k.name], "keys/"+k.name+"/cancel_deletion")
		}
		data := trustOK(t, v, "GET", "kms/keys/"+k.name, nil)
		if data["state"] != "pending_deletion" || data["deletion_date"] != dates[k.name] || data["type"] != k.typ {
			t.Errorf("read of pending %s: state %v deletion_date %v type %v; want pending_deletion %s %s",
				k.name, data["state"], data["deletion_date"], data["type"], dates[k.name], k.typ)
		}
	}
	keys, info := listKeys(t, v, "kms", "")
	for _, k := range delKeys {
		ki, _ := info[k.name].(map[string]interface{})
		if !slices.Contains(keys, k.name) || ki["state"] != "pending_deletion" || ki["deletion_date"] != dates[k.name] {
			t.Errorf("LIST kms/keys: %s in %v with key_info %v; want it listed, pending_deletion, %s", k.name, keys, ki, dates[k.name])
		}
	}
	if keys, _ := listKeys(t, v, "kms", "state=pending_deletion"); !slices.Equal(keys, delKeyNames(delKeys)) {
		t.Errorf("LIST kms/keys state=pending_deletion: %v; want %v", keys, delKeyNames(delKeys))
	}
	if out := v.cli("list", "kms/keys"); !strings.Contains(out, "\naes\n") {
		t.Errorf("vault list kms/keys does not show the pending key aes:\n%s", out)
	}
	trustRefused(t, v, "cancel of a key not pending", "POST", "kms/keys/default/cancel_deletion", v.token, nil, "not scheduled for deletion")

	for _, k := range delKeys {
		data := trustOK(t, v, "POST", "kms/keys/"+k.name+"/cancel_deletion", nil)
		if data["state"] != "deactivated" || (data["deletion_date"] != nil && data["deletion_date"] != "") {
			t.Errorf("cancel_deletion of %s: state %v deletion_date %v; want deactivated and no date", k.name, data["state"], data["deletion_date"])
		}
	}
	// Cancelled is deactivated: still nothing served until activated.
	trustRefused(t, v, "encrypt after the cancel, before activate", "POST", "kms/encrypt/aes", v.token,
		map[string]interface{}{"plaintext": b64("x")}, "deactivated", "keys/aes/activate")
	for _, k := range delKeys {
		if data := trustOK(t, v, "POST", "kms/keys/"+k.name+"/activate", nil); data["state"] != "active" {
			t.Errorf("activate %s after the cancel: state %v", k.name, data["state"])
		}
	}
	for _, p := range proofs {
		p.check(t, v, "after cancel_deletion and activate")
	}
	// Rewrap works again too, and what it makes decrypts.
	rewrapped := fmt.Sprint(trustOK(t, v, "POST", "kms/rewrap/aes", map[string]interface{}{"ciphertext": proofs[0].body["ciphertext"]})["ciphertext"])
	delProof{"aes v1 ciphertext rewrapped", "kms/decrypt/aes", map[string]interface{}{"ciphertext": rewrapped}, "plaintext", proofs[0].want}.check(t, v, "after activate")
	if !strings.HasPrefix(rewrapped, "vault:v2:") {
		t.Errorf("rewrap after activate: %q; want vault:v2:", rewrapped)
	}
	if keys, _ := listKeys(t, v, "kms", "state=pending_deletion"); len(keys) != 0 {
		t.Errorf("LIST kms/keys state=pending_deletion after the cancels: %v", keys)
	}
}

// With a deletion window of a few seconds, the periodic purge destroys a
// deleted key after it: read from the token by this process, no object
// with any of the key's CKA_IDs (every version, the HMAC companions, the
// public halves) is left, nor any object labelled as the key's; its
// metadata is gone (404, not listed); the plugin logs the purge once per
// key; and the name can be taken again.
func TestPendingKeyIsPurgedAfterItsWindow(t *testing.T) {
	eachToken(t, testPendingKeyIsPurgedAfterItsWindow)
}

func testPendingKeyIsPurgedAfterItsWindow(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	// The config takes any window from 1s; the purge itself waits for
	// Vault's next periodic call (purgeWait).
	const window = 5 * time.Second
	v.configure("kms", "deletion_window=5s")
	if w := fmt.Sprint(trustOK(t, v, "GET", "kms/config", nil)["deletion_window"]); w != "5" {
		t.Fatalf("kms/config deletion_window %s after writing 5s", w)
	}
	uuid := mountUUID(t, v, "kms")
	delCreate(t, v, "kms", delKeys)
	ids := map[string][]string{}
	var all []string
	for _, k := range delKeys {
		ids[k.name] = delIDs(t, trustOK(t, v, "GET", "kms/keys/"+k.name, nil))
		all = append(all, ids[k.name]...)
		readToken(t, tok, ids[k.name], "hsmkms/"+uuid+"/"+k.name+"/").wantAll(t, k.name+" before the delete")
	}
	if len(ids["aes"]) != 4 {
		t.Fatalf("aes names CKA_IDs %v; want 4 (two versions, two HMAC companions)", ids["aes"])
	}

	var last time.Time
	for _, k := range delKeys {
		scheduled, _ := delSchedule(t, v, "kms", k, window)
		date, _ := time.Parse(time.RFC3339, scheduled)
		if date.After(last) {
			last = date
		}
	}
	for _, k := range delKeys {
		readToken(t, tok, ids[k.name], "hsmkms/"+uuid+"/"+k.name+"/").wantAll(t, k.name+" pending")
	}
	purged := waitPurged(t, v, "kms", delKeyNames(delKeys), last.Add(purgeWait))
	t.Logf("the keys were purged %v after the last deletion date", purged.Sub(last).Round(time.Second))

	for _, k := range delKeys {
		readToken(t, tok, ids[k.name], "hsmkms/"+uuid+"/"+k.name+"/").wantNone(t, k.name+" after the purge")
		if events := purgeEvents(t, v.logPath, k.name); len(events) != 1 {
			t.Errorf("%d %q events for %s in Vault's log; want one: %q", len(events), purgedEvent, k.name, events)
		}
	}
	keys, _ := listKeys(t, v, "kms", "")
	for _, k := range delKeys {
		if slices.Contains(keys, k.name) {
			t.Errorf("LIST kms/keys after the purge still lists %s: %v", k.name, keys)
		}
	}
	if keys, _ := listKeys(t, v, "kms", "state=pending_deletion"); len(keys) != 0 {
		t.Errorf("LIST kms/keys state=pending_deletion after the purge: %v", keys)
	}

	// The names are free again: new keys, new objects.
	delCreate(t, v, "kms", delKeys)
	for _, k := range delKeys {
		for _, id := range delIDs(t, trustOK(t, v, "GET", "kms/keys/"+k.name, nil)) {
			if slices.Contains(all, id) {
				t.Errorf("the new %s has the purged key's CKA_ID %s", k.name, id)
			}
		}
	}
	pt := b64("under the new aes")
	ct := fmt.Sprint(trustOK(t, v, "POST", "kms/encrypt/aes", map[string]interface{}{"plaintext": pt})["ciphertext"])
	delProof{"the new aes", "kms/decrypt/aes", map[string]interface{}{"ciphertext": ct}, "plaintext", pt}.check(t, v, "after the name was reused")
}

// A Vault restart in the middle of the window changes nothing: the keys
// are still pending, with their dates, and their objects are still on the
// token; one is cancelled and works; the other is purged after its date by
// the restarted Vault.
func TestPendingDeletionSurvivesAVaultRestart(t *testing.T) {
	eachToken(t, testPendingDeletionSurvivesAVaultRestart)
}

func testPendingDeletionSurvivesAVaultRestart(t *testing.T, tok *tokentest.Token) {
	dataDir := t.TempDir()
	port := freePort(t)
	v, unsealKey, rootToken := startPersistentVault(t, tok, dataDir, port, "", "")
	v.registerAndMount("kms")
	// Long enough for a stop, a start and an unseal on a loaded machine.
	const window = 60 * time.Second
	v.configure("kms", "deletion_window=60s")
	uuid := mountUUID(t, v, "kms")
	doomed, saved := delKey{"doomed", "aes256-gcm96", false}, delKey{"saved", "ecdsa-p256", true}
	delCreate(t, v, "kms", []delKey{doomed, saved})
	pt := b64("sealed before the restart")
	ct := fmt.Sprint(trustOK(t, v, "POST", "kms/encrypt/doomed", map[string]interface{}{"plaintext": pt})["ciphertext"])
	sig := fmt.Sprint(trustOK(t, v, "POST", "kms/sign/saved", map[string]interface{}{"input": pt})["signature"])
	ids := delIDs(t, trustOK(t, v, "GET", "kms/keys/doomed", nil))
	prefix := "hsmkms/" + uuid + "/doomed/"
	readToken(t, tok, ids, prefix).wantAll(t, "doomed before the delete")
	dates := map[string]string{}
	dates["doomed"], _ = delSchedule(t, v, "kms", doomed, window)
	dates["saved"], _ = delSchedule(t, v, "kms", saved, window)
	date, _ := time.Parse(time.RFC3339, dates["doomed"])

	v.stop()
	v2, _, _ := startPersistentVault(t, tok, dataDir, port, unsealKey, rootToken)
	if now := time.Now(); !now.Before(date) {
		t.Fatalf("the restart ended at %s, after the deletion date %s: the window must be longer for the test to say anything", now.UTC().Format(time.RFC3339), dates["doomed"])
	}
	for name, want := range dates {
		if data := trustOK(t, v2, "GET", "kms/keys/"+name, nil); data["state"] != "pending_deletion" || data["deletion_date"] != want {
			t.Errorf("%s after the restart: state %v deletion_date %v; want pending_deletion %s", name, data["state"], data["deletion_date"], want)
		}
	}
	trustRefused(t, v2, "decrypt with doomed after the restart", "POST", "kms/decrypt/doomed", v2.token,
		map[string]interface{}{"ciphertext": ct}, "scheduled for deletion on "+dates["doomed"], "keys/doomed/cancel_deletion")
	readToken(t, tok, ids, prefix).wantAll(t, "doomed after the restart")
	trustOK(t, v2, "POST", "kms/keys/saved/cancel_deletion", nil)
	trustOK(t, v2, "POST", "kms/keys/saved/activate", nil)
	verified := delProof{"saved's signature", "kms/verify/saved", map[string]interface{}{"input": pt, "signature": sig}, "valid", "true"}
	verified.check(t, v2, "after the restart and the cancel")

	purged := waitPurged(t, v2, "kms", []string{"doomed"}, date.Add(purgeWait))
	t.Logf("doomed was purged %v after its deletion date, by the restarted Vault", purged.Sub(date).Round(time.Second))
	readToken(t, tok, ids, prefix).wantNone(t, "doomed after the purge")
	if events := purgeEvents(t, v2.logPath, "doomed"); len(events) != 1 {
		t.Errorf("%d %q events for doomed in the restarted Vault's log; want one: %q", len(events), purgedEvent, events)
	}
	if events := purgeEvents(t, v.logPath, "doomed"); len(events) != 0 {
		t.Errorf("the Vault stopped before the deletion date logged a purge: %q", events)
	}
	verified.check(t, v2, "after doomed's purge")
	if data := trustOK(t, v2, "GET", "kms/keys/saved", nil); data["state"] != "active" {
		t.Errorf("saved after doomed's purge: state %v", data["state"])
	}
}

// purge/:name (sudo) ends a pending key's window at once: its objects go, its
// name is free. With purge_protection=true the mount refuses it (a 400
// naming the protection and the date), the key waits for its date and can
// still be cancelled, and purge_protection cannot be set back to false.
func TestPurgeAndPurgeProtection(t *testing.T) {
	eachToken(t, testPurgeAndPurgeProtection)
}

func testPurgeAndPurgeProtection(t *testing.T, tok *tokentest.Token) {
	v := startDevVault(t, tok)
	v.configure("kms")
	uuid := mountUUID(t, v, "kms")
	p1, p2 := delKey{"p1", "aes256-gcm96", false}, delKey{"p2", "rsa-2048", true}
	delCreate(t, v, "kms", []delKey{p1, p2})
	pt := b64("sealed under p2")
	ct := fmt.Sprint(trustOK(t, v, "POST", "kms/encrypt/p2", map[string]interface{}{"plaintext": pt})["ciphertext"])
	trustRefused(t, v, "purge of an active key", "POST", "kms/purge/p1", v.token, nil, "only a key scheduled for deletion")

	ids := delIDs(t, trustOK(t, v, "GET", "kms/keys/p1", nil))
	prefix := "hsmkms/" + uuid + "/p1/"
	delSchedule(t, v, "kms", p1, 168*time.Hour)
	// Without sudo, purge is refused by Vault itself.
	noSudo := v.tokenWithPolicy("no-sudo", `path "kms/*" { capabilities = ["create", "read", "update", "delete", "list"] }`)
	if status, resp := v.raw("POST", "kms/purge/p1", noSudo, map[string]interface{}{}); status != http.StatusForbidden {
		t.Errorf("purge with update but no sudo: %d %v; want 403", status, resp)
	}
	readToken(t, tok, ids, prefix).wantAll(t, "p1 pending")
	if status, resp := v.raw("POST", "kms/purge/p1", v.token, map[string]interface{}{}); status/100 != 2 {
		t.Fatalf("purge of pending p1: %d %v", status, resp)
	}
	if status, resp := v.raw("GET", "kms/keys/p1", v.token, nil); status != http.StatusNotFound {
		t.Errorf("read of p1 after its purge: %d %v; want 404", status, resp)
	}
	readToken(t, tok, ids, prefix).wantNone(t, "p1 after its purge")
	if events := keyEvents(t, v.logPath, "key purged", "p1"); len(events) != 1 {
		t.Errorf("%q events for p1 in Vault's log: %q; want one", "key purged", events)
	}
	trustOK(t, v, "POST", "kms/keys/p1", map[string]interface{}{"type": "aes256-gcm96"})

	v.cli("write", "kms/config", "purge_protection=true")
	if got := trustOK(t, v, "GET", "kms/config", nil)["purge_protection"]; got != true {
		t.Fatalf("kms/config purge_protection %v after writing true", got)
	}
	date, _ := delSchedule(t, v, "kms", p2, 168*time.Hour)
	ids = delIDs(t, trustOK(t, v, "GET", "kms/keys/p2", nil))
	prefix = "hsmkms/" + uuid + "/p2/"
	trustRefused(t, v, "purge under purge_protection", "POST", "kms/purge/p2", v.token, nil, "purge_protection", date)
	if data := trustOK(t, v, "GET", "kms/keys/p2", nil); data["state"] != "pending_deletion" || data["deletion_date"] != date {
		t.Errorf("p2 after a refused purge: state %v deletion_date %v; want pending_deletion %s", data["state"], data["deletion_date"], date)
	}
	readToken(t, tok, ids, prefix).wantAll(t, "p2 after a refused purge")

	trustRefused(t, v, "purge_protection set back to false", "POST", "kms/config", v.token,
		map[string]interface{}{"purge_protection": false}, "purge_protection", "cannot be turned off")
	v.configure("kms") // a whole config write that does not name it keeps it
	if got := trustOK(t, v, "GET", "kms/config", nil)["purge_protection"]; got != true {
		t.Errorf("kms/config purge_protection %v after a refused false and a config write; want true", got)
	}

	trustOK(t, v, "POST", "kms/keys/p2/cancel_deletion", nil)
	trustOK(t, v, "POST", "kms/keys/p2/activate", nil)
	delProof{"p2's ciphertext", "kms/decrypt/p2", map[string]interface{}{"ciphertext": ct}, "plaintext", pt}.check(t, v, "after the cancel under purge_protection")
}
