package hsm

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
)

// GenerateRSAKeyPair creates an RSA key pair of bits (2048, 3072 or 4096)
// with public exponent 65537 and returns the public key.
func (c *Client) GenerateRSAKeyPair(ctx context.Context, id []byte, label string, bits int, use Usage) (*rsa.PublicKey, error) {
	if bits != 2048 && bits != 3072 && bits != 4096 {
		return nil, inputErrorf("RSA key size %d; 2048, 3072 or 4096 allowed", bits)
	}
	pubTmpl, privTmpl := keyPairTemplates(pkcs11.CKK_RSA, id, label, use,
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		}, nil)
	pub, err := c.generateKeyPair(ctx, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pubTmpl, privTmpl, readRSAPublic)
	if err != nil {
		return nil, err
	}
	return pub.(*rsa.PublicKey), nil
}

func readRSAPublic(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (crypto.PublicKey, error) {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
	})
	if err != nil {
		return nil, call("C_GetAttributeValue", err)
	}
	e := new(big.Int).SetBytes(attrs[1].Value)
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
		return nil, fmt.Errorf("RSA public exponent out of range")
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: int(e.Int64())}, nil
}

// digestInfoPrefixes are the DER DigestInfo headers CKM_RSA_PKCS signatures
// need in front of the digest (RFC 8017, section 9.2).
var digestInfoPrefixes = map[crypto.Hash][]byte{
	crypto.SHA256:   {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384:   {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512:   {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
	crypto.SHA224:   {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c},
	crypto.SHA3_224: {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x07, 0x05, 0x00, 0x04, 0x1c},
	crypto.SHA3_256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x08, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA3_384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x09, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA3_512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x0a, 0x05, 0x00, 0x04, 0x40},
}

// pssMechanisms maps a hash to its PKCS#11 hash and MGF1 identifiers.
var pssMechanisms = map[crypto.Hash][2]uint{
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512},
	crypto.SHA224: {pkcs11.CKM_SHA224, pkcs11.CKG_MGF1_SHA224},
	// PKCS#11 3.0's SHA-3 hashes and MGFs; tokens without them refuse the
	// parameters, which is answered as the caller's choice to change.
	crypto.SHA3_224: {pkcs11.CKM_SHA3_224, ckgMGF1SHA3_224},
	crypto.SHA3_256: {pkcs11.CKM_SHA3_256, ckgMGF1SHA3_256},
	crypto.SHA3_384: {pkcs11.CKM_SHA3_384, ckgMGF1SHA3_384},
	crypto.SHA3_512: {pkcs11.CKM_SHA3_512, ckgMGF1SHA3_512},
}

const (
	ckgMGF1SHA3_224 = 0x6
	ckgMGF1SHA3_256 = 0x7
	ckgMGF1SHA3_384 = 0x8
	ckgMGF1SHA3_512 = 0x9
)

// SignRSAPKCS1v15 signs digest (of hash) with RSASSA-PKCS1-v1_5 in the HSM
// and verifies the signature with pub before returning it: a faulty
// RSA-CRT signature can leak the private key.
func (c *Client) SignRSAPKCS1v15(ctx context.Context, id []byte, pub *rsa.PublicKey, hash crypto.Hash, digest []byte) ([]byte, error) {
	prefix, ok := digestInfoPrefixes[hash]
	if !ok || len(digest) != hash.Size() {
		return nil, inputErrorf("digest of %d bytes for %v", len(digest), hash)
	}
	sig, err := c.signRaw(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil), append(append([]byte(nil), prefix...), digest...), pub.Size())
	if err != nil {
		return nil, err
	}
	if err := rsa.VerifyPKCS1v15(pub, hash, digest, sig); err != nil {
		return nil, fmt.Errorf("the HSM's PKCS#1 v1.5 signature does not verify; not returned: %w", err)
	}
	return sig, nil
}

// PSSSaltMax is the largest salt RSASSA-PSS allows for a key and hash.
func PSSSaltMax(pub *rsa.PublicKey, hash crypto.Hash) int {
	return (pub.N.BitLen()-1+7)/8 - 2 - hash.Size()
}

// SignRSAPSS signs digest with RSASSA-PSS (MGF1 with the same hash, salt of
// saltLen bytes) in the HSM and verifies the result before returning it.
func (c *Client) SignRSAPSS(ctx context.Context, id []byte, pub *rsa.PublicKey, hash crypto.Hash, digest []byte, saltLen int) ([]byte, error) {
	mechs, ok := pssMechanisms[hash]
	if !ok || len(digest) != hash.Size() {
		return nil, inputErrorf("digest of %d bytes for %v", len(digest), hash)
	}
	if saltLen < 0 || saltLen > PSSSaltMax(pub, hash) {
		return nil, inputErrorf("PSS salt length %d; 0 to %d allowed for this key and hash", saltLen, PSSSaltMax(pub, hash))
	}
	params := pkcs11.NewPSSParams(mechs[0], mechs[1], uint(saltLen))
	sig, err := c.signRaw(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, params), digest, pub.Size())
	if code, ok := pkcs11Code(err); ok && (code == pkcs11.CKR_MECHANISM_PARAM_INVALID || code == pkcs11.CKR_MECHANISM_INVALID || code == pkcs11.CKR_ARGUMENTS_BAD) {
		// The token has no PSS with this hash (SHA-3 on SoftHSM and NSS):
		// the plugin encodes, the token signs raw.
		var em []byte
		if em, err = encodePSS(pub, hash, digest, saltLen); err == nil {
			sig, err = c.signRaw(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil), em, pub.Size())
		}
	}
	if err != nil {
		return nil, err
	}
	if k := pub.Size(); len(sig) < k { // some tokens strip leading zero bytes
		sig = append(make([]byte, k-len(sig)), sig...)
	}
	if err := rsa.VerifyPSS(pub, hash, digest, sig, &rsa.PSSOptions{SaltLength: saltLen, Hash: hash}); err != nil {
		return nil, fmt.Errorf("the HSM's PSS signature does not verify; not returned: %w", err)
	}
	return sig, nil
}

// VerifyRSAInHSM checks an RSA signature inside the HSM (tests compare it
// with the plugin's own verification).
func (c *Client) VerifyRSAInHSM(ctx context.Context, id []byte, pss bool, hash crypto.Hash, digest, sig []byte, saltLen int) (bool, error) {
	if pss {
		mechs := pssMechanisms[hash]
		return c.verifyRaw(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(mechs[0], mechs[1], uint(saltLen))), digest, sig)
	}
	return c.verifyRaw(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil), append(append([]byte(nil), digestInfoPrefixes[hash]...), digest...), sig)
}

// OAEPMode says how RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption
// is done on this token.
type OAEPMode string

const (
	// OAEPInToken: the token's CKM_RSA_PKCS_OAEP takes SHA-256 parameters.
	OAEPInToken OAEPMode = "CKM_RSA_PKCS_OAEP with SHA-256 in the token"
	// OAEPRawUnpad: the token decrypts with CKM_RSA_X_509 and the plugin
	// removes the OAEP padding in constant time (SoftHSM 2.6.1 has OAEP with
	// SHA-1 only).
	OAEPRawUnpad OAEPMode = "CKM_RSA_X_509 in the token, OAEP-SHA-256 padding removed by the plugin"
)

// OAEPMode probes, once per token and process, whether the token does OAEP
// with SHA-256: it makes a session-only RSA key pair, encrypts a known value
// with the public key in Go and asks the token to decrypt it. Only a clear
// answer (the mechanism or its parameters refused, or a wrong result)
// switches the token to raw RSA; a probe that failed for any other reason
// (the HSM was unreachable) is tried again on the next call.
func (c *Client) OAEPMode(ctx context.Context) (OAEPMode, error) {
	q := &c.token.quirks
	q.mu.Lock()
	mode := q.oaep
	q.mu.Unlock()
	if mode != "" {
		return mode, nil
	}
	mode, err := c.probeOAEP(ctx)
	if err != nil {
		return "", fmt.Errorf("probing the token's RSA-OAEP: %w", err)
	}
	q.mu.Lock()
	q.oaep = mode
	q.mu.Unlock()
	c.mod.mu.Lock()
	c.mod.oaepModes[c.token.key] = mode
	c.mod.mu.Unlock()
	return mode, nil
}

// oaepRefused reports the answers by which a token says it has no OAEP
// with these parameters.
func oaepRefused(err error) bool {
	code, ok := pkcs11Code(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_ARGUMENTS_BAD,
		pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_FUNCTION_NOT_SUPPORTED,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_DATA_INVALID:
		return true
	}
	return false
}

func (c *Client) probeOAEP(ctx context.Context) (OAEPMode, error) {
	var mode OAEPMode
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		pubTmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		}
		privTmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		}
		pubH, privH, err := p11.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)}, pubTmpl, privTmpl)
		if err != nil {
			return call("C_GenerateKeyPair (OAEP probe)", err)
		}
		defer func() {
			_ = p11.DestroyObject(sh, privH)
			_ = p11.DestroyObject(sh, pubH)
		}()
		pub, err := readRSAPublic(p11, sh, pubH)
		if err != nil {
			return err
		}
		want := []byte("hsmkms OAEP probe")
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), want, nil)
		if err != nil {
			return err
		}
		params := pkcs11.NewOAEPParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, pkcs11.CKZ_DATA_SPECIFIED, nil)
		if err := p11.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, privH); err != nil {
			if oaepRefused(err) {
				mode = OAEPRawUnpad
				return nil
			}
			return call("C_DecryptInit (OAEP probe)", err)
		}
		got, err := oneCall(func(n int) ([]byte, error) { return p11.DecryptOnce(sh, ct, n) }, len(ct))
		switch {
		case err == nil && string(got) == string(want):
			mode = OAEPInToken
		case err == nil || oaepRefused(err):
			mode = OAEPRawUnpad
		default:
			return call("C_Decrypt (OAEP probe)", err)
		}
		return nil
	})
	return mode, err
}

// DecryptRSAOAEP decrypts RSA-OAEP (SHA-256, MGF1-SHA-256, empty label)
// with the private key id, in the token's OAEP where it has SHA-256,
// otherwise raw in the token with the padding removed here in constant time.
func (c *Client) DecryptRSAOAEP(ctx context.Context, id []byte, pub *rsa.PublicKey, ciphertext []byte) ([]byte, error) {
	k := (pub.N.BitLen() + 7) / 8
	if len(ciphertext) != k {
		return nil, fmt.Errorf("%w: RSA ciphertext is %d bytes; this key's are %d", ErrDecrypt, len(ciphertext), k)
	}
	mode, err := c.OAEPMode(ctx)
	if err != nil {
		return nil, err
	}
	if mode == OAEPInToken {
		params := pkcs11.NewOAEPParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, pkcs11.CKZ_DATA_SPECIFIED, nil)
		return c.decryptRSA(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params), ciphertext)
	}
	em, err := c.decryptRSA(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil), ciphertext)
	if err != nil {
		return nil, err
	}
	if len(em) > k {
		return nil, fmt.Errorf("CKM_RSA_X_509 returned %d bytes for a %d-byte modulus", len(em), k)
	}
	if len(em) < k { // some tokens strip leading zero bytes
		em = append(make([]byte, k-len(em)), em...)
	}
	plaintext, err := UnpadOAEP(sha256.New(), em, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecrypt, err)
	}
	return plaintext, nil
}

// DecryptRSAPKCS1v15 decrypts RSAES-PKCS1-v1_5 in the token.
func (c *Client) DecryptRSAPKCS1v15(ctx context.Context, id []byte, pub *rsa.PublicKey, ciphertext []byte) ([]byte, error) {
	k := (pub.N.BitLen() + 7) / 8
	if len(ciphertext) != k {
		return nil, fmt.Errorf("%w: RSA ciphertext is %d bytes; this key's are %d", ErrDecrypt, len(ciphertext), k)
	}
	return c.decryptRSA(ctx, id, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil), ciphertext)
}

func (c *Client) decryptRSA(ctx context.Context, id []byte, mech *pkcs11.Mechanism, ciphertext []byte) ([]byte, error) {
	var out []byte
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		key, err := c.findObject(p11, sh, id, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		if err := p11.DecryptInit(sh, []*pkcs11.Mechanism{mech}, key); err != nil {
			return call("C_DecryptInit", err)
		}
		// The ciphertext is the modulus's size (the callers checked),
		// which bounds what RSA decrypts to.
		plain, err := oneCall(func(n int) ([]byte, error) { return p11.DecryptOnce(sh, ciphertext, n) }, len(ciphertext))
		if err != nil {
			if classify(err) == classCaller || c.authFailureAsGeneralError(p11, sh, err) {
				return fmt.Errorf("%w: %w", ErrDecrypt, err)
			}
			return call("C_Decrypt", err)
		}
		out = plain
		return nil
	})
	return out, err
}

var errOAEP = errors.New("OAEP padding check failed")
