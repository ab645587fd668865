package hsmkms

import (
	"context"
	"errors"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// periodic is the backend's periodic function (Vault calls it about once
// a minute). It does nothing on performance standbys and replication
// secondaries, which must not write storage nor touch the HSM for it. On
// the active node it resumes an unfinished KEK rewrap, writes the usage
// counted since each key's last flush (at most once a minute per key),
// destroys the keys whose deletion date has passed, and looks for keys due
// for rotation once an hour.
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	if state := b.System().ReplicationState(); state.HasState(consts.ReplicationPerformanceStandby |
		consts.ReplicationPerformanceSecondary | consts.ReplicationDRSecondary) {
		return nil
	}
	b.ring.ResumeRewrap(ctx, req.Storage)
	var errs []error
	if _, err := b.ring.FlushUsage(ctx, req.Storage, false); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, b.purgeDueKeys(ctx, req.Storage))
	errs = append(errs, b.rotateDueKeys(ctx, req))
	return errors.Join(errs...)
}

// purgeDueKeys destroys the keys whose deletion date has passed. With no
// HSM configured or reachable there is nothing to do yet: the next run
// tries again, and the keys stay pending meanwhile.
func (b *backend) purgeDueKeys(ctx context.Context, s logical.Storage) error {
	client, _, err := b.hsmClient(ctx, s)
	if errors.Is(err, errNotConfigured) {
		return nil
	}
	if err != nil {
		return err
	}
	purged, err := b.ring.PurgeDue(ctx, s, client)
	for _, name := range purged {
		b.stats.count("purge")
		b.Logger().Info("key purged after its deletion window", "key", name)
	}
	return err
}
