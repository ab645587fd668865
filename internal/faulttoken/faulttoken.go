// Package faulttoken puts a misbehaving token between hsm/ and a real
// PKCS#11 module, through hsm.Config.Intercept: errors on chosen calls, a
// token that goes away and comes back, renumbered slots, slow calls, a
// network's round trip on every call, sessions closed behind the client's
// back, and the AES-GCM IV behaviours of real HSMs that software tokens
// never show. It counts the PKCS#11 calls that reach the module, by
// function name, and signals them as they arrive (OnCall), so tests wait
// on calls rather than sleep. Everything it does not change is passed to
// the real module, so the cryptography under test stays real. For tests
// and benchmarks only.
package faulttoken

import (
	"crypto/rand"
	"sync"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// IVMode is what the token does with the caller's AES-GCM IV.
type IVMode int

const (
	// IVHonest uses the caller's IV, as the specification says.
	IVHonest IVMode = iota
	// IVWritten ignores it and writes the IV it used into CK_GCM_PARAMS
	// (AWS CloudHSM).
	IVWritten
	// IVAppended ignores it and appends the IV it used to the output (Luna
	// and ProtectServer in FIPS mode).
	IVAppended
	// IVIgnored ignores it and tells nobody: ciphertexts nobody can
	// decrypt. The plugin must refuse such a token.
	IVIgnored
)

// Token is a faulty view of a real module. Safe for concurrent use.
type Token struct {
	inner hsm.PKCS11

	mu        sync.Mutex
	queued    map[string][]error // call name -> errors for its next calls
	failing   map[string]error   // call name -> error for every call until cleared
	hidden    int                // C_FindObjects calls left that find nothing
	absent    bool
	slotShift uint
	delays    map[string]time.Duration
	latency   time.Duration
	ivMode    IVMode
	ownIV     map[pkcs11.SessionHandle]ownIV
	lastIV    []byte
	calls     map[string]int
	onCall    map[string]func()

	// Sessions the client opened and has not closed, the ones it logged
	// in on, and the ones to close in the module before their next call.
	open    map[pkcs11.SessionHandle]bool
	loginOn map[pkcs11.SessionHandle]bool
	dropped map[pkcs11.SessionHandle]bool
}

type ownIV struct {
	iv     []byte
	params *pkcs11.GCMParams
}

// New returns a token that behaves exactly like inner until told otherwise.
func New(inner hsm.PKCS11) *Token {
	return &Token{inner: inner, queued: map[string][]error{}, failing: map[string]error{}, delays: map[string]time.Duration{},
		ownIV: map[pkcs11.SessionHandle]ownIV{}, calls: map[string]int{}, onCall: map[string]func(){},
		open: map[pkcs11.SessionHandle]bool{}, loginOn: map[pkcs11.SessionHandle]bool{}, dropped: map[pkcs11.SessionHandle]bool{}}
}

// Intercept is an hsm.Config.Intercept that installs t.
func (t *Token) Intercept(inner hsm.PKCS11) hsm.PKCS11 {
	t.mu.Lock()
	t.inner = inner
	t.mu.Unlock()
	return t
}

// FailNext makes the next calls of name (a PKCS#11 function name such as
// "C_Encrypt") return errs, one per call, without reaching the module.
func (t *Token) FailNext(name string, errs ...error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.queued[name] = append(t.queued[name], errs...)
}

// SetFailing makes every call of name return err, until SetFailing(name,
// nil).
func (t *Token) SetFailing(name string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		delete(t.failing, name)
		return
	}
	t.failing[name] = err
}

// HideObjects makes the next n C_FindObjects calls find nothing, as a
// token whose storage went away does.
func (t *Token) HideObjects(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.hidden = n
}

// SetAbsent takes the token away (every call answers
// CKR_TOKEN_NOT_PRESENT, slot lists leave it out) or brings it back.
func (t *Token) SetAbsent(absent bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.absent = absent
}

// ShiftSlots renumbers every slot by adding n, as a module can after a
// token is re-initialised; old numbers answer CKR_SLOT_ID_INVALID.
func (t *Token) ShiftSlots(n uint) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.slotShift = n
}

// SetDelay makes every call of name take d longer.
func (t *Token) SetDelay(name string, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.delays[name] = d
}

// OnCall makes f run each time a call of name arrives: once counted and
// before its fault, its delay or the module, in the caller's goroutine and
// with the token unlocked, so a call f held meets the token as it is when
// f returns. It is the signal tests wait on instead of sleeping:
// f can report the call (close or send on a channel, read the clock of a
// testing/synctest bubble) or hold it by blocking until the test lets it
// go, and other calls go on meanwhile. f must not call the token. A nil f
// removes the hook.
func (t *Token) OnCall(name string, f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f == nil {
		delete(t.onCall, name)
		return
	}
	t.onCall[name] = f
}

// SetLatency makes every PKCS#11 call take d longer, as a network HSM's
// round trip does; a method of the binding that makes two calls (miekg's
// Sign and Decrypt ask for the size first) pays it twice. A simulation
// knob for tests and benchmarks, never a timing to assert.
func (t *Token) SetLatency(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.latency = d
}

// DropSessions closes, in the module, every session the client has open
// except the ones it logged in on, as a network HSM closes sessions it
// deems idle or loses with a connection. Each is closed right before its
// next call, which then reaches the module on a closed handle: the module
// never sees a session closed under a call in flight on it. It returns
// the number of sessions dropped.
func (t *Token) DropSessions() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for sh := range t.open {
		if !t.loginOn[sh] && !t.dropped[sh] {
			t.dropped[sh] = true
			n++
		}
	}
	return n
}

// Sessions counts the sessions the client holds open, its login session
// aside: all of them, and those of them DropSessions closed behind its back
// that it has not called on since (the call will fail).
func (t *Token) Sessions() (open, dropped int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for sh := range t.open {
		if t.loginOn[sh] {
			continue
		}
		open++
		if t.dropped[sh] {
			dropped++
		}
	}
	return open, dropped
}

// SetIVMode chooses what the token does with the caller's AES-GCM IV.
func (t *Token) SetIVMode(m IVMode) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ivMode = m
}

// Counts are the PKCS#11 calls that reached the module so far, by function
// name: a copy, for Delta.
func (t *Token) Counts() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int, len(t.calls))
	for name, n := range t.calls {
		out[name] = n
	}
	return out
}

// Delta is the calls in after that are not in before (two Counts), without
// the names that made none.
func Delta(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for name, n := range after {
		if d := n - before[name]; d != 0 {
			out[name] = d
		}
	}
	return out
}

// TotalCalls counts every call that reached this token.
func (t *Token) TotalCalls() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.calls {
		n += c
	}
	return n
}

// LastIV is the last AES-GCM IV the token chose itself.
func (t *Token) LastIV() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.lastIV...)
}

// Calls counts the calls of name that reached this token.
func (t *Token) Calls(name string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.calls[name]
}

// before counts a call, runs its OnCall hook, applies its delay and
// returns the fault it should answer with, if any.
func (t *Token) before(name string) error {
	t.mu.Lock()
	t.calls[name]++
	hook := t.onCall[name]
	t.mu.Unlock()
	if hook != nil {
		hook()
	}
	t.mu.Lock()
	d := t.delays[name] + t.latency
	var err error
	if q := t.queued[name]; len(q) > 0 {
		err, t.queued[name] = q[0], q[1:]
	} else if f, ok := t.failing[name]; ok {
		err = f
	} else if t.absent && name != "C_Finalize" && name != "C_Initialize" && name != "C_GetSlotList" {
		err = pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)
	}
	t.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	return err
}

// on is before for a call on session sh, which it first closes in the
// module if DropSessions chose it.
func (t *Token) on(name string, sh pkcs11.SessionHandle) error {
	if err := t.before(name); err != nil {
		return err
	}
	t.mu.Lock()
	drop := t.dropped[sh]
	if drop {
		delete(t.dropped, sh)
		delete(t.open, sh)
	}
	t.mu.Unlock()
	if drop {
		_ = t.inner.CloseSession(sh)
	}
	return nil
}

// again counts the second PKCS#11 call a binding method made (miekg's
// size query comes first) and applies its latency.
func (t *Token) again(name string) {
	t.mu.Lock()
	t.calls[name]++
	d := t.latency
	t.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}

// forgetSessions drops the record of every session: C_Finalize and
// C_Initialize leave none open.
func (t *Token) forgetSessions() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.open)
	clear(t.loginOn)
	clear(t.dropped)
}

func (t *Token) real(slot uint) (uint, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if slot < t.slotShift {
		return 0, pkcs11.Error(pkcs11.CKR_SLOT_ID_INVALID)
	}
	return slot - t.slotShift, nil
}

func (t *Token) Initialize() error {
	if err := t.before("C_Initialize"); err != nil {
		return err
	}
	t.forgetSessions()
	return t.inner.Initialize()
}

func (t *Token) Finalize() error {
	if err := t.before("C_Finalize"); err != nil {
		return err
	}
	t.forgetSessions()
	return t.inner.Finalize()
}

func (t *Token) GetSlotList(present bool) ([]uint, error) {
	if err := t.before("C_GetSlotList"); err != nil {
		return nil, err
	}
	slots, err := t.inner.GetSlotList(present)
	if err == nil {
		t.again("C_GetSlotList")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.absent {
		return nil, err
	}
	for i := range slots {
		slots[i] += t.slotShift
	}
	return slots, err
}

func (t *Token) GetTokenInfo(slot uint) (pkcs11.TokenInfo, error) {
	if err := t.before("C_GetTokenInfo"); err != nil {
		return pkcs11.TokenInfo{}, err
	}
	s, err := t.real(slot)
	if err != nil {
		return pkcs11.TokenInfo{}, err
	}
	return t.inner.GetTokenInfo(s)
}

func (t *Token) GetMechanismList(slot uint) ([]*pkcs11.Mechanism, error) {
	if err := t.before("C_GetMechanismList"); err != nil {
		return nil, err
	}
	s, err := t.real(slot)
	if err != nil {
		return nil, err
	}
	mechs, err := t.inner.GetMechanismList(s)
	if err == nil {
		t.again("C_GetMechanismList")
	}
	return mechs, err
}

func (t *Token) OpenSession(slot, flags uint) (pkcs11.SessionHandle, error) {
	if err := t.before("C_OpenSession"); err != nil {
		return 0, err
	}
	s, err := t.real(slot)
	if err != nil {
		return 0, err
	}
	sh, err := t.inner.OpenSession(s, flags)
	if err == nil {
		t.mu.Lock()
		t.open[sh], t.dropped[sh], t.loginOn[sh] = true, false, false
		t.mu.Unlock()
	}
	return sh, err
}

func (t *Token) CloseSession(sh pkcs11.SessionHandle) error {
	if err := t.on("C_CloseSession", sh); err != nil {
		return err
	}
	t.mu.Lock()
	delete(t.open, sh)
	delete(t.loginOn, sh)
	delete(t.dropped, sh)
	t.mu.Unlock()
	return t.inner.CloseSession(sh)
}

func (t *Token) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if err := t.on("C_GetSessionInfo", sh); err != nil {
		return pkcs11.SessionInfo{}, err
	}
	return t.inner.GetSessionInfo(sh)
}

func (t *Token) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	if err := t.on("C_Login", sh); err != nil {
		return err
	}
	t.mu.Lock()
	t.loginOn[sh] = true
	t.mu.Unlock()
	return t.inner.Login(sh, userType, pin)
}

func (t *Token) Logout(sh pkcs11.SessionHandle) error {
	if err := t.on("C_Logout", sh); err != nil {
		return err
	}
	return t.inner.Logout(sh)
}

func (t *Token) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	if err := t.on("C_FindObjectsInit", sh); err != nil {
		return err
	}
	return t.inner.FindObjectsInit(sh, temp)
}

func (t *Token) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	if err := t.on("C_FindObjects", sh); err != nil {
		return nil, false, err
	}
	handles, more, err := t.inner.FindObjects(sh, max)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil && t.hidden > 0 {
		t.hidden--
		return nil, false, nil
	}
	return handles, more, err
}

func (t *Token) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	if err := t.on("C_FindObjectsFinal", sh); err != nil {
		return err
	}
	return t.inner.FindObjectsFinal(sh)
}

func (t *Token) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	if err := t.on("C_GetAttributeValue", sh); err != nil {
		return nil, err
	}
	attrs, err := t.inner.GetAttributeValue(sh, o, a)
	if err == nil {
		t.again("C_GetAttributeValue")
	}
	return attrs, err
}

func (t *Token) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	if err := t.on("C_SetAttributeValue", sh); err != nil {
		return err
	}
	return t.inner.SetAttributeValue(sh, o, a)
}

func (t *Token) CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := t.on("C_CreateObject", sh); err != nil {
		return 0, err
	}
	return t.inner.CreateObject(sh, temp)
}

func (t *Token) DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	if err := t.on("C_DestroyObject", sh); err != nil {
		return err
	}
	return t.inner.DestroyObject(sh, o)
}

func (t *Token) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := t.on("C_GenerateKey", sh); err != nil {
		return 0, err
	}
	return t.inner.GenerateKey(sh, m, temp)
}

func (t *Token) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	if err := t.on("C_GenerateKeyPair", sh); err != nil {
		return 0, 0, err
	}
	return t.inner.GenerateKeyPair(sh, m, pub, priv)
}

func (t *Token) WrapKeyOnce(sh pkcs11.SessionHandle, mech uint, wrapping, key pkcs11.ObjectHandle, outCap int) ([]byte, error) {
	if err := t.on("C_WrapKey", sh); err != nil {
		return nil, err
	}
	return t.inner.WrapKeyOnce(sh, mech, wrapping, key, outCap)
}

func (t *Token) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, key pkcs11.ObjectHandle, wrapped []byte, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := t.on("C_UnwrapKey", sh); err != nil {
		return 0, err
	}
	return t.inner.UnwrapKey(sh, m, key, wrapped, temp)
}

// EncryptInit replaces the caller's GCM IV by one of the token's own when
// the IV mode says so, and reports it the way that mode's HSMs do.
func (t *Token) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := t.on("C_EncryptInit", sh); err != nil {
		return err
	}
	t.mu.Lock()
	mode := t.ivMode
	t.mu.Unlock()
	if mode == IVHonest || len(m) != 1 || m[0].Mechanism != pkcs11.CKM_AES_GCM {
		return t.inner.EncryptInit(sh, m, o)
	}
	callerIV, aad, tagBits := readGCMParams(m[0].Parameter)
	own := make([]byte, 12)
	if _, err := rand.Read(own); err != nil {
		return err
	}
	params := pkcs11.NewGCMParams(own, aad, tagBits)
	if err := t.inner.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, o); err != nil {
		params.Free()
		return err
	}
	if mode == IVWritten {
		copy(callerIV, own)
	}
	t.mu.Lock()
	t.ownIV[sh] = ownIV{iv: own, params: params}
	t.lastIV = own
	t.mu.Unlock()
	return nil
}

func (t *Token) EncryptOnce(sh pkcs11.SessionHandle, plaintext []byte, outCap int) ([]byte, error) {
	if err := t.on("C_Encrypt", sh); err != nil {
		return nil, err
	}
	t.mu.Lock()
	own, replaced := t.ownIV[sh]
	delete(t.ownIV, sh)
	mode := t.ivMode
	t.mu.Unlock()
	out, err := t.inner.EncryptOnce(sh, plaintext, outCap)
	if replaced {
		own.params.Free()
		if err == nil && mode == IVAppended {
			out = append(out, own.iv...)
		}
	}
	return out, err
}

func (t *Token) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := t.on("C_DecryptInit", sh); err != nil {
		return err
	}
	return t.inner.DecryptInit(sh, m, o)
}

func (t *Token) Decrypt(sh pkcs11.SessionHandle, ct []byte) ([]byte, error) {
	if err := t.on("C_Decrypt", sh); err != nil {
		return nil, err
	}
	out, err := t.inner.Decrypt(sh, ct)
	if err == nil {
		t.again("C_Decrypt")
	}
	return out, err
}

func (t *Token) DecryptOnce(sh pkcs11.SessionHandle, ct []byte, outCap int) ([]byte, error) {
	if err := t.on("C_Decrypt", sh); err != nil {
		return nil, err
	}
	return t.inner.DecryptOnce(sh, ct, outCap)
}

func (t *Token) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := t.on("C_SignInit", sh); err != nil {
		return err
	}
	return t.inner.SignInit(sh, m, o)
}

func (t *Token) Sign(sh pkcs11.SessionHandle, data []byte) ([]byte, error) {
	if err := t.on("C_Sign", sh); err != nil {
		return nil, err
	}
	sig, err := t.inner.Sign(sh, data)
	if err == nil {
		t.again("C_Sign")
	}
	return sig, err
}

func (t *Token) SignOnce(sh pkcs11.SessionHandle, data []byte, outCap int) ([]byte, error) {
	if err := t.on("C_Sign", sh); err != nil {
		return nil, err
	}
	return t.inner.SignOnce(sh, data, outCap)
}

func (t *Token) VerifyInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := t.on("C_VerifyInit", sh); err != nil {
		return err
	}
	return t.inner.VerifyInit(sh, m, o)
}

func (t *Token) Verify(sh pkcs11.SessionHandle, data, sig []byte) error {
	if err := t.on("C_Verify", sh); err != nil {
		return err
	}
	return t.inner.Verify(sh, data, sig)
}

func (t *Token) GenerateRandom(sh pkcs11.SessionHandle, n int) ([]byte, error) {
	if err := t.on("C_GenerateRandom", sh); err != nil {
		return nil, err
	}
	return t.inner.GenerateRandom(sh, n)
}

// readGCMParams reads a CK_GCM_PARAMS as miekg/pkcs11 lays it out in a
// mechanism's parameter bytes (LP64: pIv, ulIvLen, ulIvBits, pAAD,
// ulAADLen, ulTagBits), returning the caller's IV buffer itself (C memory
// the token may write into), a copy of the AAD and the tag size.
func readGCMParams(param []byte) (iv, aad []byte, tagBits int) {
	const word = int(unsafe.Sizeof(uintptr(0)))
	ptrAt := func(i int) unsafe.Pointer {
		var p unsafe.Pointer
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&p)), word), param[i*word:(i+1)*word])
		return p
	}
	numAt := func(i int) int {
		var n uintptr
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&n)), word), param[i*word:(i+1)*word])
		return int(n)
	}
	if p, n := ptrAt(0), numAt(1); p != nil && n > 0 {
		iv = unsafe.Slice((*byte)(p), n)
	}
	if p, n := ptrAt(3), numAt(4); p != nil && n > 0 {
		aad = append([]byte(nil), unsafe.Slice((*byte)(p), n)...)
	}
	return iv, aad, numAt(5)
}
