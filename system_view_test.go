package hsmkms

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

type countingSystemView struct {
	logical.StaticSystemView
	calls int
}

func (c *countingSystemView) ReplicationState() consts.ReplicationState {
	c.calls++
	return consts.ReplicationPerformanceStandby
}

func TestReplicationStateIsCachedBriefly(t *testing.T) {
	inner := &countingSystemView{}
	v := &cachingSystemView{SystemView: inner}
	for i := 0; i < 100; i++ {
		if !v.ReplicationState().HasState(consts.ReplicationPerformanceStandby) {
			t.Fatal("state lost")
		}
	}
	if inner.calls != 1 {
		t.Fatalf("%d calls for 100 asks within the TTL", inner.calls)
	}
	v.fetched = time.Now().Add(-2 * replicationStateTTL)
	v.ReplicationState()
	if inner.calls != 2 {
		t.Fatal("a stale state was not fetched again")
	}
}
