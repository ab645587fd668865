package hsm

import (
	"errors"
	"time"

	"github.com/miekg/pkcs11"
)

// Observer is told of every PKCS#11 call a client makes: the function's
// name ("C_Encrypt"), how long the module took, and what it answered. It
// runs in the caller's goroutine, sometimes with the module's lock held,
// so it must be quick and must not call the client.
type Observer func(call string, took time.Duration, err error)

// ErrorClass names what kind of failure err is, as the client treats it:
// "none" (success, or an answer that means "already done"), "session",
// "handle", "device", "caller", "pin" or "other". It is for metrics and
// logs; callers that decide something test the sentinels with errors.Is.
func ErrorClass(err error) string {
	var size *ResultSizeError
	if err == nil || isSuccess(err) || errors.As(err, &size) {
		return "none"
	}
	return classify(err).String()
}

func (c errorClass) String() string {
	switch c {
	case classNone:
		return "none"
	case classSession:
		return "session"
	case classHandle:
		return "handle"
	case classDevice:
		return "device"
	case classCaller:
		return "caller"
	case classPIN:
		return "pin"
	}
	return "other"
}

// withObserver puts observe around a client's view of the module, outside
// any test interceptor, so it sees what the client sees.
func withObserver(intercept func(PKCS11) PKCS11, observe Observer) func(PKCS11) PKCS11 {
	if observe == nil {
		return intercept
	}
	return func(p PKCS11) PKCS11 {
		if intercept != nil {
			p = intercept(p)
		}
		return observed{inner: p, observe: observe}
	}
}

// observed reports each call of inner to observe. A method that miekg
// makes as two module calls (a length query, then the call) is reported as
// two calls of half its time each when it succeeds, so the counts are the
// module's calls and the sum of times is exact; when it fails, which of
// the two failed is unknown, and it is reported once.
type observed struct {
	inner   PKCS11
	observe Observer
}

func (o observed) done(name string, start time.Time, err error) {
	o.observe(name, time.Since(start), err)
}

func (o observed) doneTwice(name string, start time.Time, err error) {
	took := time.Since(start)
	if err != nil {
		o.observe(name, took, err)
		return
	}
	o.observe(name, took/2, nil)
	o.observe(name, took-took/2, nil)
}

func (o observed) Initialize() error {
	start := time.Now()
	err := o.inner.Initialize()
	o.done("C_Initialize", start, err)
	return err
}

func (o observed) Finalize() error {
	start := time.Now()
	err := o.inner.Finalize()
	o.done("C_Finalize", start, err)
	return err
}

func (o observed) GetSlotList(tokenPresent bool) ([]uint, error) {
	start := time.Now()
	slots, err := o.inner.GetSlotList(tokenPresent)
	o.doneTwice("C_GetSlotList", start, err)
	return slots, err
}

func (o observed) GetTokenInfo(slot uint) (pkcs11.TokenInfo, error) {
	start := time.Now()
	info, err := o.inner.GetTokenInfo(slot)
	o.done("C_GetTokenInfo", start, err)
	return info, err
}

func (o observed) GetMechanismList(slot uint) ([]*pkcs11.Mechanism, error) {
	start := time.Now()
	mechs, err := o.inner.GetMechanismList(slot)
	o.doneTwice("C_GetMechanismList", start, err)
	return mechs, err
}

func (o observed) OpenSession(slot uint, flags uint) (pkcs11.SessionHandle, error) {
	start := time.Now()
	sh, err := o.inner.OpenSession(slot, flags)
	o.done("C_OpenSession", start, err)
	return sh, err
}

func (o observed) CloseSession(sh pkcs11.SessionHandle) error {
	start := time.Now()
	err := o.inner.CloseSession(sh)
	o.done("C_CloseSession", start, err)
	return err
}

func (o observed) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	start := time.Now()
	info, err := o.inner.GetSessionInfo(sh)
	o.done("C_GetSessionInfo", start, err)
	return info, err
}

func (o observed) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	start := time.Now()
	err := o.inner.Login(sh, userType, pin)
	o.done("C_Login", start, err)
	return err
}

func (o observed) Logout(sh pkcs11.SessionHandle) error {
	start := time.Now()
	err := o.inner.Logout(sh)
	o.done("C_Logout", start, err)
	return err
}

func (o observed) FindObjectsInit(sh pkcs11.SessionHandle, template []*pkcs11.Attribute) error {
	start := time.Now()
	err := o.inner.FindObjectsInit(sh, template)
	o.done("C_FindObjectsInit", start, err)
	return err
}

func (o observed) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	start := time.Now()
	handles, more, err := o.inner.FindObjects(sh, max)
	o.done("C_FindObjects", start, err)
	return handles, more, err
}

func (o observed) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	start := time.Now()
	err := o.inner.FindObjectsFinal(sh)
	o.done("C_FindObjectsFinal", start, err)
	return err
}

func (o observed) GetAttributeValue(sh pkcs11.SessionHandle, obj pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	start := time.Now()
	attrs, err := o.inner.GetAttributeValue(sh, obj, a)
	o.doneTwice("C_GetAttributeValue", start, err)
	return attrs, err
}

func (o observed) SetAttributeValue(sh pkcs11.SessionHandle, obj pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	start := time.Now()
	err := o.inner.SetAttributeValue(sh, obj, a)
	o.done("C_SetAttributeValue", start, err)
	return err
}

func (o observed) CreateObject(sh pkcs11.SessionHandle, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	start := time.Now()
	h, err := o.inner.CreateObject(sh, template)
	o.done("C_CreateObject", start, err)
	return h, err
}

func (o observed) DestroyObject(sh pkcs11.SessionHandle, obj pkcs11.ObjectHandle) error {
	start := time.Now()
	err := o.inner.DestroyObject(sh, obj)
	o.done("C_DestroyObject", start, err)
	return err
}

func (o observed) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	start := time.Now()
	h, err := o.inner.GenerateKey(sh, m, template)
	o.done("C_GenerateKey", start, err)
	return h, err
}

func (o observed) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	start := time.Now()
	pub, priv, err := o.inner.GenerateKeyPair(sh, m, public, private)
	o.done("C_GenerateKeyPair", start, err)
	return pub, priv, err
}

func (o observed) WrapKeyOnce(sh pkcs11.SessionHandle, mech uint, wrapping, key pkcs11.ObjectHandle, outCap int) ([]byte, error) {
	start := time.Now()
	out, err := o.inner.WrapKeyOnce(sh, mech, wrapping, key, outCap)
	o.done("C_WrapKey", start, err)
	return out, err
}

func (o observed) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrappingKey pkcs11.ObjectHandle, wrapped []byte, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	start := time.Now()
	h, err := o.inner.UnwrapKey(sh, m, unwrappingKey, wrapped, template)
	o.done("C_UnwrapKey", start, err)
	return h, err
}

func (o observed) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, obj pkcs11.ObjectHandle) error {
	start := time.Now()
	err := o.inner.EncryptInit(sh, m, obj)
	o.done("C_EncryptInit", start, err)
	return err
}

func (o observed) EncryptOnce(sh pkcs11.SessionHandle, plaintext []byte, outCap int) ([]byte, error) {
	start := time.Now()
	out, err := o.inner.EncryptOnce(sh, plaintext, outCap)
	o.done("C_Encrypt", start, err)
	return out, err
}

func (o observed) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, obj pkcs11.ObjectHandle) error {
	start := time.Now()
	err := o.inner.DecryptInit(sh, m, obj)
	o.done("C_DecryptInit", start, err)
	return err
}

func (o observed) Decrypt(sh pkcs11.SessionHandle, ciphertext []byte) ([]byte, error) {
	start := time.Now()
	out, err := o.inner.Decrypt(sh, ciphertext)
	o.doneTwice("C_Decrypt", start, err)
	return out, err
}

func (o observed) DecryptOnce(sh pkcs11.SessionHandle, ciphertext []byte, outCap int) ([]byte, error) {
	start := time.Now()
	out, err := o.inner.DecryptOnce(sh, ciphertext, outCap)
	o.done("C_Decrypt", start, err)
	return out, err
}

func (o observed) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, obj pkcs11.ObjectHandle) error {
	start := time.Now()
	err := o.inner.SignInit(sh, m, obj)
	o.done("C_SignInit", start, err)
	return err
}

func (o observed) Sign(sh pkcs11.SessionHandle, data []byte) ([]byte, error) {
	start := time.Now()
	out, err := o.inner.Sign(sh, data)
	o.doneTwice("C_Sign", start, err)
	return out, err
}

func (o observed) SignOnce(sh pkcs11.SessionHandle, data []byte, outCap int) ([]byte, error) {
	start := time.Now()
	out, err := o.inner.SignOnce(sh, data, outCap)
	o.done("C_Sign", start, err)
	return out, err
}

func (o observed) VerifyInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, obj pkcs11.ObjectHandle) error {
	start := time.Now()
	err := o.inner.VerifyInit(sh, m, obj)
	o.done("C_VerifyInit", start, err)
	return err
}

func (o observed) Verify(sh pkcs11.SessionHandle, data, signature []byte) error {
	start := time.Now()
	err := o.inner.Verify(sh, data, signature)
	o.done("C_Verify", start, err)
	return err
}

func (o observed) GenerateRandom(sh pkcs11.SessionHandle, n int) ([]byte, error) {
	start := time.Now()
	out, err := o.inner.GenerateRandom(sh, n)
	o.done("C_GenerateRandom", start, err)
	return out, err
}
