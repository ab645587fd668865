package hsmkms

import (
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// replicationStateTTL bounds how stale the cached replication state may be.
const replicationStateTTL = time.Second

// cachingSystemView answers ReplicationState from a copy at most a second
// old. The SDK's framework asks for it on every request to a path declared
// with Operations, and for an external plugin each ask is a gRPC round trip
// back to Vault: the profile of a key read put 13% of the plugin's CPU there.
// The state changes only when a cluster is promoted or demoted, and a write
// that races such a change is refused by Vault's storage anyway.
type cachingSystemView struct {
	logical.SystemView

	mu      sync.Mutex
	state   consts.ReplicationState
	fetched time.Time
}

func (v *cachingSystemView) ReplicationState() consts.ReplicationState {
	v.mu.Lock()
	defer v.mu.Unlock()
	if time.Since(v.fetched) > replicationStateTTL {
		v.state = v.SystemView.ReplicationState()
		v.fetched = time.Now()
	}
	return v.state
}
