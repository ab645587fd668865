package hsm

import (
	"context"
	"crypto"
	"encoding/asn1"
	"fmt"

	"github.com/miekg/pkcs11"
)

// maxWrappedBytes bounds a wrapped key: an RSA-4096 PKCS#8 key under RFC
// 5649 is about 2.4 KiB; NSS adds the public key to EC keys.
const maxWrappedBytes = 8192

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
// or nil when there is none. A KEK that does not wrap and unwrap, or a
// label two keys share, is an error.
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
			return fmt.Errorf("%w: two secret keys on the token are labelled %q", ErrInvalidInput, label)
		}
		if !readBool(p11, sh, found[0], pkcs11.CKA_WRAP) || !readBool(p11, sh, found[0], pkcs11.CKA_UNWRAP) {
			return fmt.Errorf("%w: the key labelled %q cannot wrap and unwrap, so it cannot be a KEK", ErrInvalidInput, label)
		}
		attrs, err := p11.GetAttributeValue(sh, found[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil {
			return call("C_GetAttributeValue", err)
		}
		if len(attrs[0].Value) == 0 {
			return fmt.Errorf("%w: the key labelled %q has no CKA_ID", ErrInvalidInput, label)
		}
		id = attrs[0].Value
		return nil
	})
	return id, err
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
					return fmt.Errorf("%w: curve %q", ErrInvalidInput, spec.Curve)
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
			return fmt.Errorf("%w: unknown key kind %d", ErrInvalidInput, spec.Kind)
		}
		defer func() { _ = p11.DestroyObject(sh, key) }()
		blob, err = p11.WrapKeyOnce(sh, kwp, kekHandle, key, maxWrappedBytes)
		return call("C_WrapKey", err)
	})
	return blob, pub, err
}

// Rewrap moves a blob from KEK from to KEK to: it is unwrapped into a
// session object that may leave the token only wrapped, wrapped again and
// destroyed.
func (c *Client) Rewrap(ctx context.Context, from, to, blob []byte, spec ImportSpec) ([]byte, error) {
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
			if unwrapRefused(err) || c.generalErrorIsCallers(p11, sh, err) || c.functionFailedIsCallers(p11, sh, err) {
				return fmt.Errorf("%w: the blob does not unwrap under this KEK (%w)", ErrInvalidInput, err)
			}
			return err
		}
		defer func() { _ = p11.DestroyObject(sh, h) }()
		out, err = p11.WrapKeyOnce(sh, kwp, toHandle, h, maxWrappedBytes)
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
