package hsm

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// IDLen is the length of the CKA_ID the plugin gives every object it makes.
const IDLen = 16

// NewObjectID draws a fresh CKA_ID from the token's RNG. The caller records
// it (in a WAL entry) before the object exists, so a crash in between can be
// rolled back.
func (c *Client) NewObjectID(ctx context.Context) ([]byte, error) {
	return c.Random(ctx, IDLen)
}

// cachedHandle is an object handle found in generation gen. A handle from
// an earlier generation (before a re-initialisation) is used again only
// after the token confirms it still names an object with the same CKA_ID
// and class: some modules keep handles across C_Finalize, others hand the
// numbers to other objects.
type cachedHandle struct {
	handle pkcs11.ObjectHandle
	gen    uint64
}

// findObject returns the handle of the object with CKA_ID id and class
// class, from the cache when it holds one that is still valid. SoftHSM
// 2.6.1 looks objects up slowly, so the hot path must not search.
func (c *Client) findObject(p11 PKCS11, sh pkcs11.SessionHandle, id []byte, class uint) (pkcs11.ObjectHandle, error) {
	key := fmt.Sprintf("%d/%s", class, hex.EncodeToString(id))
	gen := c.mod.generation // callers hold mod.mu for reading
	if h, ok := c.token.cachedHandle(key); ok {
		if h.gen == gen {
			return h.handle, nil
		}
		if handleStillNames(p11, sh, h.handle, id, class) {
			c.token.cacheHandle(key, cachedHandle{h.handle, gen})
			return h.handle, nil
		}
	}
	template := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
	if err := p11.FindObjectsInit(sh, template); err != nil {
		return 0, call("C_FindObjectsInit", err)
	}
	handles, _, err := p11.FindObjects(sh, 2)
	finalErr := p11.FindObjectsFinal(sh)
	if err != nil {
		return 0, call("C_FindObjects", err)
	}
	if finalErr != nil {
		return 0, call("C_FindObjectsFinal", finalErr)
	}
	switch len(handles) {
	case 0:
		return 0, fmt.Errorf("%w: CKA_ID %x", ErrKeyNotFound, id)
	case 1:
	default:
		return 0, fmt.Errorf("two objects share CKA_ID %x", id)
	}
	c.token.cacheHandle(key, cachedHandle{handles[0], gen})
	return handles[0], nil
}

// handleStillNames asks the token whether h is still an object of class
// with CKA_ID id.
func handleStillNames(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, id []byte, class uint) bool {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
	})
	return err == nil && len(attrs) == 2 && bytes.Equal(attrs[0].Value, id) && bytesToUint(attrs[1].Value) == class
}

func (ts *tokenSession) cachedHandle(key string) (cachedHandle, bool) {
	ts.handlesMu.Lock()
	defer ts.handlesMu.Unlock()
	h, ok := ts.handles[key]
	return h, ok
}

func (ts *tokenSession) cacheHandle(key string, h cachedHandle) {
	ts.handlesMu.Lock()
	defer ts.handlesMu.Unlock()
	if ts.handles == nil {
		ts.handles = map[string]cachedHandle{}
	}
	ts.handles[key] = h
}

// forgetHandle drops the cached handles of the objects with CKA_ID hexID.
func (ts *tokenSession) forgetHandle(hexID string) {
	ts.handlesMu.Lock()
	defer ts.handlesMu.Unlock()
	for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		delete(ts.handles, fmt.Sprintf("%d/%s", class, hexID))
	}
}

func (ts *tokenSession) forgetHandles() {
	ts.handlesMu.Lock()
	defer ts.handlesMu.Unlock()
	ts.handles = nil
}

// ErrNotOwned: an object carries the CKA_ID the caller named, but not a
// label the caller owns; it was left on the token.
var ErrNotOwned = errors.New("an object with this CKA_ID is not the caller's")

// DestroyObjects destroys the objects with CKA_ID id (a key, or both halves
// of a key pair) whose CKA_LABEL owned accepts. An id comes from storage,
// a backup or a request, and the token is the truth about what it names:
// an object with that id and a label the caller does not own is left
// where it is, and ErrNotOwned says so. Destroying what is already gone is
// not an error.
func (c *Client) DestroyObjects(ctx context.Context, id []byte, owned func(label string) bool) error {
	if len(id) == 0 {
		return inputErrorf("empty object id")
	}
	return c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		c.token.createMu.Lock()
		defer c.token.createMu.Unlock()
		handles, err := findAll(p11, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}, 16)
		if err != nil {
			return err
		}
		c.token.forgetHandles()
		var foreign []string
		for _, h := range handles {
			label, err := readLabel(p11, sh, h)
			if err != nil {
				return err
			}
			if !owned(label) {
				foreign = append(foreign, label)
				continue
			}
			if err := p11.DestroyObject(sh, h); err != nil {
				return call("C_DestroyObject", err)
			}
		}
		if len(foreign) > 0 {
			return fmt.Errorf("%w: CKA_ID %x is also on objects labelled %q, left on the token", ErrNotOwned, id, foreign)
		}
		return nil
	})
}

// ExactLabel accepts only label: for DestroyObjects, an object the caller
// recorded with that label.
func ExactLabel(label string) func(string) bool {
	return func(l string) bool { return l == label }
}

func readLabel(p11 PKCS11, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (string, error) {
	attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
	if err != nil {
		return "", call("C_GetAttributeValue (CKA_LABEL)", err)
	}
	return string(attrs[0].Value), nil
}

// ObjectExists reports whether an object with CKA_ID id exists.
func (c *Client) ObjectExists(ctx context.Context, id []byte) (bool, error) {
	var found bool
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		_, err := c.findObject(p11, sh, id, pkcs11.CKO_SECRET_KEY)
		if errors.Is(err, ErrKeyNotFound) {
			return nil
		}
		found = err == nil
		return err
	})
	return found, err
}

// ObjectInfo describes an object on the token, for housekeeping.
type ObjectInfo struct {
	ID    []byte
	Label string
	Class uint
}

// ListObjects lists the token objects this login can see whose label
// starts with labelPrefix.
func (c *Client) ListObjects(ctx context.Context, labelPrefix string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	err := c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		out = out[:0]
		if err := p11.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}); err != nil {
			return call("C_FindObjectsInit", err)
		}
		var handles []pkcs11.ObjectHandle
		for {
			batch, _, err := p11.FindObjects(sh, 256)
			if err != nil {
				_ = p11.FindObjectsFinal(sh)
				return call("C_FindObjects", err)
			}
			if len(batch) == 0 {
				break
			}
			handles = append(handles, batch...)
		}
		if err := p11.FindObjectsFinal(sh); err != nil {
			return call("C_FindObjectsFinal", err)
		}
		for _, h := range handles {
			attrs, err := p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
				pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
			})
			if err != nil {
				continue // an object without these attributes is none of ours
			}
			label := string(attrs[0].Value)
			if !strings.HasPrefix(label, labelPrefix) {
				continue
			}
			out = append(out, ObjectInfo{ID: attrs[1].Value, Label: label, Class: bytesToUint(attrs[2].Value)})
		}
		return nil
	})
	return out, err
}

// PutMarker makes sure the token holds one object labelled label: a
// generic secret that can do nothing, which the caller uses as a record on
// the token (its label is the record). Objects whose label starts with
// replaces, other than label, are destroyed: the records it supersedes.
func (c *Client) PutMarker(ctx context.Context, label, replaces string) error {
	id, err := c.NewObjectID(ctx)
	if err != nil {
		return err
	}
	return c.do(ctx, func(p11 PKCS11, sh pkcs11.SessionHandle) error {
		c.token.createMu.Lock()
		defer c.token.createMu.Unlock()
		found, err := findAll(p11, sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}, 1)
		if err != nil || len(found) > 0 {
			return err
		}
		template := secretKeyTemplate(pkcs11.CKK_GENERIC_SECRET, 16, id, label, Usage{})
		if _, err := p11.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, template); err != nil {
			return call("C_GenerateKey (marker)", err)
		}
		stale, err := findAll(p11, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}, 1<<16)
		if err != nil {
			return err
		}
		for _, h := range stale {
			l, err := readLabel(p11, sh, h)
			if err == nil && l != label && strings.HasPrefix(l, replaces) {
				if err := p11.DestroyObject(sh, h); err != nil {
					return call("C_DestroyObject (stale marker)", err)
				}
			}
		}
		return nil
	})
}
