package keyring

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/mitchellh/mapstructure"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// walObject is the WAL entry written before an HSM object is made, so that
// a crash before its owner's storage entry names it can be rolled back.
// Name is the owner: a key name, or the KEK's or the wrapping key's stand-in
// (names no key can have). Label is the label the object gets (entries
// written before labels were recorded have none).
type walObject struct {
	Name     string `json:"name" mapstructure:"name"`
	ObjectID string `json:"object_id" mapstructure:"object_id"` // hex
	Label    string `json:"label,omitempty" mapstructure:"label"`
}

// WALKindObject is the kind of every WAL entry the keyring writes.
const WALKindObject = "hsm-object"

// WALRollbackMinAge leaves a WAL entry alone while the request that wrote
// it may still be running.
const WALRollbackMinAge = 5 * time.Minute

// PendingObject is an HSM object being made under a WAL entry: made (or
// not) by the caller, then either stored by its owner (Stored) or
// abandoned (Abandon). A crash in between leaves the entry to Rollback.
// This is the one WAL sequence of the plugin: every object goes through it.
type PendingObject struct {
	ID    []byte
	Label string

	r      *Keyring
	s      logical.Storage
	client HSM
	walID  string
}

// BeginObject draws a CKA_ID for an object owner will name, and records it
// in a WAL entry before the object exists.
func (r *Keyring) BeginObject(ctx context.Context, s logical.Storage, client HSM, owner, label string) (*PendingObject, error) {
	id, err := client.NewObjectID(ctx)
	if err != nil {
		return nil, err
	}
	walID, err := framework.PutWAL(ctx, s, WALKindObject, &walObject{Name: owner, ObjectID: hex.EncodeToString(id), Label: label})
	if err != nil {
		return nil, fmt.Errorf("writing WAL: %w", err)
	}
	return &PendingObject{ID: id, Label: label, r: r, s: s, client: client, walID: walID}, nil
}

// Abandon destroys the object, if it was made, and drops its WAL entry; if
// the HSM cannot be reached the entry stays for the rollback to retry.
func (p *PendingObject) Abandon(ctx context.Context) {
	if p == nil {
		return
	}
	if err := p.client.DestroyObjects(ctx, p.ID, hsm.ExactLabel(p.Label)); err != nil {
		p.r.log.Warn("could not destroy the HSM object of a failed creation; the WAL rollback will retry", "label", p.Label, "error", err)
		return
	}
	p.drop(ctx)
}

// Stored drops the WAL entry once the owner's storage entry names the
// object. A failure only leaves work for the rollback, which looks in
// storage first and finds the object in use.
func (p *PendingObject) Stored(ctx context.Context) {
	if p != nil {
		p.drop(ctx)
	}
}

func (p *PendingObject) drop(ctx context.Context) {
	if err := framework.DeleteWAL(ctx, p.s, p.walID); err != nil {
		p.r.log.Warn("could not delete a WAL entry", "label", p.Label, "error", err)
	}
}

// objectInUse reports whether storage names object id for owner. The
// rollback asks it before destroying anything, because a request may have
// stored its entry and failed only to delete the WAL entry.
type objectInUse func(ctx context.Context, s logical.Storage, owner string, id []byte) (bool, error)

// objectUsers dispatches on the WAL entry's owner: the KEK, the wrapping
// key, and otherwise a key of that name.
var objectUsers = map[string]objectInUse{
	kekWALOwner: func(ctx context.Context, s logical.Storage, _ string, id []byte) (bool, error) {
		st, err := LoadKEKState(ctx, s)
		if err != nil {
			return false, err
		}
		return st.InUse(id), nil
	},
	WrappingKeyOwner: func(ctx context.Context, s logical.Storage, _ string, id []byte) (bool, error) {
		w, err := LoadWrappingKey(ctx, s)
		return w != nil && bytes.Equal(w.ObjectID, id), err
	},
}

func keyUsesObject(ctx context.Context, s logical.Storage, name string, id []byte) (bool, error) {
	k, err := Load(ctx, s, name)
	if err != nil || k == nil {
		return false, err
	}
	for _, v := range k.Versions {
		if bytes.Equal(v.ObjectID, id) || bytes.Equal(v.HMACObjectID, id) {
			return true, nil
		}
	}
	return false, nil
}

// Rollback destroys the HSM object a WAL entry records unless its owner's
// storage entry uses it. Only an object with the recorded label (or, for
// entries from before labels were recorded, one of this mount's labels) is
// destroyed. Vault calls it, through the framework, once the entry is
// WALRollbackMinAge old.
func (r *Keyring) Rollback(ctx context.Context, s logical.Storage, kind string, data interface{}) error {
	if kind != WALKindObject {
		return fmt.Errorf("unknown WAL kind %q", kind)
	}
	var entry walObject
	if err := mapstructure.Decode(data, &entry); err != nil {
		return fmt.Errorf("decoding WAL entry: %w", err)
	}
	objectID, err := hex.DecodeString(entry.ObjectID)
	if err != nil || len(objectID) == 0 {
		return fmt.Errorf("WAL entry for %q has no valid object id", entry.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	inUse, ok := objectUsers[entry.Name]
	if !ok {
		inUse = keyUsesObject
	}
	used, err := inUse(ctx, s, entry.Name, objectID)
	if err != nil || used {
		return err
	}
	client, err := r.open(ctx, s)
	if err != nil {
		return err
	}
	owned := r.OwnsLabel
	if entry.Label != "" {
		owned = hsm.ExactLabel(entry.Label)
	}
	err = client.DestroyObjects(ctx, objectID, owned)
	if isNotOwned(err) {
		// The CKA_ID names something this mount did not make: nothing of
		// ours is left to roll back.
		r.log.Warn("a WAL entry names an object this mount did not make; it was left on the token", "owner", entry.Name, "error", err)
		return nil
	}
	return err
}

func isNotOwned(err error) bool { return errors.Is(err, hsm.ErrNotOwned) }
