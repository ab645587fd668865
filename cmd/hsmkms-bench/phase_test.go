package main

import (
	"maps"
	"testing"
	"time"
)

func TestPhaseFlag(t *testing.T) {
	var l phaseList
	for _, v := range []string{
		"rtt=0,kms=kms,nss-kms=kms-nss,seam=/tmp/b/seam.sock",
		"rtt=2ms,kms=kms-rtt1",
	} {
		if err := l.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if len(l) != 2 || l[0].rtt != 0 || l[0].seam != "/tmp/b/seam.sock" ||
		!maps.Equal(l[0].mounts, map[string]string{"softhsm2": "kms", "nss": "kms-nss"}) ||
		l[1].rtt != 2*time.Millisecond || l[1].seam != "" || !maps.Equal(l[1].mounts, map[string]string{"softhsm2": "kms-rtt1"}) {
		t.Fatalf("%+v", l)
	}
	for _, bad := range []string{
		"rtt=2ms,kms=other",     // a second phase at 2 ms
		"kms=kms",               // no rtt
		"rtt=1ms",               // no mount
		"rtt=-1ms,kms=kms",      // negative
		"rtt=1ms 2ms,kms=kms",   // two round trips
		"rtt=1ms,kms=",          // empty mount
		"rtt=1ms,kms=kms,x=y",   // unknown key
		"rtt=1ms,kms=kms,nss",   // not key=value
		"rtt=fast,kms=kms-fast", // not a duration
	} {
		if err := l.Set(bad); err == nil {
			t.Errorf("-phase %q accepted", bad)
		}
	}
	if len(l) != 2 {
		t.Fatalf("a refused phase was kept: %d phases", len(l))
	}
}
