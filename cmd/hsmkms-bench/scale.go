package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/loadbench"
)

// The scale scenario (issue 11): many wrapped keys in one mount against a
// few in another, on the same SoftHSM2 token and plugin process, and
// wrapped against hsm residency for the same encrypt.
const (
	smallKeys      = 10
	scaleSlice     = time.Second
	scaleCacheTTL  = 3600 // seconds: the whole run stays within one TTL
	maxCacheSize   = 1000000
	pluginCommand  = "vault-plugin-secrets-hsmkms"
	scaleKeyType   = "aes256-gcm96"
	scaleKeyFormat = "scale-%06d"
)

type scaleOptions struct {
	keys       int
	mount      string // many wrapped keys
	smallMount string // smallKeys wrapped keys and smallKeys hsm keys
	// duration is the measured encrypt phase, both mounts together (and
	// again for the residency comparison); 0: three times the scenario
	// duration.
	duration time.Duration
	// warmUpMax bounds the warm-up: a miss costs far more than a hit, and
	// on a token whose object search grows with its objects the pass over
	// every key may not end in any useful time. The measured phase then
	// starts from a partly filled cache, and its hit rate shows it.
	warmUpMax time.Duration
}

// rssReading is the plugin's resident memory at a stage of the scenario,
// with the scale mount's cache entries (session objects in the token,
// whose memory a software token such as SoftHSM2 keeps in the plugin's
// process).
type rssReading struct {
	Stage        string `json:"stage"`
	RSSBytes     int64  `json:"rss_bytes"`
	CacheEntries int    `json:"cache_entries"`
}

type scaleReport struct {
	Keys             int     `json:"keys"`
	Mount            string  `json:"mount"`
	SmallMount       string  `json:"small_mount"`
	SmallKeys        int     `json:"small_keys"`
	CacheSize        int     `json:"unwrapped_cache_size"`
	CacheTTLSeconds  int     `json:"unwrapped_cache_ttl"`
	Workers          int     `json:"workers"`
	CreateElapsed    int64   `json:"create_elapsed_ns"`
	CreateKeysPerSec float64 `json:"create_keys_per_sec"`
	CreateErrors     int64   `json:"create_errors"`
	// WarmUp: every key of both mounts was used once before the measured
	// phase, so that phase sees the cache as a long-running mount would.
	WarmUp        bool          `json:"warm_up"`
	WarmUpKeys    int64         `json:"warm_up_keys"` // keys used in the warm-up, of Keys
	WarmUpMax     time.Duration `json:"warm_up_max_ns"`
	WarmUpElapsed time.Duration `json:"warm_up_elapsed_ns"`
	// Slices is how many alternating slices of SliceNs each side of a
	// comparison had.
	Slices  int           `json:"slices"`
	SliceNs time.Duration `json:"slice_ns"`
	// Cache deltas over the measured phase (GET status of the scale mount).
	Hits      uint64                `json:"hits"`
	Misses    uint64                `json:"misses"`
	HitRate   float64               `json:"hit_rate"`
	Evictions uint64                `json:"evictions"`
	Unwraps   uint64                `json:"unwraps"`
	CacheEnd  loadbench.CacheStatus `json:"cache_at_end"`
	PluginPID int                   `json:"plugin_pid"`
	RSS       []rssReading          `json:"rss"`

	ScaleP50, SmallP50        time.Duration `json:"-"`
	ScaleP99, SmallP99        time.Duration `json:"-"`
	P50Ratio                  float64       `json:"p50_ratio"`
	ResidencyItemsPerSecRatio float64       `json:"residency_items_per_sec_ratio"` // wrapped / hsm
	ResidencyP50Ratio         float64       `json:"residency_p50_ratio"`           // wrapped / hsm
}

// runScale makes the two mounts on the SoftHSM2 token, measures and
// returns the report, the results (on the SoftHSM2 token) and the targets.
func runScale(ctx context.Context, c *loadbench.HTTPClient, o options, so scaleOptions, encrypt []byte) (*scaleReport, []loadbench.Result, []loadbench.Ratio, error) {
	n := o.concurrency
	dur := so.duration
	if dur <= 0 {
		dur = 3 * o.duration
	}
	rounds := max(1, int(dur/(2*scaleSlice)))
	rep := &scaleReport{Keys: so.keys, Mount: so.mount, SmallMount: so.smallMount, SmallKeys: smallKeys,
		CacheSize: min(max(so.keys, 1), maxCacheSize), CacheTTLSeconds: scaleCacheTTL, Workers: n,
		Slices: rounds, SliceNs: scaleSlice, PluginPID: o.pluginPID}
	if rep.PluginPID <= 0 {
		rep.PluginPID = loadbench.FindProcess(pluginCommand)
	}
	if err := scaleMounts(ctx, c, o.softhsm, so, rep.CacheSize); err != nil {
		return nil, nil, nil, err
	}
	var results []loadbench.Result
	add := func(r loadbench.Result) loadbench.Result {
		r.Token = o.softhsm.kind
		results = append(results, r)
		fmt.Fprintf(os.Stderr, "%-70s %10.0f items/s  p50 %s  errors %d %s\n", r.Key(), r.ItemsPerSec, r.P50, r.Errors, r.FirstError)
		return r
	}
	encryptWith := func(mount, name string) error { return c.Post(ctx, mount+"/encrypt/"+name, encrypt) }
	randomKey := func(mount, format string, count int) loadbench.Worker {
		return func(ctx context.Context, _ int) error {
			return c.Post(ctx, fmt.Sprintf("%s/encrypt/"+format, mount, rand.IntN(count)), encrypt)
		}
	}

	// The small mount: smallKeys keys of each residency, each used once.
	create := func(mount, name, residency string) error {
		body := fmt.Sprintf(`{"type":%q}`, scaleKeyType)
		if residency != "" {
			body = fmt.Sprintf(`{"type":%q,"residency":%q}`, scaleKeyType, residency)
		}
		_, err := c.PostJSON(ctx, mount+"/keys/"+name, []byte(body))
		return err
	}
	for i := 0; i < smallKeys; i++ {
		for _, k := range []struct{ name, residency string }{{fmt.Sprintf("small-w-%d", i), ""}, {fmt.Sprintf("small-h-%d", i), "hsm"}} {
			if err := create(so.smallMount, k.name, k.residency); err != nil {
				return nil, nil, nil, err
			}
			if err := encryptWith(so.smallMount, k.name); err != nil {
				return nil, nil, nil, err
			}
		}
	}
	if err := checkResidency(ctx, c, so.smallMount, "small-w-0", "wrapped"); err != nil {
		return nil, nil, nil, err
	}
	if err := checkResidency(ctx, c, so.smallMount, "small-h-0", "hsm"); err != nil {
		return nil, nil, nil, err
	}

	// wrapped against hsm first, while the token holds only the small
	// mount's objects.
	wrappedName := fmt.Sprintf("residency: encrypt 64 B, random key of %d wrapped", smallKeys)
	hsmName := fmt.Sprintf("residency: encrypt 64 B, random key of %d hsm", smallKeys)
	res := loadbench.RunAlternating(ctx, n, scaleSlice, rounds, []loadbench.Contender{
		{Name: wrappedName, Op: randomKey(so.smallMount, "small-w-%d", smallKeys)},
		{Name: hsmName, Op: randomKey(so.smallMount, "small-h-%d", smallKeys)},
	})
	wrapped, hsmRes := add(res[0]), add(res[1])

	rss := func(stage string) {
		r := rssReading{Stage: stage, RSSBytes: loadbench.ProcessRSS(rep.PluginPID)}
		if r.RSSBytes == 0 { // the plugin was restarted, or the pid was unknown
			if pid := loadbench.FindProcess(pluginCommand); pid > 0 {
				rep.PluginPID = pid
				r.RSSBytes = loadbench.ProcessRSS(pid)
			}
		}
		if st, err := c.UnwrappedCache(ctx, so.mount); err == nil {
			r.CacheEntries = st.Entries
		}
		rep.RSS = append(rep.RSS, r)
		fmt.Fprintf(os.Stderr, "scale: plugin RSS %s: %.1f MiB, %d cache entries\n", stage, mib(r.RSSBytes), r.CacheEntries)
	}
	rss("before creation")

	var created atomic.Int64
	stop := progress(func() string {
		return fmt.Sprintf("scale: %d/%d keys created, plugin RSS %.1f MiB", created.Load(), so.keys, mib(loadbench.ProcessRSS(rep.PluginPID)))
	})
	cr := loadbench.RunCount(ctx, fmt.Sprintf("scale: create wrapped %s key (%d keys)", scaleKeyType, so.keys), n, so.keys,
		func(ctx context.Context, i int) error {
			err := create(so.mount, fmt.Sprintf(scaleKeyFormat, i), "")
			if err == nil {
				created.Add(1)
			}
			return err
		})
	stop()
	cr = add(cr)
	rep.CreateElapsed, rep.CreateKeysPerSec, rep.CreateErrors = int64(cr.Elapsed), cr.ItemsPerSec, cr.Errors
	if so.keys > 0 {
		if err := checkResidency(ctx, c, so.mount, fmt.Sprintf(scaleKeyFormat, 0), "wrapped"); err != nil {
			return nil, nil, nil, err
		}
	}
	rss("after creation")

	var warmed atomic.Int64
	stop = progress(func() string {
		return fmt.Sprintf("scale: warm-up %d/%d keys, plugin RSS %.1f MiB", warmed.Load(), so.keys, mib(loadbench.ProcessRSS(rep.PluginPID)))
	})
	warmCtx, cancel := context.WithCancel(ctx)
	if so.warmUpMax > 0 {
		warmCtx, cancel = context.WithTimeout(ctx, so.warmUpMax)
	}
	wu := loadbench.RunCount(warmCtx, "scale: warm-up, encrypt 64 B once with every key", n, so.keys,
		func(ctx context.Context, i int) error {
			err := encryptWith(so.mount, fmt.Sprintf(scaleKeyFormat, i))
			if err == nil {
				warmed.Add(1)
			}
			return err
		})
	cancel()
	stop()
	wu = add(wu)
	rep.WarmUp, rep.WarmUpKeys, rep.WarmUpMax, rep.WarmUpElapsed = true, warmed.Load(), so.warmUpMax, wu.Elapsed
	rss("after warm-up")

	before, err := c.UnwrappedCache(ctx, so.mount)
	if err != nil {
		return nil, nil, nil, err
	}
	scaleName := fmt.Sprintf("scale: encrypt 64 B, random key of %d wrapped", so.keys)
	smallName := fmt.Sprintf("scale: encrypt 64 B, random key of %d wrapped", smallKeys)
	res = loadbench.RunAlternating(ctx, n, scaleSlice, rounds, []loadbench.Contender{
		{Name: scaleName, Op: randomKey(so.mount, scaleKeyFormat, max(so.keys, 1))},
		{Name: smallName, Op: randomKey(so.smallMount, "small-w-%d", smallKeys)},
	})
	after, err := c.UnwrappedCache(ctx, so.mount)
	if err != nil {
		return nil, nil, nil, err
	}
	scale, small := add(res[0]), add(res[1])
	rss("after the encrypt phase")
	rep.Hits, rep.Misses = after.Hits-before.Hits, after.Misses-before.Misses
	rep.Evictions, rep.Unwraps, rep.CacheEnd = after.Evictions-before.Evictions, after.Unwraps-before.Unwraps, after
	if total := rep.Hits + rep.Misses; total > 0 {
		rep.HitRate = float64(rep.Hits) / float64(total)
	}

	rep.ScaleP50, rep.SmallP50, rep.ScaleP99, rep.SmallP99 = scale.P50, small.P50, scale.P99, small.P99
	p50 := loadbench.ComputeCostRatio(fmt.Sprintf("scale: encrypt p50, %d-key mount / %d-key mount", so.keys, smallKeys),
		scale.Key()+" p50", small.Key()+" p50", float64(scale.P50), float64(small.P50), 1.2)
	p50.Met = p50.Met && rep.HitRate >= 0.9 && scale.Errors == 0 && small.Errors == 0 && cr.Errors == 0
	p50.Note = fmt.Sprintf("(cache hit rate %.1f%%)", 100*rep.HitRate)
	rep.P50Ratio = p50.Value
	hit := loadbench.Ratio{Name: fmt.Sprintf("scale: unwrapped-cache hit rate, %d-key mount, measured phase", so.keys),
		Numerator: "hits", Denominator: "hits + misses", Value: rep.HitRate, Target: 0.9,
		Met: rep.Hits+rep.Misses > 0 && rep.HitRate >= 0.9}
	// On SoftHSM2 a session object is served faster than a token object
	// (see the raw figures): wrapped keys should not be slower than hsm.
	thr := loadbench.ComputeRatio("SoftHSM2: encrypt 64 B items/s, wrapped / hsm residency", wrapped, hsmRes, 1.0)
	lat := loadbench.ComputeCostRatio("SoftHSM2: encrypt 64 B p50, wrapped / hsm residency",
		wrapped.Key()+" p50", hsmRes.Key()+" p50", float64(wrapped.P50), float64(hsmRes.P50), 1.0)
	lat.Met = lat.Met && wrapped.Errors == 0 && hsmRes.Errors == 0
	rep.ResidencyItemsPerSecRatio, rep.ResidencyP50Ratio = thr.Value, lat.Value
	return rep, results, []loadbench.Ratio{p50, hit, thr, lat}, nil
}

// scaleMounts enables and configures the two mounts on the SoftHSM2 token
// the other scenarios use.
func scaleMounts(ctx context.Context, c *loadbench.HTTPClient, t token, so scaleOptions, cacheSize int) error {
	for _, m := range []struct {
		mount string
		extra map[string]any
	}{
		{so.mount, map[string]any{"unwrapped_cache_size": cacheSize, "unwrapped_cache_ttl": scaleCacheTTL}},
		{so.smallMount, map[string]any{"unwrapped_cache_ttl": scaleCacheTTL}},
	} {
		if _, err := c.PostJSON(ctx, "sys/mounts/"+m.mount, []byte(`{"type":"hsmkms"}`)); err != nil && !strings.Contains(err.Error(), "path is already in use") {
			return fmt.Errorf("enabling %s: %w", m.mount, err)
		}
		conf := map[string]any{"library": t.library, "token_label": t.label, "pin": t.raw.PIN,
			"default_residency": "wrapped", "max_keys": 0}
		for k, v := range m.extra {
			conf[k] = v
		}
		body, err := json.Marshal(conf)
		if err != nil {
			return err
		}
		if _, err := c.PostJSON(ctx, m.mount+"/config", body); err != nil {
			return fmt.Errorf("configuring %s: %w", m.mount, err)
		}
	}
	return nil
}

// checkResidency fails unless the key reads back with the residency the
// scenario means to measure.
func checkResidency(ctx context.Context, c *loadbench.HTTPClient, mount, name, want string) error {
	body, err := c.GetJSON(ctx, mount+"/keys/"+name)
	if err != nil {
		return err
	}
	var k struct {
		Data struct {
			Residency string `json:"residency"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &k); err != nil {
		return fmt.Errorf("%s/keys/%s: %w", mount, name, err)
	}
	if k.Data.Residency != want {
		return fmt.Errorf("%s/keys/%s: residency %q, want %q", mount, name, k.Data.Residency, want)
	}
	return nil
}

// progress prints line() every 15 seconds until stop is called.
func progress(line func() string) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintln(os.Stderr, line())
			}
		}
	}()
	return func() { close(done); <-finished }
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// Summary is the scenario's text under the table.
func (r *scaleReport) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "scale: %d wrapped %s keys in %s/ (unwrapped_cache_size %d, ttl %ds) against %d wrapped keys in %s/, "+
		"same SoftHSM2 token and plugin process, %d workers\n",
		r.Keys, scaleKeyType, r.Mount, r.CacheSize, r.CacheTTLSeconds, r.SmallKeys, r.SmallMount, r.Workers)
	fmt.Fprintf(&b, "  created %d keys in %s: %.0f keys/s, %d errors\n",
		r.Keys, time.Duration(r.CreateElapsed).Round(100*time.Millisecond), r.CreateKeysPerSec, r.CreateErrors)
	if r.WarmUpKeys >= int64(r.Keys) {
		fmt.Fprintf(&b, "  warm-up before measuring: every key of both mounts encrypted once (%s)\n", r.WarmUpElapsed.Round(100*time.Millisecond))
	} else {
		fmt.Fprintf(&b, "  warm-up before measuring: STOPPED at its %s bound after %d of the %d keys (the %d keys of %s/ were all used)\n",
			r.WarmUpMax, r.WarmUpKeys, r.Keys, 2*r.SmallKeys, r.SmallMount)
	}
	fmt.Fprintf(&b, "  measured: %d alternating %s slices per side, keys uniformly at random; p50/p99 %s/%s (%d keys) vs %s/%s (%d keys), p50 ratio %.3f\n",
		r.Slices, r.SliceNs, round(r.ScaleP50), round(r.ScaleP99), r.Keys, round(r.SmallP50), round(r.SmallP99), r.SmallKeys, r.P50Ratio)
	fmt.Fprintf(&b, "  %s/ cache over the measured phase: %d hits, %d misses, hit rate %.1f%%, %d evictions, %d unwraps; %d entries at the end\n",
		r.Mount, r.Hits, r.Misses, 100*r.HitRate, r.Evictions, r.Unwraps, r.CacheEnd.Entries)
	readings := make([]string, len(r.RSS))
	for i, s := range r.RSS {
		readings[i] = fmt.Sprintf("%s %.1f MiB (%d entries)", s.Stage, mib(s.RSSBytes), s.CacheEntries)
	}
	fmt.Fprintf(&b, "  plugin RSS (pid %d; SoftHSM2's session objects live in this process): %s\n", r.PluginPID, strings.Join(readings, "; "))
	if len(r.RSS) >= 2 && r.Keys > 0 && r.RSS[0].RSSBytes > 0 && r.RSS[1].RSSBytes > 0 {
		fmt.Fprintf(&b, "  RSS growth from creating the keys: %.0f bytes per key\n", float64(r.RSS[1].RSSBytes-r.RSS[0].RSSBytes)/float64(r.Keys))
	}
	if len(r.RSS) >= 3 && r.RSS[1].RSSBytes > 0 && r.RSS[2].RSSBytes > 0 {
		if added := r.RSS[2].CacheEntries - r.RSS[1].CacheEntries; added > 0 {
			fmt.Fprintf(&b, "  RSS growth from the warm-up's unwraps (session objects in the token): %.0f bytes per cache entry added (%d)\n",
				float64(r.RSS[2].RSSBytes-r.RSS[1].RSSBytes)/float64(added), added)
		}
	}
	fmt.Fprintf(&b, "  wrapped / hsm residency, encrypt 64 B, %d keys each in %s/: items/s ratio %.3f, p50 ratio %.3f\n",
		r.SmallKeys, r.SmallMount, r.ResidencyItemsPerSecRatio, r.ResidencyP50Ratio)
	return b.String()
}

// round is loadbench's rounding of durations for the table.
func round(d time.Duration) string {
	if d >= time.Millisecond {
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(100 * time.Nanosecond).String()
}
