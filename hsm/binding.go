package hsm

import (
	"fmt"

	"github.com/miekg/pkcs11"
)

// PKCS11 is the seam between this package and the PKCS#11 binding: every
// call hsm makes, with miekg/pkcs11's types. Production code calls the
// module through miekgBinding; tests put a wrapper in between
// (Config.Intercept) to make a token fail, stall or misbehave in ways a
// software token never does. One interface call costs nothing next to a
// cgo call into the module.
type PKCS11 interface {
	// Initialize calls C_Initialize with the module's parameter string.
	Initialize() error
	Finalize() error

	GetSlotList(tokenPresent bool) ([]uint, error)
	GetTokenInfo(slot uint) (pkcs11.TokenInfo, error)
	GetMechanismList(slot uint) ([]*pkcs11.Mechanism, error)

	OpenSession(slot uint, flags uint) (pkcs11.SessionHandle, error)
	CloseSession(sh pkcs11.SessionHandle) error
	GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error)
	Login(sh pkcs11.SessionHandle, userType uint, pin string) error
	Logout(sh pkcs11.SessionHandle) error

	FindObjectsInit(sh pkcs11.SessionHandle, template []*pkcs11.Attribute) error
	FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error)
	FindObjectsFinal(sh pkcs11.SessionHandle) error
	GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error)
	SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error
	CreateObject(sh pkcs11.SessionHandle, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error
	GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error)
	// WrapKeyOnce calls C_WrapKey once, for a mechanism without
	// parameters, with an output buffer of outCap bytes: NSS answers the
	// size query of miekg's WrapKey too small for AES key wrap.
	WrapKeyOnce(sh pkcs11.SessionHandle, mech uint, wrapping, key pkcs11.ObjectHandle, outCap int) ([]byte, error)
	UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrappingKey pkcs11.ObjectHandle, wrapped []byte, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)

	EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	// EncryptOnce calls C_Encrypt once, with an output buffer of outCap
	// bytes. miekg's Encrypt asks for the size first, which NSS answers
	// too small for AES-GCM and then ends the operation. outCap 0 asks
	// the size alone, answered as a *ResultSizeError.
	EncryptOnce(sh pkcs11.SessionHandle, plaintext []byte, outCap int) ([]byte, error)
	DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	// Decrypt is miekg's: two calls of C_Decrypt, the first for the size.
	Decrypt(sh pkcs11.SessionHandle, ciphertext []byte) ([]byte, error)
	// DecryptOnce calls C_Decrypt once, with an output buffer of outCap
	// bytes: one round trip to a network HSM where Decrypt makes two.
	// outCap 0 asks the size alone, as for EncryptOnce.
	DecryptOnce(sh pkcs11.SessionHandle, ciphertext []byte, outCap int) ([]byte, error)
	SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	// Sign is miekg's: two calls of C_Sign, the first for the size.
	Sign(sh pkcs11.SessionHandle, data []byte) ([]byte, error)
	// SignOnce calls C_Sign once, with an output buffer of outCap bytes,
	// as DecryptOnce does C_Decrypt.
	SignOnce(sh pkcs11.SessionHandle, data []byte, outCap int) ([]byte, error)
	VerifyInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Verify(sh pkcs11.SessionHandle, data, signature []byte) error
	GenerateRandom(sh pkcs11.SessionHandle, n int) ([]byte, error)
}

// ResultSizeError answers a one-call operation's length query (outCap 0):
// the size of the result, which was not produced. The operation is still
// active (PKCS#11 2.40, section 5.2): the same call with a buffer of Size
// bytes finishes it.
type ResultSizeError struct{ Size int }

func (e *ResultSizeError) Error() string {
	return fmt.Sprintf("a length query: the result needs %d bytes", e.Size)
}
