package hsmkms

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// ensureMountMarker puts this mount's marker, and the records of the KEKs
// it found, on the token once per process, when the mount's accessor is
// known (every request carries it). See keyring/records.go.
func (b *backend) ensureMountMarker(ctx context.Context, client *hsm.Client, accessor string) {
	if accessor == "" || b.markerDone.Load() {
		return
	}
	if err := b.ring.PutMountMarker(ctx, client, b.clusterID(ctx), accessor); err != nil {
		b.Logger().Warn("could not record this mount on the token; tidy in other mounts cannot prove it gone until it is", "error", err)
		return
	}
	b.markerDone.Store(true)
}

// clusterID is the Vault cluster's id. OpenBao and older Vaults may not
// answer: the marker then names no cluster, and tidy elsewhere treats the
// mount as unprovable.
func (b *backend) clusterID(ctx context.Context) string {
	if sys := b.System(); sys != nil {
		id, _ := sys.ClusterID(ctx)
		return id
	}
	return ""
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
