package e2e

import (
	"crypto"
	"encoding/base64"
	"fmt"
	"math/rand"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// upgradeKeys are the keys the upgrade test uses, one of each kind a
// version switch could lose: token objects of AES, RSA and EC, and keys
// held wrapped under the KEK, which the new process must unwrap again.
var upgradeKeys = []struct {
	name string
	body map[string]interface{}
}{
	{"aes", map[string]interface{}{"type": "aes256-gcm96"}},
	{"rsa", map[string]interface{}{"type": "rsa-2048"}},
	{"ec", map[string]interface{}{"type": "ecdsa-p256"}},
	{"wrapped-aes", map[string]interface{}{"type": "aes256-gcm96", "residency": "wrapped"}},
	{"wrapped-ec", map[string]interface{}{"type": "ecdsa-p256", "residency": "wrapped"}},
}

// What each key is used for, and the JWA algorithm of each signing key.
var (
	upgradeEncryptKeys = []string{"aes", "wrapped-aes", "rsa"}
	upgradeDatakeyKeys = []string{"aes", "wrapped-aes"}
	upgradeSignAlgs    = map[string]string{"rsa": "PS256", "ec": "ES256", "wrapped-ec": "ES256"}
	upgradeSignKeys    = []string{"rsa", "ec", "wrapped-ec"}
)

// upgradeSig is a signature and what it signs.
type upgradeSig struct{ key, alg, input, sig string }

// upgradeCorpus is what must still open after a switch: ciphertexts and
// data keys by key (a data key's ciphertext opens with decrypt/:name, to
// its plaintext), and signatures.
type upgradeCorpus struct {
	cts  map[string][]ctPair
	sigs []upgradeSig
	pubs map[string]crypto.PublicKey // the signing keys' public keys, from their read
}

// newUpgradeCorpus creates the keys on kms/ and makes the values to keep.
func newUpgradeCorpus(t *testing.T, v *vaultServer) *upgradeCorpus {
	t.Helper()
	c := &upgradeCorpus{cts: map[string][]ctPair{}, pubs: map[string]crypto.PublicKey{}}
	for _, k := range upgradeKeys {
		wrPost(t, v, "kms/keys/"+k.name, k.body)
		data := wrRead(t, v, "kms/keys/"+k.name)
		if want := k.body["residency"]; want != nil && data["residency"] != want {
			t.Fatalf("%s: residency %v, want %v", k.name, data["residency"], want)
		}
		if _, ok := upgradeSignAlgs[k.name]; ok {
			c.pubs[k.name] = wrPublicKey(t, data, 1)
		}
	}
	for _, key := range upgradeEncryptKeys {
		if key == "rsa" {
			// RSA encryption takes no context.
			for i := range 20 {
				p := ctPair{pt: fmt.Sprintf("made before, %d", i)}
				p.ct = encryptOnce(t, v, key, p.pt, "")
				c.cts[key] = append(c.cts[key], p)
			}
			continue
		}
		c.cts[key] = makeCiphertexts(t, v, key, 20)
	}
	for _, key := range upgradeDatakeyKeys {
		for range 10 {
			data := wrPost(t, v, "kms/datakey/plaintext/"+key, nil)
			pt, err := base64.StdEncoding.DecodeString(fmt.Sprint(data["plaintext"]))
			if err != nil || len(pt) != 32 {
				t.Fatalf("datakey/plaintext/%s: plaintext %v (%v), want 32 bytes", key, data["plaintext"], err)
			}
			c.cts[key] = append(c.cts[key], ctPair{ct: fmt.Sprint(data["ciphertext"]), pt: string(pt)})
		}
	}
	for _, key := range upgradeSignKeys {
		for i := range 10 {
			msg := fmt.Sprintf("signed by %s before, %d", key, i)
			s := upgradeSig{key: key, alg: upgradeSignAlgs[key], input: b64(msg)}
			s.sig = fmt.Sprint(wrPost(t, v, "kms/sign/"+key, map[string]interface{}{"input": s.input, "alg": s.alg})["signature"])
			if err := wrVerifyInGo(c.pubs[key], s.alg, []byte(msg), s.sig); err != nil {
				t.Fatalf("%s: Go rejects the signature %q of %q: %v", key, s.sig, msg, err)
			}
			c.sigs = append(c.sigs, s)
		}
	}
	return c
}

// check decrypts every ciphertext and data key of c to its plaintext and
// verifies every signature through kms/, and sees each signature refused
// for another input: a verify that answered true to anything would
// otherwise pass.
func (c *upgradeCorpus) check(t *testing.T, v *vaultServer) {
	t.Helper()
	for _, key := range upgradeEncryptKeys {
		checkAllDecrypt(t, v, key, c.cts[key])
	}
	byKey := map[string][]upgradeSig{}
	for _, s := range c.sigs {
		byKey[s.key] = append(byKey[s.key], s)
	}
	for key, sigs := range byKey {
		for start := 0; start < len(sigs); start += 100 {
			batch := sigs[start:min(start+100, len(sigs))]
			if len(batch) < 2 {
				continue
			}
			var items, swapped []map[string]interface{}
			for i, s := range batch {
				items = append(items, map[string]interface{}{"input": s.input, "signature": s.sig})
				other := batch[(i+1)%len(batch)]
				swapped = append(swapped, map[string]interface{}{"input": other.input, "signature": s.sig})
			}
			for _, want := range []bool{true, false} {
				body := items
				if !want {
					body = swapped
				}
				data := wrPost(t, v, "kms/verify/"+key, map[string]interface{}{"alg": batch[0].alg, "batch_input": body})
				results := wireBatchItems(t, map[string]interface{}{"data": data})
				if len(results) != len(body) {
					t.Fatalf("verify/%s: %d results for %d items", key, len(results), len(body))
				}
				for i, r := range results {
					if r["valid"] != want {
						t.Errorf("verify/%s of %s over %s: %v, want valid %v", key, batch[i].sig, body[i]["input"], r, want)
					}
				}
			}
		}
	}
}

// summary counts c's values.
func (c *upgradeCorpus) summary() string {
	var parts []string
	for _, key := range upgradeEncryptKeys {
		parts = append(parts, fmt.Sprintf("%s %d", key, len(c.cts[key])))
	}
	return fmt.Sprintf("ciphertexts and data keys (%s), %d signatures", strings.Join(parts, ", "), len(c.sigs))
}

// upgradeLoad is upgradeClients clients, each going round every
// operation on every key: encrypt then decrypt what it encrypted, decrypt
// a value made before the switches, sign then verify (through kms/ and in
// Go), verify a signature made before, make a data key and decrypt it.
// Every request is a sample.
type upgradeLoad struct {
	addr, token string
	c           *upgradeCorpus
	client      *http.Client
	stop        chan struct{}
	stopOnce    sync.Once
	wg          sync.WaitGroup

	mu       sync.Mutex
	changed  chan struct{} // closed, and replaced, when a sample is recorded
	samples  []sample
	madeCTs  map[string][]ctPair
	madeSigs []upgradeSig
}

func startUpgradeLoad(t *testing.T, v *vaultServer, c *upgradeCorpus) *upgradeLoad {
	l := &upgradeLoad{
		addr: v.addr, token: v.token, c: c,
		client:  &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: upgradeClients}, CheckRedirect: noRedirects},
		stop:    make(chan struct{}),
		changed: make(chan struct{}),
		madeCTs: map[string][]ctPair{},
	}
	for w := range upgradeClients {
		l.wg.Add(1)
		go l.work(w)
	}
	t.Cleanup(func() { l.finish() })
	return l
}

// finish stops the clients and returns every sample, in start order.
func (l *upgradeLoad) finish() []sample {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]sample(nil), l.samples...)
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out
}

// waitSuccesses waits until n requests sent after t0 have succeeded; it
// fails t if that takes more than two minutes, which only a mount that
// stopped serving would.
func (l *upgradeLoad) waitSuccesses(t *testing.T, t0 time.Time, n int, what string) {
	t.Helper()
	deadline := time.NewTimer(2 * time.Minute)
	defer deadline.Stop()
	got, seen := 0, 0
	for {
		l.mu.Lock()
		for _, s := range l.samples[seen:] {
			if s.status == http.StatusOK && s.wrong == "" && !s.start.Before(t0) {
				got++
			}
		}
		seen = len(l.samples)
		changed := l.changed
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			l.mu.Lock()
			last := lastMessages(l.samples, 5)
			l.mu.Unlock()
			t.Fatalf("waiting for %s: %d of %d successes after two minutes; last answers: %s", what, got, n, last)
		}
	}
}

// madeCorpus is what the load made and checked, as a corpus to check again.
func (l *upgradeLoad) madeCorpus() *upgradeCorpus {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := &upgradeCorpus{cts: map[string][]ctPair{}, sigs: append([]upgradeSig(nil), l.madeSigs...), pubs: l.c.pubs}
	for k, v := range l.madeCTs {
		c.cts[k] = append([]ctPair(nil), v...)
	}
	return c
}

func (l *upgradeLoad) work(w int) {
	defer l.wg.Done()
	rng := rand.New(rand.NewSource(int64(w)))
	ops := []func(i int){
		func(i int) { l.roundTrip(w, i, "aes") },
		func(i int) { l.roundTrip(w, i, "wrapped-aes") },
		func(i int) { l.roundTrip(w, i, "rsa") },
		func(int) {
			key := upgradeEncryptKeys[rng.Intn(len(upgradeEncryptKeys))]
			l.decrypt(key, l.c.cts[key][rng.Intn(len(l.c.cts[key]))])
		},
		func(i int) { l.signVerify(w, i, "rsa") },
		func(i int) { l.signVerify(w, i, "ec") },
		func(i int) { l.signVerify(w, i, "wrapped-ec") },
		func(int) { l.verify(l.c.sigs[rng.Intn(len(l.c.sigs))]) },
		func(int) { l.datakey("aes") },
		func(int) { l.datakey("wrapped-aes") },
	}
	for i := 0; ; i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		ops[(w+i)%len(ops)](i)
	}
}

// roundTrip encrypts a plaintext of its own (AES: every other one bound to
// a context) and decrypts what it got.
func (l *upgradeLoad) roundTrip(w, i int, key string) {
	p := ctPair{pt: fmt.Sprintf("client %d, request %d, %s", w, i, key)}
	body := map[string]interface{}{"plaintext": b64(p.pt)}
	if key != "rsa" && i%2 == 0 {
		p.ctx = b64(fmt.Sprint("client ", w))
		body["context"] = p.ctx
	}
	s, data := l.do("encrypt", key, body)
	p.ct, _ = data["ciphertext"].(string)
	if s.status == http.StatusOK && !strings.HasPrefix(p.ct, "vault:v1:") {
		s.wrong = fmt.Sprintf("encrypt answered ciphertext %q", p.ct)
	}
	l.record(s)
	if s.status != http.StatusOK || s.wrong != "" {
		return
	}
	if l.decrypt(key, p) {
		l.mu.Lock()
		l.madeCTs[key] = append(l.madeCTs[key], p)
		l.mu.Unlock()
	}
}

// decrypt decrypts p and compares the plaintext; it says whether it did.
func (l *upgradeLoad) decrypt(key string, p ctPair) bool {
	body := map[string]interface{}{"ciphertext": p.ct}
	if p.ctx != "" {
		body["context"] = p.ctx
	}
	s, data := l.do("decrypt", key, body)
	if s.status == http.StatusOK {
		got, err := base64.StdEncoding.DecodeString(fmt.Sprint(data["plaintext"]))
		if err != nil || string(got) != p.pt {
			s.wrong = fmt.Sprintf("%s decrypted to %q, want %q", p.ct, got, p.pt)
		}
	}
	l.record(s)
	return s.status == http.StatusOK && s.wrong == ""
}

// signVerify signs an input of its own, checks the signature in Go with
// the key's public key, and verifies it through kms/.
func (l *upgradeLoad) signVerify(w, i int, key string) {
	msg := fmt.Sprintf("client %d, request %d, %s", w, i, key)
	sig := upgradeSig{key: key, alg: upgradeSignAlgs[key], input: b64(msg)}
	s, data := l.do("sign", key, map[string]interface{}{"input": sig.input, "alg": sig.alg})
	sig.sig, _ = data["signature"].(string)
	if s.status == http.StatusOK {
		if err := wrVerifyInGo(l.c.pubs[key], sig.alg, []byte(msg), sig.sig); err != nil {
			s.wrong = fmt.Sprintf("Go rejects the signature %q of %q: %v", sig.sig, msg, err)
		}
	}
	l.record(s)
	if s.status != http.StatusOK || s.wrong != "" {
		return
	}
	if l.verify(sig) {
		l.mu.Lock()
		l.madeSigs = append(l.madeSigs, sig)
		l.mu.Unlock()
	}
}

// verify wants kms/verify to find sig valid; it says whether it did.
func (l *upgradeLoad) verify(sig upgradeSig) bool {
	s, data := l.do("verify", sig.key, map[string]interface{}{"input": sig.input, "signature": sig.sig, "alg": sig.alg})
	if s.status == http.StatusOK && data["valid"] != true {
		s.wrong = fmt.Sprintf("verify of its own signature %s answered %v", sig.sig, data)
	}
	l.record(s)
	return s.status == http.StatusOK && s.wrong == ""
}

// datakey makes a data key and decrypts its ciphertext to its plaintext.
func (l *upgradeLoad) datakey(key string) {
	s, data := l.do("datakey/plaintext", key, map[string]interface{}{})
	p := ctPair{}
	p.ct, _ = data["ciphertext"].(string)
	if s.status == http.StatusOK {
		pt, err := base64.StdEncoding.DecodeString(fmt.Sprint(data["plaintext"]))
		p.pt = string(pt)
		if err != nil || len(pt) != 32 || !strings.HasPrefix(p.ct, "vault:v1:") {
			s.wrong = fmt.Sprintf("datakey answered plaintext %v (%v), ciphertext %q", data["plaintext"], err, p.ct)
		}
	}
	l.record(s)
	if s.status != http.StatusOK || s.wrong != "" {
		return
	}
	if l.decrypt(key, p) {
		l.mu.Lock()
		l.madeCTs[key] = append(l.madeCTs[key], p)
		l.mu.Unlock()
	}
}

// do sends op on key through cryptoLoad's request and returns its sample,
// named op/key, and the response's data.
func (l *upgradeLoad) do(op, key string, body map[string]interface{}) (sample, map[string]interface{}) {
	s, data := (&cryptoLoad{token: l.token, key: key, client: l.client}).do(l.addr, op, body)
	s.op = op + "/" + key
	return s, data
}

func (l *upgradeLoad) record(s sample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.samples = append(l.samples, s)
	close(l.changed)
	l.changed = make(chan struct{})
}
