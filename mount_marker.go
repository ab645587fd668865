package hsmkms

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// A mount's objects are labelled with its backend UUID, which Vault's
// sys/mounts does not show. So that tidy in another mount (another plugin
// process, even) can prove a mount is gone, each mount keeps a marker on
// the token that ties its UUID to what sys/mounts does show: its accessor,
// and the Vault cluster it belongs to.
//
//	hsmkms/<backend uuid>/.mount/<cluster id>/<accessor>
const markerSegment = "/.mount/"

func markerLabel(owner, clusterID, accessor string) string {
	return objectLabelPrefix + owner + markerSegment + clusterID + "/" + accessor
}

// mountMarker is what a marker's label says of its mount.
type mountMarker struct {
	ClusterID string `json:"cluster_id"`
	Accessor  string `json:"accessor"`
}

// parseMarker reads a marker label; ok is false for any other label.
func parseMarker(label string) (owner string, m mountMarker, ok bool) {
	owner, ok = labelOwner(label)
	if !ok {
		return "", m, false
	}
	rest, found := strings.CutPrefix(label, objectLabelPrefix+owner+markerSegment)
	if !found {
		return "", m, false
	}
	m.ClusterID, m.Accessor, ok = strings.Cut(rest, "/")
	return owner, m, ok && m.Accessor != ""
}

// A KEK found by kek_label carries the label its makers gave it, so
// nothing in it says a mount uses it as a KEK; each mount records the ones
// it uses, so that no mount adopts another's KEK as a data key:
//
//	hsmkms/<backend uuid>/.kek/<hex CKA_ID>
const kekRecordSegment = "/.kek/"

func kekRecordLabel(owner string, id []byte) string {
	return objectLabelPrefix + owner + kekRecordSegment + hex.EncodeToString(id)
}

// parseKEKRecord reads a KEK record's label: the mount and the KEK's CKA_ID.
func parseKEKRecord(label string) (string, []byte, bool) {
	owner, ok := labelOwner(label)
	if !ok {
		return "", nil, false
	}
	rest, found := strings.CutPrefix(label, objectLabelPrefix+owner+kekRecordSegment)
	id, err := hex.DecodeString(rest)
	return owner, id, found && err == nil && len(id) > 0
}

// recordFoundKEKs puts a record of every KEK this mount found by kek_label
// on the token.
func (b *backend) recordFoundKEKs(ctx context.Context, client *hsm.Client, st *kekState) error {
	for _, v := range st.Versions {
		if !v.Found {
			continue
		}
		label := kekRecordLabel(b.owner, v.ObjectID)
		if err := client.PutMarker(ctx, label, label); err != nil {
			return err
		}
	}
	return nil
}

// ensureMountMarker puts this mount's marker, and the records of the KEKs
// it found, on the token once per process, when the mount's accessor is
// known (every request carries it).
func (b *backend) ensureMountMarker(ctx context.Context, client *hsm.Client, accessor string) {
	if accessor == "" || b.markerDone.Load() {
		return
	}
	if st, err := b.kek(ctx, b.storage); err == nil {
		if err := b.recordFoundKEKs(ctx, client, st); err != nil {
			b.Logger().Warn("could not record this mount's KEK on the token", "error", err)
			return
		}
	}
	clusterID := ""
	if sys := b.System(); sys != nil {
		// OpenBao and older Vaults may not answer: the marker then names
		// no cluster, and tidy elsewhere treats the mount as unprovable.
		clusterID, _ = sys.ClusterID(ctx)
	}
	label := markerLabel(b.owner, clusterID, accessor)
	if err := client.PutMarker(ctx, label, objectLabelPrefix+b.owner+markerSegment); err != nil {
		b.Logger().Warn("could not record this mount on the token; tidy in other mounts cannot prove it gone until it is", "error", err)
		return
	}
	b.markerDone.Store(true)
}

// mountedAccessors reads sys/mounts with the caller's token: the accessors
// of the secrets engines this Vault mounts.
func mountedAccessors(addr, token string) (map[string]string, error) {
	conf := api.DefaultConfig()
	if conf.Error != nil {
		return nil, conf.Error
	}
	if addr != "" {
		conf.Address = addr
	}
	conf.Timeout = 15 * time.Second
	c, err := api.NewClient(conf)
	if err != nil {
		return nil, err
	}
	c.SetToken(token)
	mounts, err := c.Sys().ListMounts()
	if err != nil {
		return nil, fmt.Errorf("reading sys/mounts at %s: %w", conf.Address, err)
	}
	out := make(map[string]string, len(mounts))
	for path, m := range mounts {
		out[m.Accessor] = path
	}
	return out, nil
}
