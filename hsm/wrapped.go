package hsm

import (
	"context"
	"crypto"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// MaxWrappedBytes bounds a wrapped key: an RSA-4096 PKCS#8 key under RFC
// 5649 is about 2.4 KiB; NSS adds the public key to EC keys.
const MaxWrappedBytes = 8192

// GenerateKEK makes a key-encryption key: an AES-256 token key that is
// sensitive, never extractable, and may only wrap and unwrap.
func (c *Client) GenerateKEK(ctx context.Context, id []byte, label string) error {
	template := secretKeyTemplate(pkcs11.CKK_AES, 32, id, label, Usage{})
	template = setAttribute(setAttribute(template, pkcs11.CKA_WRAP, true), pkcs11.CKA_UNWRAP, true)
	return c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		c.token.createMu.Lock()
		defer c.token.createMu.Unlock()
		_, err := p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, template)
		return call("C_GenerateKey (KEK)", err)
	})
}

// FindKEK finds the token's key-encryption key labelled label: its CKA_ID,
// or nil when there is none. Only a key fit to be a KEK is taken (see
// checkKEK); a label two keys share is an error.
func (c *Client) FindKEK(ctx context.Context, label string) ([]byte, error) {
	var id []byte
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		found, err := findAll(p11, sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}, 2)
		if err != nil {
			return err
		}
		switch len(found) {
		case 0:
			return nil
		case 1:
		default:
			return inputErrorf("two secret keys on the token are labelled %q", label)
		}
		kek, err := describeKEK(p11, sh, found[0])
		if err != nil {
			return err
		}
		if err := kek.check(true); err != nil {
			return inputErrorf("the key labelled %q %w", label, err)
		}
		if len(kek.ID) == 0 {
			return inputErrorf("the key labelled %q has no CKA_ID", label)
		}
		id = kek.ID
		return nil
	})
	return id, err
}

// KEKInfo is what the token says of an object named as a KEK.
type KEKInfo struct {
	ID, Label                      []byte
	AES, Sensitive, Extractable    bool
	Wrap, Unwrap                   bool
	Encrypt, Decrypt, Sign, Verify bool
}

// errNotAKEK explains why an object cannot serve as a KEK.
var errNotAKEK = errors.New("cannot be a KEK")

// check says why the object cannot be a KEK: an AES key that is sensitive,
// never extractable, and wraps and unwraps only (a KEK that may also
// encrypt could be taken for a data key). A KEK that only unwraps is a
// retired one: good enough to restore from, never to wrap with.
func (k KEKInfo) check(wrap bool) error {
	switch {
	case !k.AES:
		return fmt.Errorf("is not an AES key, so it %w", errNotAKEK)
	case !k.Sensitive || k.Extractable:
		return fmt.Errorf("is extractable or not sensitive, so it %w", errNotAKEK)
	case !k.Unwrap || (wrap && !k.Wrap):
		return fmt.Errorf("cannot wrap and unwrap, so it %w", errNotAKEK)
	case k.Encrypt || k.Decrypt || k.Sign || k.Verify:
		return fmt.Errorf("may also encrypt, decrypt, sign or verify, so it %w: a KEK wraps and unwraps only (make it with CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN and CKA_VERIFY false)", errNotAKEK)
	}
	return nil
}

func describeKEK(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (KEKInfo, error) {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
	})
	if err != nil {
		return KEKInfo{}, call("C_GetAttributeValue (KEK)", err)
	}
	flag := func(t uint) bool { return readBool(p11, sh, h, t) }
	return KEKInfo{
		ID: attrs[0].Value, Label: attrs[1].Value, AES: bytesToUint(attrs[2].Value) == pkcs11.CKK_AES,
		Sensitive: flag(pkcs11.CKA_SENSITIVE), Extractable: flag(pkcs11.CKA_EXTRACTABLE),
		Wrap: flag(pkcs11.CKA_WRAP), Unwrap: flag(pkcs11.CKA_UNWRAP),
		Encrypt: flag(pkcs11.CKA_ENCRYPT), Decrypt: flag(pkcs11.CKA_DECRYPT),
		Sign: flag(pkcs11.CKA_SIGN), Verify: flag(pkcs11.CKA_VERIFY),
	}, nil
}

// CheckKEK finds the secret key with CKA_ID id and checks that it can
// unwrap as a KEK: for ids that come from outside (a backup), which are
// checked on the token before anything is unwrapped with them. It returns
// the key's label, from the token.
func (c *Client) CheckKEK(ctx context.Context, id []byte) (string, error) {
	if len(id) == 0 {
		return "", inputErrorf("empty KEK id")
	}
	var label string
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		found, err := findAll(p11, sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}, 2)
		if err != nil {
			return err
		}
		switch len(found) {
		case 0:
			return fmt.Errorf("%w: CKA_ID %x", ErrKeyNotFound, id)
		case 1:
		default:
			return inputErrorf("two secret keys share CKA_ID %x", id)
		}
		kek, err := describeKEK(p11, sh, found[0])
		if err != nil {
			return err
		}
		label = string(kek.Label)
		if err := kek.check(false); err != nil {
			return inputErrorf("the object with CKA_ID %x (label %q) %w", id, label, err)
		}
		return nil
	})
	return label, err
}

// GenerateWrapped makes a key of spec's kind as session objects that may
// leave the token only wrapped, wraps its secret (or private) part under
// the KEK kek, and destroys the objects. The key exists on the token only
// for that moment; the blob is what the caller stores.
func (c *Client) GenerateWrapped(ctx context.Context, kek []byte, spec ImportSpec) ([]byte, crypto.PublicKey, error) {
	var blob []byte
	var pub crypto.PublicKey
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		kwp, err := c.kwpMechanism(p11, sh)
		if err != nil {
			return err
		}
		kekHandle, err := c.findObject(p11, sh, kek, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		sessionOnly := func(t []*pkcs11.Attribute) []*pkcs11.Attribute { return setAttribute(t, pkcs11.CKA_TOKEN, false) }
		wrapOnly := func(t []*pkcs11.Attribute) []*pkcs11.Attribute {
			return setAttribute(sessionOnly(t), pkcs11.CKA_EXTRACTABLE, true)
		}
		var key, public pkcs11.ObjectHandle
		switch spec.Kind {
		case ImportAES, ImportHMAC:
			keyType, mech := uint(pkcs11.CKK_AES), uint(pkcs11.CKM_AES_KEY_GEN)
			if spec.Kind == ImportHMAC {
				keyType, mech = pkcs11.CKK_GENERIC_SECRET, pkcs11.CKM_GENERIC_SECRET_KEY_GEN
			}
			key, err = p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)},
				wrapOnly(secretKeyTemplate(keyType, spec.Bits/8, spec.ID, spec.Label, spec.Use)))
			if err != nil {
				return call("C_GenerateKey (wrapped key)", err)
			}
		case ImportRSA, ImportEC:
			keyType, mech := uint(pkcs11.CKK_RSA), uint(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN)
			params := []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, spec.Bits),
				pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			}
			if spec.Kind == ImportEC {
				oid, ok := curveOIDs[spec.Curve]
				if !ok {
					return inputErrorf("curve %q", spec.Curve)
				}
				der, err := asn1.Marshal(oid)
				if err != nil {
					return err
				}
				keyType, mech = pkcs11.CKK_EC, pkcs11.CKM_EC_KEY_PAIR_GEN
				params = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, der)}
			}
			pubTmpl, privTmpl := keyPairTemplates(keyType, spec.ID, spec.Label, spec.Use, params, nil)
			public, key, err = p11.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, sessionOnly(pubTmpl), wrapOnly(privTmpl))
			if err != nil {
				return call("C_GenerateKeyPair (wrapped key)", err)
			}
			defer func() { _ = p11.DestroyObject(sh, public) }()
			read := readRSAPublic
			if spec.Kind == ImportEC {
				read = readECPublic
			}
			if pub, err = read(p11, sh, public); err != nil {
				_ = p11.DestroyObject(sh, key)
				return err
			}
		default:
			return inputErrorf("unknown key kind %d", spec.Kind)
		}
		defer func() { _ = p11.DestroyObject(sh, key) }()
		blob, err = p11.WrapKeyOnce(sh, kwp, kekHandle, key, MaxWrappedBytes)
		return call("C_WrapKey", err)
	})
	return blob, pub, err
}

// Rewrap moves a blob from KEK from to KEK to: it is unwrapped into a
// session object that may leave the token only wrapped, wrapped again and
// destroyed.
func (c *Client) Rewrap(ctx context.Context, from, to, blob []byte, spec ImportSpec) ([]byte, error) {
	return c.rewrap(ctx, from, to, blob, spec, false)
}

// RewrapChecked is Rewrap for a blob that comes from outside the mount's
// storage (a backup): before it is wrapped again, the key it unwraps to is
// checked against spec as an import is (kind, size, curve, and the public
// half against spec.Public), so that metadata and key cannot disagree.
func (c *Client) RewrapChecked(ctx context.Context, from, to, blob []byte, spec ImportSpec) ([]byte, error) {
	if want := wrappedSecretLen(spec); want != 0 && len(blob) != want {
		return nil, inputErrorf("the blob is %d bytes; a wrapped %d-bit key is %d", len(blob), spec.Bits, want)
	}
	// The transient copy may do what the check needs; it is destroyed
	// straight after.
	switch spec.Kind {
	case ImportAES:
		spec.Use.Encrypt = true
	case ImportHMAC:
		spec.Use.Sign = true
	}
	return c.rewrap(ctx, from, to, blob, spec, true)
}

// wrappedSecretLen is the length of a secret key of spec's size wrapped by
// RFC 5649 (an 8-byte integrity block, the key padded to 8 bytes), or 0
// when the size is not known.
func wrappedSecretLen(spec ImportSpec) int {
	if (spec.Kind != ImportAES && spec.Kind != ImportHMAC) || spec.Bits == 0 {
		return 0
	}
	return 8 + (spec.Bits/8+7)/8*8
}

func (c *Client) rewrap(ctx context.Context, from, to, blob []byte, spec ImportSpec, check bool) ([]byte, error) {
	var out []byte
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		kwp, err := c.kwpMechanism(p11, sh)
		if err != nil {
			return err
		}
		fromHandle, err := c.findObject(p11, sh, from, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		toHandle, err := c.findObject(p11, sh, to, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		template, err := sessionTemplate(c, spec)
		if err != nil {
			return err
		}
		// A distinct CKA_ID keeps the transient object apart from the
		// cached copy the plugin may be using at the same moment.
		template = setAttribute(setAttribute(template, pkcs11.CKA_EXTRACTABLE, true), pkcs11.CKA_ID, append([]byte("rewrap:"), spec.ID...))
		h, err := c.unwrapObject(p11, sh, kwp, fromHandle, blob, template)
		if err != nil {
			if errors.Is(err, ErrInvalidInput) || unwrapRefused(err) || c.generalErrorIsCallers(p11, sh, err) || c.functionFailedIsCallers(p11, sh, err) {
				return inputErrorf("the blob does not unwrap under this KEK (%w)", err)
			}
			return err
		}
		defer func() { _ = p11.DestroyObject(sh, h) }()
		if check {
			if _, err := c.checkImported(p11, sh, h, spec); err != nil {
				return err
			}
		}
		out, err = p11.WrapKeyOnce(sh, kwp, toHandle, h, MaxWrappedBytes)
		return call("C_WrapKey (rewrap)", err)
	})
	return out, err
}

// sessionTemplate is the template of an unwrapped copy of a wrapped key: a
// session object, sensitive and never extractable, with the key's usage.
func sessionTemplate(c *Client, spec ImportSpec) ([]*pkcs11.Attribute, error) {
	template, err := importTemplate(spec)
	if err != nil {
		return nil, err
	}
	template = setAttribute(template, pkcs11.CKA_TOKEN, false)
	if spec.Kind == ImportHMAC || spec.Kind == ImportAES {
		template = withoutAttribute(template, pkcs11.CKA_VALUE_LEN)
	}
	if spec.Kind == ImportEC && c.token.quirks.has("ec_unwrap_needs_public_value") {
		template = append(template, pkcs11.NewAttribute(ckaNSSDB, nssPublicValue(spec)))
	}
	return template, nil
}

// unwrapObject unwraps with the token's RFC 5649 mechanism, leaving out
// the attributes SoftHSM refuses at C_UnwrapKey.
func (c *Client) unwrapObject(p11 PKCS11, sh pkcs11.SessionHandle, kwp uint, unwrapping pkcs11.ObjectHandle, wrapped []byte, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedBytes {
		return 0, inputErrorf("a wrapped key of %d bytes; 1 to %d expected", len(wrapped), MaxWrappedBytes)
	}
	q := &c.token.quirks
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(kwp, nil)}
	readOnlyAtUnwrap := func(t []*pkcs11.Attribute) []*pkcs11.Attribute {
		return withoutAttribute(withoutAttribute(t, pkcs11.CKA_MODIFIABLE), pkcs11.CKA_VALUE_LEN)
	}
	if q.observed("unwrap_attributes_read_only") {
		template = readOnlyAtUnwrap(template)
	}
	h, err := p11.UnwrapKey(sh, mech, unwrapping, wrapped, template)
	if code, ok := pkcs11Code(err); ok && code == pkcs11.CKR_ATTRIBUTE_READ_ONLY && !q.observed("unwrap_attributes_read_only") {
		if h, err = p11.UnwrapKey(sh, mech, unwrapping, wrapped, readOnlyAtUnwrap(template)); err == nil {
			q.observe("unwrap_attributes_read_only")
		}
	}
	if err != nil {
		return 0, call("C_UnwrapKey", err)
	}
	return h, nil
}
