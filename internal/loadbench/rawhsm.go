package loadbench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// RawHSM drives the token directly through miekg/pkcs11, with no plugin and
// no Vault in between: the figure the plugin's are divided by.
type RawHSM struct {
	p11      *pkcs11.Ctx
	slot     uint
	login    pkcs11.SessionHandle
	sessions []pkcs11.SessionHandle
	aes      pkcs11.ObjectHandle
	rsa      pkcs11.ObjectHandle
	ec       pkcs11.ObjectHandle
	objects  []pkcs11.ObjectHandle
}

// OpenRawHSM loads the module, logs in, opens sessions sessions and makes
// keys (AES-256, RSA-2048, EC P-256) that Close destroys. With tokenObjects
// the keys are private, sensitive token objects, as the plugin's are; some
// tokens (SoftHSM's file store among them) are slower with those than with
// session objects.
func OpenRawHSM(library, tokenLabel, pin string, sessions int, tokenObjects bool) (*RawHSM, error) {
	p11 := pkcs11.New(library)
	if p11 == nil {
		return nil, fmt.Errorf("loading %s", library)
	}
	if err := p11.Initialize(); err != nil {
		return nil, fmt.Errorf("C_Initialize: %w", err)
	}
	r := &RawHSM{p11: p11}
	slots, err := p11.GetSlotList(true)
	if err != nil {
		return nil, err
	}
	found := false
	for _, s := range slots {
		if info, err := p11.GetTokenInfo(s); err == nil && strings.TrimRight(info.Label, " \x00") == tokenLabel {
			r.slot, found = s, true
		}
	}
	if !found {
		return nil, fmt.Errorf("no token %q", tokenLabel)
	}
	if r.login, err = p11.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
		return nil, err
	}
	if err := p11.Login(r.login, pkcs11.CKU_USER, pin); err != nil {
		return nil, fmt.Errorf("C_Login: %w", err)
	}
	for i := 0; i < sessions; i++ {
		sh, err := p11.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return nil, err
		}
		r.sessions = append(r.sessions, sh)
	}
	if err := r.makeKeys(tokenObjects); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
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
	}, session...))
	if err != nil {
		return fmt.Errorf("AES key: %w", err)
	}
	r.objects = append(r.objects, r.aes)
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

// Close destroys the keys, closes the sessions and finalises the module.
func (r *RawHSM) Close() {
	for _, o := range r.objects {
		_ = r.p11.DestroyObject(r.login, o)
	}
	for _, sh := range r.sessions {
		_ = r.p11.CloseSession(sh)
	}
	_ = r.p11.Logout(r.login)
	_ = r.p11.CloseSession(r.login)
	_ = r.p11.Finalize()
	r.p11.Destroy()
}

var sha256DigestInfo = []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}

// EncryptAESGCM64 encrypts 64 bytes with a fresh 96-bit IV on worker's session.
func (r *RawHSM) EncryptAESGCM64(_ context.Context, worker int) error {
	sh := r.sessions[worker]
	iv := make([]byte, 12)
	if _, err := rand.Read(iv); err != nil {
		return err
	}
	params := pkcs11.NewGCMParams(iv, []byte("hsmkms-bench"), 128)
	defer params.Free()
	if err := r.p11.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, r.aes); err != nil {
		return err
	}
	_, err := r.p11.Encrypt(sh, make([]byte, 64))
	return err
}

// SignRSA2048 signs a SHA-256 digest with PKCS#1 v1.5.
func (r *RawHSM) SignRSA2048(_ context.Context, worker int) error {
	digest := sha256.Sum256([]byte("hsmkms bench input"))
	sh := r.sessions[worker]
	if err := r.p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, r.rsa); err != nil {
		return err
	}
	_, err := r.p11.Sign(sh, append(append([]byte(nil), sha256DigestInfo...), digest[:]...))
	return err
}

// SignECDSAP256 signs a SHA-256 digest with ECDSA.
func (r *RawHSM) SignECDSAP256(_ context.Context, worker int) error {
	digest := sha256.Sum256([]byte("hsmkms bench input"))
	sh := r.sessions[worker]
	if err := r.p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, r.ec); err != nil {
		return err
	}
	_, err := r.p11.Sign(sh, digest[:])
	return err
}
