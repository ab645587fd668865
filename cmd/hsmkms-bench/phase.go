package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/loadbench"
)

// phase is one simulated network HSM round trip the scenarios run at: the
// mounts whose plugin process delays every PKCS#11 call by rtt, and the
// socket that process serves its call counters on.
type phase struct {
	rtt    time.Duration
	mounts map[string]string // token kind -> hsmkms mount
	seam   string            // "" : the plugin's calls are not counted
}

// phaseKeys are the keys of a -phase value that name a token's mount.
var phaseKeys = map[string]string{"kms": "softhsm2", "nss-kms": "nss"}

// phaseList is the -phase flag, given once per round trip:
// rtt=2ms,kms=kms-rtt1,nss-kms=kms-nss-rtt1,seam=/tmp/x/seam-rtt1.sock
type phaseList []phase

func (l *phaseList) String() string { return fmt.Sprint(len(*l), " phases") }

func (l *phaseList) Set(v string) error {
	p, err := parsePhase(v)
	if err != nil {
		return err
	}
	for _, q := range *l {
		if q.rtt == p.rtt {
			return fmt.Errorf("two phases at %v", p.rtt)
		}
	}
	*l = append(*l, p)
	return nil
}

func parsePhase(v string) (phase, error) {
	p := phase{mounts: map[string]string{}}
	rttSet := false
	for _, kv := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok || val == "" {
			return phase{}, fmt.Errorf("phase %q: %q is not key=value", v, kv)
		}
		switch {
		case k == "rtt":
			rtts, err := loadbench.ParseRTTs(val)
			if err != nil || len(rtts) != 1 {
				return phase{}, fmt.Errorf("phase %q: rtt %q is not one duration of 0 or more", v, val)
			}
			p.rtt, rttSet = rtts[0], true
		case k == "seam":
			p.seam = val
		case phaseKeys[k] != "":
			p.mounts[phaseKeys[k]] = val
		default:
			return phase{}, fmt.Errorf("phase %q: unknown key %q (want rtt, kms, nss-kms, seam)", v, k)
		}
	}
	if !rttSet || len(p.mounts) == 0 {
		return phase{}, fmt.Errorf("phase %q: needs rtt= and at least one mount (kms=, nss-kms=)", v)
	}
	return p, nil
}

// phaseRecord is what the report keeps of a phase: how long it took and
// the machine's load average (1 minute) around it, since the machine is
// shared and its other work weighs on every figure.
type phaseRecord struct {
	RTT       time.Duration `json:"hsm_rtt_ns"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	LoadStart float64       `json:"load_average_start"`
	LoadEnd   float64       `json:"load_average_end"`
}

// loadAverage is the 1-minute load average; -1 if unreadable.
func loadAverage() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}
