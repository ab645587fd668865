package loadbench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// RawToken says which token the raw scenarios use.
type RawToken struct {
	Library  string // the PKCS#11 module
	InitArgs string // C_Initialize's parameter string (NSS softokn); "" for none
	Label    string
	PIN      string
}

// RawHSM drives the token directly through the binding the plugin uses
// (hsm.OpenBinding: miekg/pkcs11 plus one-call C_Encrypt, C_Decrypt and
// C_Sign), with no pool, no plugin logic and no Vault in between: the
// figure the plugin's are divided by. Each worker has a session of its own.
type RawHSM struct {
	p11      hsm.PKCS11
	unload   func()
	slot     uint
	login    pkcs11.SessionHandle
	sessions []pkcs11.SessionHandle
	aes      pkcs11.ObjectHandle
	rsa      pkcs11.ObjectHandle
	ec       pkcs11.ObjectHandle
	// sealed is 64 bytes encrypted under aes with iv, for the decryptions.
	iv, sealed []byte
	objects    []pkcs11.ObjectHandle
	loggedIn   bool // login is an open session
	closed     bool
}

// OpenRawHSM loads the module (which must not be loaded in this process
// already), logs in, opens sessions sessions and makes keys (AES-256,
// RSA-2048, EC P-256) that Close destroys. With tokenObjects the keys are
// private, sensitive token objects, as the plugin's are; some tokens
// (SoftHSM's file store among them) are slower with those than with session
// objects. wrap, if not nil, puts something between the binding and every
// call made after C_Initialize: the bench's simulated network HSM, the
// same one the plugin's calls go through.
func OpenRawHSM(tok RawToken, sessions int, tokenObjects bool, wrap func(hsm.PKCS11) hsm.PKCS11) (*RawHSM, error) {
	p11, unload, err := hsm.OpenBinding(tok.Library, tok.InitArgs)
	if err != nil {
		return nil, err
	}
	if wrap != nil {
		p11 = wrap(p11)
	}
	r := &RawHSM{p11: p11, unload: unload}
	if err := r.open(tok, sessions, tokenObjects); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *RawHSM) open(tok RawToken, sessions int, tokenObjects bool) error {
	slots, err := r.p11.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("C_GetSlotList: %w", err)
	}
	found := false
	for _, s := range slots {
		if info, err := r.p11.GetTokenInfo(s); err == nil && strings.TrimRight(info.Label, " \x00") == tok.Label {
			r.slot, found = s, true
		}
	}
	if !found {
		return fmt.Errorf("no token %q", tok.Label)
	}
	sh, err := r.p11.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("C_OpenSession: %w", err)
	}
	r.login, r.loggedIn = sh, true
	if err := r.p11.Login(r.login, pkcs11.CKU_USER, tok.PIN); err != nil {
		return fmt.Errorf("C_Login: %w", err)
	}
	for i := 0; i < sessions; i++ {
		sh, err := r.p11.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return fmt.Errorf("C_OpenSession: %w", err)
		}
		r.sessions = append(r.sessions, sh)
	}
	return r.makeKeys(tokenObjects)
}

func (r *RawHSM) makeKeys(tokenObjects bool) error {
	session := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, tokenObjects),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "hsmkms-bench-raw"),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
	}
	var err error
	r.aes, err = r.p11.GenerateKey(r.login, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
	}, session...))
	if err != nil {
		return fmt.Errorf("AES key: %w", err)
	}
	r.objects = append(r.objects, r.aes)
	if err := r.sealForDecrypt(); err != nil {
		return err
	}
	pub, priv, err := r.p11.GenerateKeyPair(r.login, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, tokenObjects), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1})},
		append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)}, session...))
	if err != nil {
		return fmt.Errorf("RSA key: %w", err)
	}
	r.rsa = priv
	r.objects = append(r.objects, pub, priv)
	params, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	pub, priv, err = r.p11.GenerateKeyPair(r.login, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, tokenObjects), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params)},
		append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)}, session...))
	if err != nil {
		return fmt.Errorf("EC key: %w", err)
	}
	r.ec = priv
	r.objects = append(r.objects, pub, priv)
	return nil
}

// Close destroys the keys, closes the sessions and finalises and unloads
// the module. Calls after the first do nothing.
func (r *RawHSM) Close() {
	if r.closed {
		return
	}
	r.closed = true
	for _, o := range r.objects {
		_ = r.p11.DestroyObject(r.login, o)
	}
	for _, sh := range r.sessions {
		_ = r.p11.CloseSession(sh)
	}
	if r.loggedIn {
		_ = r.p11.Logout(r.login)
		_ = r.p11.CloseSession(r.login)
	}
	r.unload()
}

var sha256DigestInfo = []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}

var gcmAAD = []byte("hsmkms-bench")

// EncryptAESGCM64 encrypts 64 bytes with a fresh 96-bit IV on worker's
// session: C_EncryptInit, then one C_Encrypt with room for the tag (and for
// an IV a token appends), as the plugin calls it.
func (r *RawHSM) EncryptAESGCM64(_ context.Context, worker int) error {
	iv := make([]byte, hsm.GCMIVLen)
	if _, err := rand.Read(iv); err != nil {
		return err
	}
	_, err := r.seal(r.sessions[worker], iv)
	return err
}

func (r *RawHSM) seal(sh pkcs11.SessionHandle, iv []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(iv, gcmAAD, hsm.GCMTagLen*8)
	defer params.Free()
	if err := r.p11.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, r.aes); err != nil {
		return nil, fmt.Errorf("C_EncryptInit: %w", err)
	}
	out, err := r.p11.EncryptOnce(sh, make([]byte, 64), 64+hsm.GCMTagLen+hsm.GCMIVLen)
	if err != nil {
		return nil, fmt.Errorf("C_Encrypt: %w", err)
	}
	if len(out) < 64+hsm.GCMTagLen {
		return nil, fmt.Errorf("C_Encrypt returned %d bytes for 64", len(out))
	}
	return out, nil
}

// sealForDecrypt makes the ciphertext the decryptions open. The tokens the
// bench runs on use the caller's IV, so the output is ciphertext and tag.
func (r *RawHSM) sealForDecrypt() error {
	iv := make([]byte, hsm.GCMIVLen)
	if _, err := rand.Read(iv); err != nil {
		return err
	}
	sealed, err := r.seal(r.login, iv)
	if err != nil {
		return err
	}
	if len(sealed) != 64+hsm.GCMTagLen {
		return fmt.Errorf("C_Encrypt returned %d bytes for 64 with a caller's IV", len(sealed))
	}
	r.iv, r.sealed = iv, sealed
	return nil
}

// DecryptAESGCM64 opens 64 bytes sealed with AES-GCM: C_DecryptInit, then
// one C_Decrypt with a buffer the size of the input, as the plugin calls
// it.
func (r *RawHSM) DecryptAESGCM64(_ context.Context, worker int) error {
	sh := r.sessions[worker]
	params := pkcs11.NewGCMParams(r.iv, gcmAAD, hsm.GCMTagLen*8)
	defer params.Free()
	if err := r.p11.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, r.aes); err != nil {
		return fmt.Errorf("C_DecryptInit: %w", err)
	}
	out, err := r.p11.DecryptOnce(sh, r.sealed, len(r.sealed))
	if err != nil {
		return fmt.Errorf("C_Decrypt: %w", err)
	}
	if len(out) != 64 {
		return fmt.Errorf("C_Decrypt returned %d bytes for 64", len(out))
	}
	return nil
}

// SignRSA2048 signs a SHA-256 digest with PKCS#1 v1.5: C_SignInit, then one
// C_Sign with a buffer the size of the modulus, as the plugin calls it.
func (r *RawHSM) SignRSA2048(_ context.Context, worker int) error {
	digest := sha256.Sum256([]byte("hsmkms bench input"))
	return r.sign(r.sessions[worker], pkcs11.CKM_RSA_PKCS, r.rsa, append(append([]byte(nil), sha256DigestInfo...), digest[:]...), 2048/8)
}

// SignECDSAP256 signs a SHA-256 digest with ECDSA: one C_Sign with room
// for r and s.
func (r *RawHSM) SignECDSAP256(_ context.Context, worker int) error {
	digest := sha256.Sum256([]byte("hsmkms bench input"))
	return r.sign(r.sessions[worker], pkcs11.CKM_ECDSA, r.ec, digest[:], 2*32)
}

func (r *RawHSM) sign(sh pkcs11.SessionHandle, mech uint, key pkcs11.ObjectHandle, data []byte, sigSize int) error {
	if err := r.p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, key); err != nil {
		return fmt.Errorf("C_SignInit: %w", err)
	}
	sig, err := r.p11.SignOnce(sh, data, sigSize)
	if err != nil {
		return fmt.Errorf("C_Sign: %w", err)
	}
	if len(sig) != sigSize {
		return fmt.Errorf("C_Sign returned %d bytes, want %d", len(sig), sigSize)
	}
	return nil
}
