package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
	"github.com/tink-crypto/tink-go/v2/kwp/subtle"
)

// ImportKind is what kind of key an import puts on the token.
type ImportKind int

const (
	ImportAES ImportKind = iota + 1
	ImportHMAC
	ImportRSA
	ImportEC
)

// ImportSpec describes the token object an import makes: the same template
// as a generated key of that kind.
type ImportSpec struct {
	Kind ImportKind
	// Bits is the AES key size, or the RSA modulus size; 0 for HMAC (any
	// length from MinHMACImportBytes to MaxHMACImportBytes) and EC.
	Bits  int
	Curve string // EC: P-256, P-384 or P-521
	ID    []byte
	Label string
	Use   Usage
	// Public is the public key of a private key when the caller knows it
	// (a JWK); the token's key is checked against it.
	Public crypto.PublicKey
}

// Sizes of the HMAC keys an import accepts.
const (
	MinHMACImportBytes = 16
	MaxHMACImportBytes = 512
)

// Imported is what the token says about a key it just took in.
type Imported struct {
	// Public is the public key of a private key, nil for a secret key.
	Public crypto.PublicKey
	// ValueLen is a secret key's length in bytes.
	ValueLen int
}

// WrappingKey names the RSA key pair that BYOK ciphertexts are made for.
type WrappingKey struct {
	ID     []byte
	Public *rsa.PublicKey
}

// WrappingKeyBits is the size of the wrapping key, as in Transit: a BYOK
// ciphertext starts with 512 bytes of RSA-OAEP.
const WrappingKeyBits = 4096

// GenerateWrappingKey makes the RSA-4096 pair that BYOK imports are wrapped
// for. Its private half may only decrypt (raw RSA, where the token has no
// OAEP with the caller's hash) and unwrap.
func (c *Client) GenerateWrappingKey(ctx context.Context, id []byte, label string) (*rsa.PublicKey, error) {
	pubTmpl, privTmpl := keyPairTemplates(pkcs11.CKK_RSA, id, label, Usage{Decrypt: true},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, WrappingKeyBits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		}, nil)
	pubTmpl = setAttribute(pubTmpl, pkcs11.CKA_WRAP, true)
	privTmpl = setAttribute(privTmpl, pkcs11.CKA_UNWRAP, true)
	pub, err := c.generateKeyPair(ctx, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pubTmpl, privTmpl, readRSAPublic)
	if err != nil {
		return nil, err
	}
	return pub.(*rsa.PublicKey), nil
}

// setAttribute replaces the value of typ in template.
func setAttribute(template []*pkcs11.Attribute, typ uint, value interface{}) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, 0, len(template))
	for _, a := range template {
		if a.Type != typ {
			out = append(out, a)
		}
	}
	return append(out, pkcs11.NewAttribute(typ, value))
}

func withoutAttribute(template []*pkcs11.Attribute, typ uint) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, 0, len(template))
	for _, a := range template {
		if a.Type != typ {
			out = append(out, a)
		}
	}
	return out
}

// oaepHashes are the hashes Transit's BYOK takes for the ephemeral key.
var oaepHashes = map[crypto.Hash][2]uint{
	crypto.SHA1:   {pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1},
	crypto.SHA224: {pkcs11.CKM_SHA224, pkcs11.CKG_MGF1_SHA224},
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512},
}

// ErrNotUnwrapped: a BYOK ciphertext did not open under the wrapping key.
// It does not say whether the RSA part, the hash or the key wrap was wrong.
var ErrNotUnwrapped = errors.New("could not be unwrapped with this mount's wrapping key: it was made for another wrapping key, with another hash_function, or altered")

// ImportWrapped takes in a key in Transit's BYOK form: RSA-OAEP(hash) of an
// ephemeral AES-256 key under the wrapping key, then the key under the
// ephemeral key with RFC 5649 key wrap. Both are opened inside the token
// where its mechanisms allow; where the token has no OAEP with that hash,
// the ephemeral key is decrypted raw, its padding removed here in constant
// time, and it lives as a session object only until the key is unwrapped.
func (c *Client) ImportWrapped(ctx context.Context, wk WrappingKey, ciphertext []byte, hash crypto.Hash, spec ImportSpec) (Imported, error) {
	params, ok := oaepHashes[hash]
	if !ok {
		return Imported{}, inputErrorf("no RSA-OAEP with %v", hash)
	}
	k := (wk.Public.N.BitLen() + 7) / 8
	if len(ciphertext) <= k {
		return Imported{}, inputErrorf("ciphertext is %d bytes; it must be longer than the %d bytes of RSA-OAEP under the wrapping key", len(ciphertext), k)
	}
	wrappedEphemeral, wrappedKey := ciphertext[:k], ciphertext[k:]
	if len(wrappedKey) < 16 || len(wrappedKey)%8 != 0 {
		return Imported{}, inputErrorf("ciphertext's key-wrap part is %d bytes; RFC 5649 output is a multiple of 8, at least 16", len(wrappedKey))
	}
	// RFC 5649 adds 8 bytes to a key whose length is a multiple of 8: an
	// AES key of another size is refused before the token sees it, since
	// not every token records an unwrapped key's length (SoftHSM) and some
	// cut the key to the template's length (NSS).
	if spec.Kind == ImportAES && len(wrappedKey) != spec.Bits/8+8 {
		return Imported{}, inputErrorf("the key in it is not %d bytes, as an AES-%d key is (its key wrap is %d bytes, not %d)", spec.Bits/8, spec.Bits, len(wrappedKey), spec.Bits/8+8)
	}
	if new(big.Int).SetBytes(wrappedEphemeral).Cmp(wk.Public.N) >= 0 {
		return Imported{}, ErrNotUnwrapped // larger than this modulus: made for another key
	}
	mode, err := c.OAEPMode(ctx)
	if err != nil {
		return Imported{}, err
	}
	var out Imported
	err = c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		kwp, err := c.kwpMechanism(p11, sh)
		if err != nil {
			return err
		}
		priv, err := c.findObject(p11, sh, wk.ID, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		var ephemeral pkcs11.ObjectHandle
		inToken := false
		if mode == OAEPInToken {
			oaep := pkcs11.NewOAEPParams(params[0], params[1], pkcs11.CKZ_DATA_SPECIFIED, nil)
			ephemeral, err = p11.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, oaep)}, priv, wrappedEphemeral, ephemeralTemplate(nil))
			switch {
			case err == nil:
				inToken = true
			case oaepMechanismRefused(err):
				// no OAEP with this hash here: fall back to raw RSA
			case unwrapRefused(err) || classify(err) == classCaller || c.generalErrorIsCallers(p11, sh, err):
				return ErrNotUnwrapped
			default:
				return call("C_UnwrapKey (RSA-OAEP)", err)
			}
		}
		if !inToken {
			ephemeral, err = rawOAEPEphemeral(p11, sh, priv, wrappedEphemeral, hash, k)
			if err != nil {
				return err
			}
		}
		defer func() { _ = p11.DestroyObject(sh, ephemeral) }()
		if n, err := secretLength(p11, sh, ephemeral); err != nil {
			return err
		} else if n != 32 {
			return inputErrorf("the ephemeral key is %d bytes; Transit's BYOK uses a 32-byte AES key", n)
		}
		out, err = c.unwrapInto(p11, sh, kwp, ephemeral, wrappedKey, spec)
		return err
	})
	return out, err
}

// oaepMechanismRefused is oaepRefused without the answers that mean the
// data, not the mechanism, was wrong.
func oaepMechanismRefused(err error) bool {
	code, ok := pkcs11Code(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_ARGUMENTS_BAD,
		pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_FUNCTION_NOT_SUPPORTED:
		return true
	}
	return false
}

// rawOAEPEphemeral decrypts the ephemeral key with raw RSA, removes its OAEP
// padding in constant time and makes it a session key that can only unwrap.
func rawOAEPEphemeral(p11 PKCS11, sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, wrapped []byte, hash crypto.Hash, k int) (pkcs11.ObjectHandle, error) {
	if err := p11.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil)}, priv); err != nil {
		return 0, call("C_DecryptInit (RSA raw)", err)
	}
	em, err := oneCall(func(n int) ([]byte, error) { return p11.DecryptOnce(sh, wrapped, n) }, k)
	if err != nil {
		if classify(err) == classCaller || unwrapRefused(err) {
			return 0, ErrNotUnwrapped
		}
		return 0, call("C_Decrypt (RSA raw)", err)
	}
	defer clear(em)
	if len(em) > k {
		return 0, fmt.Errorf("CKM_RSA_X_509 returned %d bytes for a %d-byte modulus", len(em), k)
	}
	if len(em) < k {
		em = append(make([]byte, k-len(em)), em...)
	}
	key, err := UnpadOAEP(hash.New(), em, nil)
	if err != nil {
		return 0, ErrNotUnwrapped
	}
	defer clear(key)
	h, err := p11.CreateObject(sh, ephemeralTemplate(key))
	if err != nil {
		if classify(err) == classCaller {
			return 0, inputErrorf("the ephemeral key is %d bytes; Transit's BYOK uses a 32-byte AES key", len(key))
		}
		return 0, call("C_CreateObject (ephemeral key)", err)
	}
	return h, nil
}

// ephemeralTemplate is a session AES key that can only unwrap; value is
// given when the key is created from known bytes.
func ephemeralTemplate(value []byte) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
	}
	if value != nil {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_VALUE, value))
	}
	return t
}

func secretLength(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (int, error) {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil)})
	if err != nil {
		return 0, call("C_GetAttributeValue (CKA_VALUE_LEN)", err)
	}
	return int(bytesToUint(attrs[0].Value)), nil
}

// ImportMaterial takes in key material the plugin holds (a JWK the caller
// sent): raw bytes for AES and HMAC keys, PKCS#8 DER for RSA and EC. It is
// wrapped here under a one-time session key and unwrapped in the token, so
// that it reaches the token by the one path BYOK takes too.
func (c *Client) ImportMaterial(ctx context.Context, material []byte, spec ImportSpec) (Imported, error) {
	oneTime := make([]byte, 32)
	if _, err := rand.Read(oneTime); err != nil {
		return Imported{}, fmt.Errorf("drawing a one-time key: %w", err)
	}
	defer clear(oneTime)
	kw, err := subtle.NewKWP(oneTime)
	if err != nil {
		return Imported{}, fmt.Errorf("one-time key wrap: %w", err)
	}
	wrapped, err := kw.Wrap(material)
	if err != nil {
		return Imported{}, inputErrorf("key material of %d bytes cannot be wrapped", len(material))
	}
	var out Imported
	err = c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		kwp, err := c.kwpMechanism(p11, sh)
		if err != nil {
			return err
		}
		ephemeral, err := p11.CreateObject(sh, ephemeralTemplate(oneTime))
		if err != nil {
			return call("C_CreateObject (one-time key)", err)
		}
		defer func() { _ = p11.DestroyObject(sh, ephemeral) }()
		out, err = c.unwrapInto(p11, sh, kwp, ephemeral, wrapped, spec)
		return err
	})
	return out, err
}

// unwrapInto unwraps a key under ephemeral into a token object with the
// template of a generated key of spec's kind, then checks that what arrived
// is what spec says; a key that is not is destroyed again.
func (c *Client) unwrapInto(p11 PKCS11, sh pkcs11.SessionHandle, kwp uint, ephemeral pkcs11.ObjectHandle, wrapped []byte, spec ImportSpec) (Imported, error) {
	template, err := importTemplate(spec)
	if err != nil {
		return Imported{}, err
	}
	if spec.Kind == ImportEC && c.token.quirks.has("ec_unwrap_needs_public_value") {
		template = append(template, pkcs11.NewAttribute(ckaNSSDB, nssPublicValue(spec)))
	}
	c.token.createMu.Lock()
	// A retried attempt must not leave a second object with this CKA_ID.
	if err := destroyByID(p11, sh, spec.ID); err != nil {
		c.token.createMu.Unlock()
		return Imported{}, err
	}
	h, err := c.unwrapObject(p11, sh, kwp, ephemeral, wrapped, template)
	c.token.createMu.Unlock()
	if err != nil {
		if unwrapRefused(err) || c.generalErrorIsCallers(p11, sh, err) || c.functionFailedIsCallers(p11, sh, err) {
			return Imported{}, fmt.Errorf("%w (%w)", ErrNotUnwrapped, err)
		}
		return Imported{}, err
	}
	out, err := c.checkImported(p11, sh, h, spec)
	if err != nil {
		_ = p11.DestroyObject(sh, h)
		return Imported{}, err
	}
	return out, nil
}

// unwrapRefused: answers by which a token says the wrapped bytes, not the
// token, were wrong.
func unwrapRefused(err error) bool {
	code, ok := pkcs11Code(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_TEMPLATE_INCONSISTENT, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID,
		pkcs11.CKR_DOMAIN_PARAMS_INVALID, pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_TEMPLATE_INCOMPLETE, pkcs11.CKR_CURVE_NOT_SUPPORTED:
		return true
	}
	return false
}

// generalErrorIsCallers: SoftHSM answers a key wrap or tag that does not
// verify with CKR_GENERAL_ERROR; on that token, with the session still
// answering, it is the caller's data.
func (c *Client) generalErrorIsCallers(p11 PKCS11, sh pkcs11.SessionHandle, err error) bool {
	return c.authFailureAsGeneralError(p11, sh, err)
}

// functionFailedIsCallers: SoftHSM answers wrapped bytes that do not parse
// as the key type asked for (AES bytes as an RSA key) with
// CKR_FUNCTION_FAILED; on that token, with the session still answering,
// it is the caller's input.
func (c *Client) functionFailedIsCallers(p11 PKCS11, sh pkcs11.SessionHandle, err error) bool {
	code, ok := pkcs11Code(err)
	if !ok || code != pkcs11.CKR_FUNCTION_FAILED || !c.token.quirks.has("unwrap_parse_failure_function_failed") {
		return false
	}
	_, infoErr := p11.GetSessionInfo(sh)
	return infoErr == nil
}

// tryAESGCM encrypts one block with an imported AES key: a key the token
// cannot use for AES-GCM is refused at import, not at its first use.
func (c *Client) tryAESGCM(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, bits int) error {
	_, err := c.sealGCM(p11, sh, h, make([]byte, 16), []byte("hsmkms: import check"))
	if err == nil {
		return nil
	}
	code, ok := pkcs11Code(err)
	if ok && (classify(err) == classCaller || code == pkcs11.CKR_MECHANISM_INVALID || code == pkcs11.CKR_KEY_SIZE_RANGE ||
		code == pkcs11.CKR_KEY_TYPE_INCONSISTENT || code == pkcs11.CKR_FUNCTION_FAILED) {
		return inputErrorf("the token cannot use the key for AES-GCM; it is not an AES-%d key", bits)
	}
	return err
}

// importTemplate is the template of a generated key of spec's kind. It
// names CKA_VALUE_LEN where the length is known: SoftHSM leaves it 0
// otherwise.
func importTemplate(spec ImportSpec) ([]*pkcs11.Attribute, error) {
	if len(spec.ID) == 0 {
		return nil, inputErrorf("empty object id")
	}
	switch spec.Kind {
	case ImportAES:
		return secretKeyTemplate(pkcs11.CKK_AES, spec.Bits/8, spec.ID, spec.Label, spec.Use), nil
	case ImportHMAC:
		t := secretKeyTemplate(pkcs11.CKK_GENERIC_SECRET, spec.Bits/8, spec.ID, spec.Label, spec.Use)
		if spec.Bits == 0 {
			t = withoutAttribute(t, pkcs11.CKA_VALUE_LEN)
		}
		return t, nil
	case ImportRSA:
		_, priv := keyPairTemplates(pkcs11.CKK_RSA, spec.ID, spec.Label, spec.Use, nil, nil)
		return priv, nil
	case ImportEC:
		// The public point is recovered from signatures, so the key must
		// sign; the plugin enforces the key's operations itself.
		use := spec.Use
		use.Sign = true
		_, priv := keyPairTemplates(pkcs11.CKK_EC, spec.ID, spec.Label, use, nil, nil)
		return priv, nil
	}
	return nil, inputErrorf("unknown import kind %d", spec.Kind)
}

// destroyByID destroys every object with CKA_ID id; callers hold createMu.
func destroyByID(p11 PKCS11, sh pkcs11.SessionHandle, id []byte) error {
	if err := p11.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
		return call("C_FindObjectsInit", err)
	}
	handles, _, err := p11.FindObjects(sh, 16)
	finalErr := p11.FindObjectsFinal(sh)
	if err != nil {
		return call("C_FindObjects", err)
	}
	if finalErr != nil {
		return call("C_FindObjectsFinal", finalErr)
	}
	for _, h := range handles {
		if err := p11.DestroyObject(sh, h); err != nil {
			return call("C_DestroyObject", err)
		}
	}
	return nil
}

// checkImported reads back what the token made of an import and checks it
// against spec: the key's size or curve, and for a private key its public
// half.
func (c *Client) checkImported(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, spec ImportSpec) (Imported, error) {
	switch spec.Kind {
	case ImportAES, ImportHMAC:
		n, err := secretLength(p11, sh, h)
		if err != nil {
			return Imported{}, err
		}
		if spec.Kind == ImportAES && spec.Use.Encrypt {
			if err := c.tryAESGCM(p11, sh, h, spec.Bits); err != nil {
				return Imported{}, err
			}
		}
		if n == 0 && spec.Kind == ImportHMAC {
			if err := tryHMAC(p11, sh, h); err != nil {
				return Imported{}, err
			}
		}
		if n == 0 {
			// The token did not record the length (SoftHSM after an
			// unwrap): a JWK's was checked by the plugin; a BYOK key's
			// cannot be without taking it out of the token.
			c.token.quirks.observe("unwrap_value_len_unset")
			return Imported{ValueLen: spec.Bits / 8}, nil
		}
		if spec.Kind == ImportAES && n*8 != spec.Bits {
			return Imported{}, inputErrorf("the key is %d bits; the type needs %d", n*8, spec.Bits)
		}
		if spec.Kind == ImportHMAC && (n < MinHMACImportBytes || n > MaxHMACImportBytes) {
			return Imported{}, inputErrorf("the HMAC key is %d bytes; %d to %d allowed", n, MinHMACImportBytes, MaxHMACImportBytes)
		}
		if spec.Kind == ImportHMAC {
			if err := tryHMAC(p11, sh, h); err != nil {
				return Imported{}, err
			}
		}
		return Imported{ValueLen: n}, nil
	case ImportRSA:
		pub, err := readRSAPublic(p11, sh, h)
		if err != nil {
			return Imported{}, inputErrorf("the key is not an RSA private key the token can read back: %w", err)
		}
		if spec.Public != nil && !pub.(*rsa.PublicKey).Equal(spec.Public) {
			return Imported{}, inputErrorf("the RSA key's public part is not the one given with it")
		}
		if bits := pub.(*rsa.PublicKey).N.BitLen(); bits != spec.Bits {
			return Imported{}, inputErrorf("the RSA key is %d bits; the type needs %d", bits, spec.Bits)
		}
		return Imported{Public: pub}, nil
	case ImportEC:
		curve, err := readCurve(p11, sh, h)
		if err != nil {
			return Imported{}, inputErrorf("%w", err)
		}
		if curve != spec.Curve {
			return Imported{}, inputErrorf("the EC key is on %s; the type needs %s", curve, spec.Curve)
		}
		pub, err := recoverECPublic(p11, sh, h, curve)
		if err != nil {
			return Imported{}, err
		}
		if spec.Public != nil && !pub.Equal(spec.Public) {
			return Imported{}, inputErrorf("the EC key's public point is not the one given with it")
		}
		return Imported{Public: pub}, nil
	}
	return Imported{}, inputErrorf("unknown import kind %d", spec.Kind)
}

// ckaNSSDB is NSS's vendor attribute for a private key's public value,
// which NSS softokn requires when it unwraps an EC private key into the
// token.
const ckaNSSDB = 0xD5A0DB00

// nssPublicValue is the public point when the caller knows it; otherwise
// (BYOK, where only the private key travels) a stand-in derived from the
// CKA_ID: NSS stores it to match certificates to keys, which the plugin
// does not use, and the plugin finds its objects by CKA_ID.
func nssPublicValue(spec ImportSpec) []byte {
	if pub, ok := spec.Public.(*ecdsa.PublicKey); ok {
		if b, err := pub.Bytes(); err == nil {
			return b
		}
	}
	sum := sha256.Sum256(spec.ID)
	return sum[:]
}

// tryHMAC checks that the token computes HMAC-SHA-256 with an imported
// key: SoftHSM refuses keys shorter than the hash, which only a JWK import
// (padded by the plugin) can avoid.
func tryHMAC(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
	err := p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, h)
	if err == nil {
		_, err = oneCall(func(n int) ([]byte, error) { return p11.SignOnce(sh, []byte("hsmkms"), n) }, crypto.SHA256.Size())
	}
	if code, ok := pkcs11Code(err); ok && code == pkcs11.CKR_KEY_SIZE_RANGE {
		return inputErrorf("the token refuses HMAC with a key this short; import it as a JWK, which the plugin pads to 64 bytes (the same HMAC)")
	}
	if err != nil {
		return call("C_Sign (HMAC check)", err)
	}
	return nil
}

// readCurve names the curve of an EC object from CKA_EC_PARAMS.
func readCurve(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (string, error) {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil)})
	if err != nil {
		return "", call("C_GetAttributeValue (CKA_EC_PARAMS)", err)
	}
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(attrs[0].Value, &oid); err != nil {
		return "", fmt.Errorf("CKA_EC_PARAMS is not a named curve: %w", err)
	}
	for name, o := range curveOIDs {
		if o.Equal(oid) {
			return name, nil
		}
	}
	return "", fmt.Errorf("the EC key is on curve %v; P-256, P-384 or P-521 supported", oid)
}

// recoverECPublic finds an EC private key's public point, which tokens do
// not keep on the private object: it signs two fixed digests in the token
// and recovers the one public key that made both signatures.
func recoverECPublic(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, curveName string) (*ecdsa.PublicKey, error) {
	curve, _ := curveByName(curveName)
	d1 := sha256.Sum256([]byte("hsmkms: recover the public key, first digest"))
	d2 := sha512.Sum512([]byte("hsmkms: recover the public key, second digest"))
	sign := func(digest []byte) ([]byte, error) {
		if err := p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, h); err != nil {
			return nil, call("C_SignInit (CKM_ECDSA)", err)
		}
		sig, err := oneCall(func(n int) ([]byte, error) { return p11.SignOnce(sh, digest, n) }, 2*ecSize(curve))
		if err != nil {
			return nil, call("C_Sign (CKM_ECDSA)", err)
		}
		return sig, nil
	}
	// CKM_ECDSA takes the digest truncated to the order's size, as ECDSA
	// does; the longer one is cut here so no token has to.
	size := (curve.Params().N.BitLen() + 7) / 8
	second := d2[:]
	if len(second) > size {
		second = second[:size]
	}
	s1, err := sign(d1[:])
	if err != nil {
		return nil, err
	}
	s2, err := sign(second)
	if err != nil {
		return nil, err
	}
	pub, err := RecoverECDSAPublicKey(curve, d1[:], s1, second, s2)
	if err != nil {
		return nil, fmt.Errorf("recovering the public key of an EC key: %w", err)
	}
	return pub, nil
}

// rfc5649Vector is the first test vector of RFC 5649, section 6: a 20-byte
// key wrapped under a 192-bit KEK.
var rfc5649Vector = struct{ kek, key, wrapped []byte }{
	kek:     []byte{0x58, 0x40, 0xdf, 0x6e, 0x29, 0xb0, 0x2a, 0xf1, 0xab, 0x49, 0x3b, 0x70, 0x5b, 0xf1, 0x6e, 0xa1, 0xae, 0x83, 0x38, 0xf4, 0xdc, 0xc1, 0x76, 0xa8},
	key:     []byte{0xc3, 0x7b, 0x7e, 0x64, 0x92, 0x58, 0x43, 0x40, 0xbe, 0xd1, 0x22, 0x07, 0x80, 0x89, 0x41, 0x15, 0x50, 0x68, 0xf7, 0x38},
	wrapped: []byte{0x13, 0x8b, 0xde, 0xaa, 0x9b, 0x8f, 0xa7, 0xfc, 0x61, 0xf9, 0x77, 0x42, 0xe7, 0x22, 0x48, 0xee, 0x5a, 0xe6, 0xae, 0x53, 0x60, 0xd1, 0xae, 0x6a, 0x5f, 0x54, 0xf3, 0x73, 0xfa, 0x54, 0x3b, 0x6a},
}

// Mechanism numbers of AES key wrap with padding. PKCS#11 3.0 names
// RFC 5649 CKM_AES_KEY_WRAP_KWP (0x210B); 0x210A, CKM_AES_KEY_WRAP_PAD, is
// RFC 5649 on SoftHSM but RFC 3394 over PKCS#7 padding on NSS.
const (
	ckmAESKeyWrapPad = 0x210A
	ckmAESKeyWrapKWP = 0x210B
)

// kwpMechanism finds, once per token, the mechanism that is RFC 5649 on
// this token: the one that unwraps the RFC's own test vector to the RFC's
// key.
func (c *Client) kwpMechanism(p11 PKCS11, sh pkcs11.SessionHandle) (uint, error) {
	q := &c.token.quirks
	q.mu.Lock()
	mech := q.kwp
	q.mu.Unlock()
	if mech != 0 {
		return mech, nil
	}
	kek, err := p11.CreateObject(sh, setAttribute(ephemeralTemplate(rfc5649Vector.kek), pkcs11.CKA_SENSITIVE, false))
	if err != nil {
		return 0, call("C_CreateObject (key-wrap probe)", err)
	}
	defer func() { _ = p11.DestroyObject(sh, kek) }()
	for _, candidate := range []uint{ckmAESKeyWrapKWP, ckmAESKeyWrapPad} {
		h, err := p11.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(candidate, nil)}, kek, rfc5649Vector.wrapped, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		})
		if err != nil {
			if classify(err) == classSession || classify(err) == classDevice {
				return 0, call("C_UnwrapKey (key-wrap probe)", err)
			}
			continue
		}
		attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		_ = p11.DestroyObject(sh, h)
		if err == nil && bytes.Equal(attrs[0].Value, rfc5649Vector.key) {
			q.mu.Lock()
			q.kwp = candidate
			q.mu.Unlock()
			return candidate, nil
		}
	}
	return 0, ErrNoKeyWrap
}

// ErrNoKeyWrap: the token has no mechanism that unwraps RFC 5649.
var ErrNoKeyWrap = errors.New("the token has no RFC 5649 AES key wrap with padding (CKM_AES_KEY_WRAP_KWP or CKM_AES_KEY_WRAP_PAD), which key import needs")
