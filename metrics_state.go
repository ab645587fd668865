package hsmkms

import (
	"context"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

// stateDescs describe the metrics read at scrape time: what the mount's
// HSM client, keys and KEK are now.
type stateDescs struct {
	buildInfo, startTime *prometheus.Desc

	loginState, hsmUp *prometheus.Desc

	poolSize, poolOpen, poolInUse, poolIdle, poolWaiting *prometheus.Desc
	poolWaits, poolWaitSeconds, poolReplaced             *prometheus.Desc
	retries, reinitialisations                           *prometheus.Desc

	cacheEntries, cachePinned, cacheCapacity             *prometheus.Desc
	cacheHits, cacheMisses, cacheEvictions, cacheUnwraps *prometheus.Desc

	kekLatest, rewrapTarget, rewrapBlobs   *prometheus.Desc
	rewrapDone, rewrapError, rewrapStarted *prometheus.Desc
	keysByState, keysByResidency           *prometheus.Desc
}

func newStateDescs() *stateDescs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &stateDescs{
		buildInfo: d("hsmkms_build_info", "The plugin's version; always 1.", "version"),
		startTime: d("hsmkms_start_time_seconds", "When this mount's backend started in the plugin process (Unix time): its counters count from then."),

		loginState: d("hsmkms_hsm_login_state", "1 for the state of this mount's token login, as its last PKCS#11 call or opening found it; "+
			"absent until the mount first opens the HSM.", "state"),
		hsmUp: d("hsmkms_hsm_up", "1 when this mount's HSM is initialised and logged in, 0 when it is unreachable or refused the PIN; "+
			"absent until the mount first opens the HSM."),

		poolSize:        d("hsmkms_pool_size", "Most sessions the mount's pool keeps open."),
		poolOpen:        d("hsmkms_pool_sessions_open", "Sessions the pool has open, idle or in use."),
		poolInUse:       d("hsmkms_pool_sessions_in_use", "Sessions in use by a request now."),
		poolIdle:        d("hsmkms_pool_sessions_idle", "Sessions open and idle now."),
		poolWaiting:     d("hsmkms_pool_waiting", "Requests waiting for a session now, every session being in use."),
		poolWaits:       d("hsmkms_pool_waits_total", "Requests that found every session in use and waited."),
		poolWaitSeconds: d("hsmkms_pool_wait_seconds_total", "Time requests spent waiting for a session, summed; a wait counts once it ends."),
		poolReplaced:    d("hsmkms_pool_sessions_replaced_total", "Sessions closed and replaced after they failed."),
		retries: d("hsmkms_pkcs11_retries_total", "Operations made again after a session, an object handle or the device failed "+
			"(on a fresh session, or after re-initialising the module)."),
		reinitialisations: d("hsmkms_hsm_reinitialisations_total", "Device-level errors after which this mount re-initialised the PKCS#11 module "+
			"and logged in again (or found it done by another mount)."),

		cacheEntries:   d("hsmkms_unwrapped_cache_entries", "Unwrapped copies of wrapped keys held on the token now."),
		cachePinned:    d("hsmkms_unwrapped_cache_pinned_entries", "Cached copies in use by a request now."),
		cacheCapacity:  d("hsmkms_unwrapped_cache_capacity", "Most entries the cache keeps (unwrapped_cache_size)."),
		cacheHits:      d("hsmkms_unwrapped_cache_hits_total", "Uses of a wrapped key that found its unwrapped copy cached."),
		cacheMisses:    d("hsmkms_unwrapped_cache_misses_total", "Uses of a wrapped key that had to unwrap it."),
		cacheEvictions: d("hsmkms_unwrapped_cache_evictions_total", "Cached copies destroyed, expired or past the size bound."),
		cacheUnwraps:   d("hsmkms_unwrapped_cache_unwraps_total", "Wrapped keys unwrapped into the cache."),

		kekLatest:     d("hsmkms_kek_latest_version", "The version of the KEK new wrapped keys use (0: none yet)."),
		rewrapTarget:  d("hsmkms_kek_rewrap_target_version", "The KEK version the latest rewrap job moves blobs under."),
		rewrapBlobs:   d("hsmkms_kek_rewrap_blobs_rewrapped", "Blobs the latest rewrap job has moved, as last saved (every 50 keys, and at its end)."),
		rewrapDone:    d("hsmkms_kek_rewrap_done", "1 when the latest rewrap job has finished, 0 while it runs or waits to resume."),
		rewrapError:   d("hsmkms_kek_rewrap_error", "1 when the latest rewrap job stopped on an error; it resumes at the next periodic run."),
		rewrapStarted: d("hsmkms_kek_rewrap_started_timestamp_seconds", "When the latest rewrap job started (Unix time)."),

		keysByState:     d("hsmkms_keys_by_state", "This mount's keys by state.", "state"),
		keysByResidency: d("hsmkms_keys_by_residency", "This mount's keys by residency (hsm, wrapped).", "residency"),
	}
}

func (d *stateDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{
		d.buildInfo, d.startTime, d.loginState, d.hsmUp,
		d.poolSize, d.poolOpen, d.poolInUse, d.poolIdle, d.poolWaiting, d.poolWaits, d.poolWaitSeconds, d.poolReplaced,
		d.retries, d.reinitialisations,
		d.cacheEntries, d.cachePinned, d.cacheCapacity, d.cacheHits, d.cacheMisses, d.cacheEvictions, d.cacheUnwraps,
		d.kekLatest, d.rewrapTarget, d.rewrapBlobs, d.rewrapDone, d.rewrapError, d.rewrapStarted,
		d.keysByState, d.keysByResidency,
	}
}

// stateCollector reads one scrape's state metrics. It never opens the
// HSM: a scrape must not log in (a refused PIN would cost a try at every
// scrape), so a mount that has not opened its HSM since the plugin started
// shows no HSM metrics until a request opens it.
type stateCollector struct {
	b       *backend
	ctx     context.Context
	storage logical.Storage
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.b.metrics.state.all() {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.b.metrics.state
	emit := func(desc *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(desc, t, v, labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(desc, err)
		}
		ch <- m
	}
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		emit(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v float64) { emit(desc, prometheus.CounterValue, v) }

	gauge(d.buildInfo, 1, version)
	gauge(d.startTime, float64(c.b.stats.started.UnixNano())/1e9)

	c.b.clientMu.RLock()
	client := c.b.client
	c.b.clientMu.RUnlock()
	var state hsm.LoginState
	if client != nil {
		state = client.LoginState()
	} else if failed, _ := c.b.openFailure.Load().(hsm.LoginState); failed != "" {
		state = failed
	}
	if state != "" {
		for _, s := range hsm.LoginStates() {
			gauge(d.loginState, flag(s == state), string(s))
		}
		gauge(d.hsmUp, flag(state == hsm.LoginOK))
	}
	if client != nil {
		pool := client.Stats()
		gauge(d.poolSize, float64(pool.Size))
		gauge(d.poolOpen, float64(pool.Open))
		gauge(d.poolInUse, float64(pool.InUse))
		gauge(d.poolIdle, float64(pool.Idle))
		gauge(d.poolWaiting, float64(pool.Waiting))
		counter(d.poolWaits, float64(pool.Waits))
		counter(d.poolWaitSeconds, pool.WaitTime.Seconds())
		counter(d.poolReplaced, float64(pool.Replaced))
		counter(d.retries, float64(pool.Retries))
		counter(d.reinitialisations, float64(pool.Reconnects))

		cache := client.UnwrappedCacheStats()
		gauge(d.cacheEntries, float64(cache.Entries))
		gauge(d.cachePinned, float64(cache.Pinned))
		gauge(d.cacheCapacity, float64(cache.Size))
		counter(d.cacheHits, float64(cache.Hits))
		counter(d.cacheMisses, float64(cache.Misses))
		counter(d.cacheEvictions, float64(cache.Evictions))
		counter(d.cacheUnwraps, float64(cache.Unwraps))
	}

	if st, err := c.b.ring.KEK(c.ctx, c.storage); err != nil {
		c.b.Logger().Warn("metrics: the KEK state could not be read; its metrics are left out", "error", err)
	} else {
		gauge(d.kekLatest, float64(st.Latest))
		if job := st.Rewrap; job != nil {
			gauge(d.rewrapTarget, float64(job.Target))
			gauge(d.rewrapBlobs, float64(job.Rewrapped))
			gauge(d.rewrapDone, flag(!job.Running()))
			gauge(d.rewrapError, flag(job.Error != ""))
			gauge(d.rewrapStarted, float64(job.Started.UnixNano())/1e9)
		}
	}

	counts, err := c.b.ring.Count(c.ctx, c.storage)
	if err != nil {
		c.b.Logger().Warn("metrics: the keys could not be counted; their metrics are left out", "error", err)
		return
	}
	for _, s := range keyring.States {
		gauge(d.keysByState, float64(counts.ByState[s]), s)
	}
	for _, r := range []string{keyring.ResidencyHSM, keyring.ResidencyWrapped} {
		gauge(d.keysByResidency, float64(counts.ByResidency[r]), r)
	}
}

func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
