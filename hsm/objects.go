package hsm

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

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

// findObject returns the handle of the object with CKA_ID id and class
// class, from the cache when it holds one for the current generation.
// SoftHSM 2.6.1 looks objects up slowly, so the hot path must not search.
func (c *Client) findObject(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle, id []byte, class uint) (pkcs11.ObjectHandle, error) {
	key := fmt.Sprintf("%d/%s", class, hex.EncodeToString(id))
	gen := c.mod.generation // callers hold mod.mu for reading
	if h, ok := c.token.cachedHandle(key, gen); ok {
		return h, nil
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
	c.token.cacheHandle(key, gen, handles[0])
	return handles[0], nil
}

func (ts *tokenSession) cachedHandle(key string, gen uint64) (pkcs11.ObjectHandle, bool) {
	ts.handlesMu.Lock()
	defer ts.handlesMu.Unlock()
	if ts.handleGen != gen {
		return 0, false
	}
	h, ok := ts.handles[key]
	return h, ok
}

func (ts *tokenSession) cacheHandle(key string, gen uint64, h pkcs11.ObjectHandle) {
	ts.handlesMu.Lock()
	defer ts.handlesMu.Unlock()
	if ts.handleGen != gen || ts.handles == nil {
		ts.handles = map[string]pkcs11.ObjectHandle{}
		ts.handleGen = gen
	}
	ts.handles[key] = h
}

func (ts *tokenSession) forgetHandles() {
	ts.handlesMu.Lock()
	defer ts.handlesMu.Unlock()
	ts.handles = nil
}

// DestroyObjects destroys every object with CKA_ID id (a key, or both halves
// of a key pair). Destroying what is already gone is not an error.
func (c *Client) DestroyObjects(ctx context.Context, id []byte) error {
	if len(id) == 0 {
		return fmt.Errorf("%w: empty object id", ErrInvalidInput)
	}
	return c.do(ctx, func(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		c.token.createMu.Lock()
		defer c.token.createMu.Unlock()
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
		c.token.forgetHandles()
		for _, h := range handles {
			if err := p11.DestroyObject(sh, h); err != nil {
				return call("C_DestroyObject", err)
			}
		}
		return nil
	})
}

// ObjectExists reports whether an object with CKA_ID id exists.
func (c *Client) ObjectExists(ctx context.Context, id []byte) (bool, error) {
	var found bool
	err := c.do(ctx, func(p11 *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		_, err := c.findObject(p11, sh, id, pkcs11.CKO_SECRET_KEY)
		if errors.Is(err, ErrKeyNotFound) {
			return nil
		}
		found = err == nil
		return err
	})
	return found, err
}
