package hsmkms

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/mitchellh/mapstructure"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// walObject is the WAL entry written before an HSM object is made, so that
// a crash before its owner's storage entry names it can be rolled back.
// Owner is a key name, kekWALName or wrappingKeyName; Label is the label
// the object gets (entries written before labels were recorded have none).
type walObject struct {
	Name     string `json:"name" mapstructure:"name"`
	ObjectID string `json:"object_id" mapstructure:"object_id"` // hex
	Label    string `json:"label,omitempty" mapstructure:"label"`
}

const walKindObject = "hsm-object"

// walRollbackMinAge leaves a WAL entry alone while the request that wrote
// it may still be running.
const walRollbackMinAge = 5 * time.Minute

// pendingObject is an HSM object being made under a WAL entry: made (or
// not) by the caller, then either stored by its owner (stored) or
// abandoned (abandon). A crash in between leaves the entry to walRollback.
type pendingObject struct {
	ID    []byte
	Label string

	b      *backend
	s      logical.Storage
	client *hsm.Client
	walID  string
}

// beginObject draws a CKA_ID for an object owner will name, and records it
// in a WAL entry before the object exists.
func (b *backend) beginObject(ctx context.Context, s logical.Storage, client *hsm.Client, owner, label string) (*pendingObject, error) {
	id, err := client.NewObjectID(ctx)
	if err != nil {
		return nil, err
	}
	walID, err := framework.PutWAL(ctx, s, walKindObject, &walObject{Name: owner, ObjectID: hex.EncodeToString(id), Label: label})
	if err != nil {
		return nil, fmt.Errorf("writing WAL: %w", err)
	}
	return &pendingObject{ID: id, Label: label, b: b, s: s, client: client, walID: walID}, nil
}

// abandon destroys the object, if it was made, and drops its WAL entry; if
// the HSM cannot be reached the entry stays for the rollback to retry.
func (p *pendingObject) abandon(ctx context.Context) {
	if p == nil {
		return
	}
	if err := p.client.DestroyObjects(ctx, p.ID, hsm.ExactLabel(p.Label)); err != nil {
		p.b.Logger().Warn("could not destroy the HSM object of a failed creation; the WAL rollback will retry", "label", p.Label, "error", err)
		return
	}
	p.drop(ctx)
}

// stored drops the WAL entry once the owner's storage entry names the
// object. A failure only leaves work for the rollback, which looks in
// storage first and finds the object in use.
func (p *pendingObject) stored(ctx context.Context) {
	if p != nil {
		p.drop(ctx)
	}
}

func (p *pendingObject) drop(ctx context.Context) {
	if err := framework.DeleteWAL(ctx, p.s, p.walID); err != nil {
		p.b.Logger().Warn("could not delete a WAL entry", "label", p.Label, "error", err)
	}
}

// objectInUse reports whether storage names object id for owner. The
// rollback asks it before destroying anything, because a request may have
// stored its entry and failed only to delete the WAL entry.
type objectInUse func(ctx context.Context, s logical.Storage, owner string, id []byte) (bool, error)

// objectUsers dispatches on the WAL entry's owner: the KEK, the wrapping
// key, and otherwise a key of that name.
var objectUsers = map[string]objectInUse{
	kekWALName: func(ctx context.Context, s logical.Storage, _ string, id []byte) (bool, error) {
		st, err := loadKEKState(ctx, s)
		if err != nil {
			return false, err
		}
		return kekInUse(st, id), nil
	},
	wrappingKeyName: func(ctx context.Context, s logical.Storage, _ string, id []byte) (bool, error) {
		w, err := loadWrappingKey(ctx, s)
		return w != nil && bytes.Equal(w.ObjectID, id), err
	},
}

func keyUsesObject(ctx context.Context, s logical.Storage, name string, id []byte) (bool, error) {
	k, err := loadKey(ctx, s, name)
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

// walRollback destroys an HSM object recorded in a WAL entry unless its
// owner's storage entry uses it. Only an object with the recorded label
// (or, for entries from before labels were recorded, one of this mount's
// labels) is destroyed.
func (b *backend) walRollback(ctx context.Context, req *logical.Request, kind string, data interface{}) error {
	if kind != walKindObject {
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
	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	inUse, ok := objectUsers[entry.Name]
	if !ok {
		inUse = keyUsesObject
	}
	used, err := inUse(ctx, req.Storage, entry.Name, objectID)
	if err != nil || used {
		return err
	}
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return err
	}
	owned := b.ownsLabel
	if entry.Label != "" {
		owned = hsm.ExactLabel(entry.Label)
	}
	err = client.DestroyObjects(ctx, objectID, owned)
	if errors.Is(err, hsm.ErrNotOwned) {
		// The CKA_ID names something this mount did not make: nothing of
		// ours is left to roll back.
		b.Logger().Warn("a WAL entry names an object this mount did not make; it was left on the token", "owner", entry.Name, "error", err)
		return nil
	}
	return err
}

// ownsLabel reports whether label is one this mount gives the objects it
// makes: hsmkms/<mount uuid>/..., or a KEK's <kek_label>/<mount uuid>/v<n>.
func (b *backend) ownsLabel(label string) bool {
	if owner, ok := labelOwner(label); ok {
		return owner == b.owner
	}
	owner, _, ok := kekLabelOwner(label)
	return ok && owner == b.owner
}

// kekLabelOwner parses the label of a KEK a mount made,
// <kek_label>/<mount uuid>/v<n>, into the mount and the version.
func kekLabelOwner(label string) (string, int, bool) {
	i := strings.LastIndex(label, "/v")
	if i < 0 {
		return "", 0, false
	}
	var version int
	if _, err := fmt.Sscanf(label[i+2:], "%d", &version); err != nil || fmt.Sprint(version) != label[i+2:] || version < 1 {
		return "", 0, false
	}
	rest := label[:i]
	j := strings.LastIndex(rest, "/")
	if j < 1 || !isMountUUID(rest[j+1:]) {
		return "", 0, false
	}
	return rest[j+1:], version, true
}

// isMountUUID: Vault's backend UUIDs are RFC 4122 text (8-4-4-4-12 hex).
func isMountUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}
