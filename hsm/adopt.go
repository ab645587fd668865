package hsm

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// ObjectSelector names an object that exists on the token already: by
// CKA_LABEL or by CKA_ID (one of them).
type ObjectSelector struct {
	Label string
	ID    []byte
}

func (s ObjectSelector) String() string {
	if s.ID != nil {
		return fmt.Sprintf("CKA_ID %x", s.ID)
	}
	return fmt.Sprintf("label %q", s.Label)
}

// ExistingKey describes a key object found on the token for adoption.
type ExistingKey struct {
	Kind        ImportKind
	Bits        int    // AES key or RSA modulus size; HMAC key size
	Curve       string // EC
	ID          []byte
	Label       string
	Sensitive   bool
	Extractable bool
	// What the object itself permits; Wrap is CKA_WRAP or CKA_UNWRAP
	// (SoftHSM sets both on any secret key made without saying otherwise).
	Encrypt, Decrypt, Sign, Verify, Wrap bool
	// Public is the public key of a private key: from the public object
	// with the same CKA_ID, the private object's modulus (RSA), or
	// recovered from two signatures (EC).
	Public crypto.PublicKey
}

// ErrAdopt: the object named for adoption cannot be adopted; the error is
// an InputError that says why.
var ErrAdopt = errors.New("cannot adopt")

func adoptErrorf(format string, args ...interface{}) error {
	err := inputErrorf(format, args...).(*InputError)
	err.sentinel = ErrAdopt
	return err
}

// FindExistingKey finds the one secret or private key object sel names and
// describes it. Objects without a CKA_ID, or whose CKA_ID another object of
// the same class shares, cannot be used by CKA_ID, which is how the plugin
// finds every object, so they are refused.
func (c *Client) FindExistingKey(ctx context.Context, sel ObjectSelector) (ExistingKey, error) {
	if (sel.Label == "") == (sel.ID == nil) {
		return ExistingKey{}, adoptErrorf("give a label or an id")
	}
	var out ExistingKey
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		var candidates []pkcs11.ObjectHandle
		for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY} {
			template := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
			if sel.ID != nil {
				template = append(template, pkcs11.NewAttribute(pkcs11.CKA_ID, sel.ID))
			} else {
				template = append(template, pkcs11.NewAttribute(pkcs11.CKA_LABEL, sel.Label))
			}
			found, err := findAll(p11, sh, template, 8)
			if err != nil {
				return err
			}
			candidates = append(candidates, found...)
		}
		switch len(candidates) {
		case 0:
			return adoptErrorf("no secret or private key object with %s on the token", sel)
		case 1:
		default:
			return adoptErrorf("%d key objects have %s; name one by its id", len(candidates), sel)
		}
		var err error
		out, err = describeKeyObject(p11, sh, candidates[0])
		if err != nil {
			return err
		}
		class := uint(pkcs11.CKO_SECRET_KEY)
		if out.Kind == ImportRSA || out.Kind == ImportEC {
			class = pkcs11.CKO_PRIVATE_KEY
		}
		if len(out.ID) == 0 {
			return adoptErrorf("the object has no CKA_ID, by which the plugin finds its objects; give it one with the HSM's tools")
		}
		same, err := findAll(p11, sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_ID, out.ID),
		}, 2)
		if err != nil {
			return err
		}
		if len(same) != 1 {
			return adoptErrorf("another key object shares its CKA_ID %x", out.ID)
		}
		if class == pkcs11.CKO_PRIVATE_KEY {
			out.Public, err = c.adoptedPublicKey(p11, sh, candidates[0], out)
		}
		return err
	})
	return out, err
}

func findAll(p11 PKCS11, sh pkcs11.SessionHandle, template []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := p11.FindObjectsInit(sh, template); err != nil {
		return nil, call("C_FindObjectsInit", err)
	}
	handles, _, err := p11.FindObjects(sh, max)
	finalErr := p11.FindObjectsFinal(sh)
	if err != nil {
		return nil, call("C_FindObjects", err)
	}
	if finalErr != nil {
		return nil, call("C_FindObjectsFinal", finalErr)
	}
	return handles, nil
}

// readBool reads one boolean attribute; an attribute the object does not
// have reads as false.
func readBool(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, typ uint) bool {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
	return err == nil && len(attrs) == 1 && len(attrs[0].Value) == 1 && attrs[0].Value[0] != 0
}

func describeKeyObject(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (ExistingKey, error) {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
	})
	if err != nil {
		return ExistingKey{}, call("C_GetAttributeValue", err)
	}
	out := ExistingKey{
		ID:          attrs[2].Value,
		Label:       strings.TrimRight(string(attrs[3].Value), "\x00"),
		Sensitive:   readBool(p11, sh, h, pkcs11.CKA_SENSITIVE),
		Extractable: readBool(p11, sh, h, pkcs11.CKA_EXTRACTABLE),
		Encrypt:     readBool(p11, sh, h, pkcs11.CKA_ENCRYPT),
		Decrypt:     readBool(p11, sh, h, pkcs11.CKA_DECRYPT),
		Sign:        readBool(p11, sh, h, pkcs11.CKA_SIGN),
		Verify:      readBool(p11, sh, h, pkcs11.CKA_VERIFY),
		Wrap:        readBool(p11, sh, h, pkcs11.CKA_WRAP) || readBool(p11, sh, h, pkcs11.CKA_UNWRAP),
	}
	if !readBool(p11, sh, h, pkcs11.CKA_TOKEN) {
		return ExistingKey{}, adoptErrorf("it is a session object, which ends with its session")
	}
	class, keyType := bytesToUint(attrs[0].Value), bytesToUint(attrs[1].Value)
	switch {
	case class == pkcs11.CKO_SECRET_KEY && keyType == pkcs11.CKK_AES:
		n, err := secretLength(p11, sh, h)
		if err != nil {
			return ExistingKey{}, err
		}
		if n != 16 && n != 24 && n != 32 {
			return ExistingKey{}, adoptErrorf("an AES key of %d bytes", n)
		}
		out.Kind, out.Bits = ImportAES, n*8
	case class == pkcs11.CKO_SECRET_KEY && (keyType == pkcs11.CKK_GENERIC_SECRET || keyType == pkcs11.CKK_SHA256_HMAC ||
		keyType == pkcs11.CKK_SHA384_HMAC || keyType == pkcs11.CKK_SHA512_HMAC):
		n, err := secretLength(p11, sh, h)
		if err != nil {
			return ExistingKey{}, err
		}
		out.Kind, out.Bits = ImportHMAC, n*8
	case class == pkcs11.CKO_PRIVATE_KEY && keyType == pkcs11.CKK_RSA:
		pub, err := readRSAPublic(p11, sh, h)
		if err != nil {
			return ExistingKey{}, err
		}
		out.Kind, out.Bits = ImportRSA, pub.(interface{ Size() int }).Size()*8
		out.Public = pub
	case class == pkcs11.CKO_PRIVATE_KEY && keyType == pkcs11.CKK_EC:
		curve, err := readCurve(p11, sh, h)
		if err != nil {
			return ExistingKey{}, adoptErrorf("%w", err)
		}
		out.Kind, out.Curve = ImportEC, curve
	default:
		return ExistingKey{}, adoptErrorf("key type %#x of class %#x is not one the plugin uses (AES, generic secret, RSA, EC)", keyType, class)
	}
	return out, nil
}

// adoptedPublicKey finds a private key's public half: the public object
// with the same CKA_ID, else the RSA modulus on the private object, else,
// for EC, recovery from two signatures.
func (c *Client) adoptedPublicKey(p11 PKCS11, sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, k ExistingKey) (crypto.PublicKey, error) {
	pubs, err := findAll(p11, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, k.ID),
	}, 2)
	if err != nil {
		return nil, err
	}
	if len(pubs) == 1 {
		read := readECPublic
		if k.Kind == ImportRSA {
			read = readRSAPublic
		}
		pub, err := read(p11, sh, pubs[0])
		if err == nil {
			return pub, nil
		}
	}
	if k.Kind == ImportRSA {
		return k.Public, nil
	}
	if !k.Sign {
		return nil, adoptErrorf("the EC key has no public object with its CKA_ID and cannot sign, so its public key cannot be found")
	}
	return recoverECPublic(p11, sh, priv, k.Curve)
}

// Slot is the slot id of the client's token now (it can change after a
// re-initialisation).
func (c *Client) Slot() uint {
	c.mod.mu.RLock()
	defer c.mod.mu.RUnlock()
	return c.token.slot
}
