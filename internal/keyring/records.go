package keyring

import (
	"context"
	"encoding/hex"
	"strings"
)

// A mount's objects are labelled with its backend UUID, which Vault's
// sys/mounts does not show. So that tidy in another mount (another plugin
// process, even) can prove a mount is gone, each mount keeps a marker on
// the token that ties its UUID to what sys/mounts does show: its accessor,
// and the Vault cluster it belongs to.
//
//	hsmkms/<backend uuid>/.mount/<cluster id>/<accessor>
const markerSegment = "/.mount/"

// MountMarker is what a marker's label says of its mount.
type MountMarker struct {
	ClusterID string `json:"cluster_id"`
	Accessor  string `json:"accessor"`
}

func markerLabel(owner, clusterID, accessor string) string {
	return ObjectLabelPrefix + owner + markerSegment + clusterID + "/" + accessor
}

// ParseMarker reads a marker label; ok is false for any other label.
func ParseMarker(label string) (owner string, m MountMarker, ok bool) {
	owner, ok = LabelOwner(label)
	if !ok {
		return "", m, false
	}
	rest, found := strings.CutPrefix(label, ObjectLabelPrefix+owner+markerSegment)
	if !found {
		return "", m, false
	}
	m.ClusterID, m.Accessor, ok = strings.Cut(rest, "/")
	return owner, m, ok && m.Accessor != ""
}

// PutMountMarker puts this mount's marker, and the records of the KEKs it
// found, on the token.
func (r *Keyring) PutMountMarker(ctx context.Context, client HSM, clusterID, accessor string) error {
	st, err := r.KEK(ctx, r.storage)
	if err != nil {
		return err
	}
	if err := r.recordFoundKEKs(ctx, client, st); err != nil {
		return err
	}
	return client.PutMarker(ctx, markerLabel(r.owner, clusterID, accessor), ObjectLabelPrefix+r.owner+markerSegment)
}

// A KEK found by kek_label carries the label its makers gave it, so
// nothing in it says a mount uses it as a KEK; each mount records the ones
// it uses, so that no mount adopts another's KEK as a data key:
//
//	hsmkms/<backend uuid>/.kek/<hex CKA_ID>
const kekRecordSegment = "/.kek/"

func kekRecordLabel(owner string, id []byte) string {
	return ObjectLabelPrefix + owner + kekRecordSegment + hex.EncodeToString(id)
}

// ParseKEKRecord reads a KEK record's label: the mount and the KEK's
// CKA_ID.
func ParseKEKRecord(label string) (string, []byte, bool) {
	owner, ok := LabelOwner(label)
	if !ok {
		return "", nil, false
	}
	rest, found := strings.CutPrefix(label, ObjectLabelPrefix+owner+kekRecordSegment)
	id, err := hex.DecodeString(rest)
	return owner, id, found && err == nil && len(id) > 0
}

// recordFoundKEKs puts a record of every KEK this mount found by kek_label
// on the token.
func (r *Keyring) recordFoundKEKs(ctx context.Context, client HSM, st *KEKState) error {
	for _, v := range st.Versions {
		if !v.Found {
			continue
		}
		label := kekRecordLabel(r.owner, v.ObjectID)
		if err := client.PutMarker(ctx, label, label); err != nil {
			return err
		}
	}
	return nil
}
