package netsim

import (
	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// token is one view of a module behind the network. Methods of miekg's
// binding that make two PKCS#11 calls (a size query, then the call) pay
// the delay twice, as they would over a network.
type token struct {
	inner hsm.PKCS11
	net   *Network
}

// one wraps a method that makes one PKCS#11 call.
func (t *token) one(name string, f func() error) error {
	start := t.net.enter(name)
	defer t.net.leave(start)
	return f()
}

// two wraps a method that makes a second call when the first succeeds.
func (t *token) two(name string, f func() error) error {
	start := t.net.enter(name)
	defer t.net.leave(start)
	err := f()
	if err == nil {
		t.net.again(name)
	}
	return err
}

func (t *token) Initialize() error { return t.one("C_Initialize", t.inner.Initialize) }
func (t *token) Finalize() error   { return t.one("C_Finalize", t.inner.Finalize) }

func (t *token) GetSlotList(present bool) (slots []uint, err error) {
	err = t.two("C_GetSlotList", func() error { slots, err = t.inner.GetSlotList(present); return err })
	return slots, err
}

func (t *token) GetTokenInfo(slot uint) (info pkcs11.TokenInfo, err error) {
	err = t.one("C_GetTokenInfo", func() error { info, err = t.inner.GetTokenInfo(slot); return err })
	return info, err
}

func (t *token) GetMechanismList(slot uint) (mechs []*pkcs11.Mechanism, err error) {
	err = t.two("C_GetMechanismList", func() error { mechs, err = t.inner.GetMechanismList(slot); return err })
	return mechs, err
}

func (t *token) OpenSession(slot, flags uint) (sh pkcs11.SessionHandle, err error) {
	err = t.one("C_OpenSession", func() error { sh, err = t.inner.OpenSession(slot, flags); return err })
	return sh, err
}

func (t *token) CloseSession(sh pkcs11.SessionHandle) error {
	return t.one("C_CloseSession", func() error { return t.inner.CloseSession(sh) })
}

func (t *token) GetSessionInfo(sh pkcs11.SessionHandle) (info pkcs11.SessionInfo, err error) {
	err = t.one("C_GetSessionInfo", func() error { info, err = t.inner.GetSessionInfo(sh); return err })
	return info, err
}

func (t *token) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	return t.one("C_Login", func() error { return t.inner.Login(sh, userType, pin) })
}

func (t *token) Logout(sh pkcs11.SessionHandle) error {
	return t.one("C_Logout", func() error { return t.inner.Logout(sh) })
}

func (t *token) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	return t.one("C_FindObjectsInit", func() error { return t.inner.FindObjectsInit(sh, temp) })
}

func (t *token) FindObjects(sh pkcs11.SessionHandle, max int) (handles []pkcs11.ObjectHandle, more bool, err error) {
	err = t.one("C_FindObjects", func() error { handles, more, err = t.inner.FindObjects(sh, max); return err })
	return handles, more, err
}

func (t *token) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	return t.one("C_FindObjectsFinal", func() error { return t.inner.FindObjectsFinal(sh) })
}

func (t *token) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) (attrs []*pkcs11.Attribute, err error) {
	err = t.two("C_GetAttributeValue", func() error { attrs, err = t.inner.GetAttributeValue(sh, o, a); return err })
	return attrs, err
}

func (t *token) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	return t.one("C_SetAttributeValue", func() error { return t.inner.SetAttributeValue(sh, o, a) })
}

func (t *token) CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (o pkcs11.ObjectHandle, err error) {
	err = t.one("C_CreateObject", func() error { o, err = t.inner.CreateObject(sh, temp); return err })
	return o, err
}

func (t *token) DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	return t.one("C_DestroyObject", func() error { return t.inner.DestroyObject(sh, o) })
}

func (t *token) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (o pkcs11.ObjectHandle, err error) {
	err = t.one("C_GenerateKey", func() error { o, err = t.inner.GenerateKey(sh, m, temp); return err })
	return o, err
}

func (t *token) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (pubH, privH pkcs11.ObjectHandle, err error) {
	err = t.one("C_GenerateKeyPair", func() error { pubH, privH, err = t.inner.GenerateKeyPair(sh, m, pub, priv); return err })
	return pubH, privH, err
}

func (t *token) WrapKeyOnce(sh pkcs11.SessionHandle, mech uint, wrapping, key pkcs11.ObjectHandle, outCap int) (out []byte, err error) {
	err = t.one("C_WrapKey", func() error { out, err = t.inner.WrapKeyOnce(sh, mech, wrapping, key, outCap); return err })
	return out, err
}

func (t *token) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, key pkcs11.ObjectHandle, wrapped []byte, temp []*pkcs11.Attribute) (o pkcs11.ObjectHandle, err error) {
	err = t.one("C_UnwrapKey", func() error { o, err = t.inner.UnwrapKey(sh, m, key, wrapped, temp); return err })
	return o, err
}

func (t *token) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	return t.one("C_EncryptInit", func() error { return t.inner.EncryptInit(sh, m, o) })
}

func (t *token) EncryptOnce(sh pkcs11.SessionHandle, plaintext []byte, outCap int) (out []byte, err error) {
	err = t.one("C_Encrypt", func() error { out, err = t.inner.EncryptOnce(sh, plaintext, outCap); return err })
	return out, err
}

func (t *token) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	return t.one("C_DecryptInit", func() error { return t.inner.DecryptInit(sh, m, o) })
}

func (t *token) Decrypt(sh pkcs11.SessionHandle, ct []byte) (out []byte, err error) {
	err = t.two("C_Decrypt", func() error { out, err = t.inner.Decrypt(sh, ct); return err })
	return out, err
}

func (t *token) DecryptOnce(sh pkcs11.SessionHandle, ct []byte, outCap int) (out []byte, err error) {
	err = t.one("C_Decrypt", func() error { out, err = t.inner.DecryptOnce(sh, ct, outCap); return err })
	return out, err
}

func (t *token) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	return t.one("C_SignInit", func() error { return t.inner.SignInit(sh, m, o) })
}

func (t *token) Sign(sh pkcs11.SessionHandle, data []byte) (sig []byte, err error) {
	err = t.two("C_Sign", func() error { sig, err = t.inner.Sign(sh, data); return err })
	return sig, err
}

func (t *token) SignOnce(sh pkcs11.SessionHandle, data []byte, outCap int) (sig []byte, err error) {
	err = t.one("C_Sign", func() error { sig, err = t.inner.SignOnce(sh, data, outCap); return err })
	return sig, err
}

func (t *token) VerifyInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	return t.one("C_VerifyInit", func() error { return t.inner.VerifyInit(sh, m, o) })
}

func (t *token) Verify(sh pkcs11.SessionHandle, data, sig []byte) error {
	return t.one("C_Verify", func() error { return t.inner.Verify(sh, data, sig) })
}

func (t *token) GenerateRandom(sh pkcs11.SessionHandle, n int) (out []byte, err error) {
	err = t.one("C_GenerateRandom", func() error { out, err = t.inner.GenerateRandom(sh, n); return err })
	return out, err
}
