package loadbench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Request is one step of a mixed load: a GET when Body is nil.
type Request struct {
	Path string
	Body []byte
}

// SoakSample is one reading taken during the mixed load.
type SoakSample struct {
	At           time.Duration `json:"at_ns"`
	RSSBytes     int64         `json:"rss_bytes"`
	OpenSessions int           `json:"open_sessions"`
}

// SoakReport says whether memory settled and sessions stayed in bounds.
type SoakReport struct {
	Duration        time.Duration `json:"duration_ns"`
	Requests        int64         `json:"requests"`
	Errors          int64         `json:"errors"`
	FirstError      string        `json:"first_error,omitempty"`
	PoolSize        int           `json:"pool_size"`
	MaxOpenSessions int           `json:"max_open_sessions"`
	Samples         []SoakSample  `json:"samples"`
	// RSSGrowthLast3Min is (last RSS - RSS three minutes before the end) /
	// the latter (negative when it shrank); -1 (growthUnknown) when the
	// soak was shorter than four minutes or the RSS could not be read.
	RSSGrowthLast3Min float64 `json:"rss_growth_last_3min"`
}

// Soak runs requests round-robin from concurrency workers for duration,
// sampling the plugin's resident memory and the mount's open sessions every
// ten seconds.
func Soak(ctx context.Context, c *HTTPClient, mount string, pluginPID, concurrency int, duration time.Duration, mix []Request) (SoakReport, error) {
	rep := SoakReport{Duration: duration, RSSGrowthLast3Min: -1}
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		requests int64
		errs     int64
		firstErr error
	)
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ctx.Err() == nil; i++ {
				req := mix[i%len(mix)]
				var err error
				if req.Body == nil {
					err = c.Get(ctx, req.Path)
				} else {
					err = c.Post(ctx, req.Path, req.Body)
				}
				mu.Lock()
				if err != nil && ctx.Err() == nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
				} else if err == nil {
					requests++
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	sample := func() {
		s := SoakSample{At: time.Since(start), RSSBytes: processRSS(pluginPID)}
		pool, size := c.poolOpen(context.Background(), mount)
		s.OpenSessions, rep.PoolSize = pool, size
		rep.MaxOpenSessions = max(rep.MaxOpenSessions, pool)
		rep.Samples = append(rep.Samples, s)
	}
	sample()
	ticker := time.NewTicker(10 * time.Second)
	for done := false; !done; {
		select {
		case <-ticker.C:
			sample()
		case <-ctx.Done():
			done = true
		}
	}
	ticker.Stop()
	wg.Wait()
	sample()
	rep.Requests, rep.Errors = requests, errs
	if firstErr != nil {
		rep.FirstError = firstErr.Error()
	}
	rep.RSSGrowthLast3Min = growthOverLast(rep.Samples, 3*time.Minute)
	return rep, nil
}

// growthUnknown is RSSGrowthLast3Min when there was nothing to compare: a
// real growth is always above it, RSS being positive.
const growthUnknown = -1

// growthOverLast compares the last sample's RSS with the one closest to
// window before it.
func growthOverLast(samples []SoakSample, window time.Duration) float64 {
	if len(samples) < 2 {
		return growthUnknown
	}
	last := samples[len(samples)-1]
	if last.At < window+time.Minute || last.RSSBytes <= 0 {
		return growthUnknown
	}
	ref := samples[0]
	for _, s := range samples {
		if s.At <= last.At-window {
			ref = s
		}
	}
	if ref.RSSBytes <= 0 {
		return growthUnknown
	}
	return float64(last.RSSBytes-ref.RSSBytes) / float64(ref.RSSBytes)
}

// Ratios turns the soak into targets: memory growth under 10%, sessions
// never above the pool size, no errors.
func (r SoakReport) Ratios() []Ratio {
	growth := Ratio{Name: "soak: plugin RSS growth over the last 3 minutes", Value: r.RSSGrowthLast3Min, Target: 0.10, AtMost: true}
	known := r.RSSGrowthLast3Min > growthUnknown
	growth.Met = known && r.RSSGrowthLast3Min <= 0.10 && r.Errors == 0
	if !known {
		growth.Note = "(soak too short, or the plugin's RSS could not be read)"
	}
	sessions := Ratio{Name: "soak: max open sessions / pool_size", Target: 1, AtMost: true}
	if r.PoolSize > 0 {
		sessions.Value = float64(r.MaxOpenSessions) / float64(r.PoolSize)
	}
	sessions.Met = r.PoolSize > 0 && r.MaxOpenSessions <= r.PoolSize
	return []Ratio{growth, sessions}
}

// Summary is a short text of the soak: the first sample, the first of every
// minute and the last (the JSON has them all).
func (r SoakReport) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "soak: %s mixed load, %d requests, %d errors %s\n", r.Duration, r.Requests, r.Errors, r.FirstError)
	next := time.Duration(0)
	for i, s := range r.Samples {
		if s.At < next && i != len(r.Samples)-1 {
			continue
		}
		next = s.At.Truncate(time.Minute) + time.Minute
		fmt.Fprintf(&b, "  t=%-8s rss=%6.1f MiB  open sessions=%d/%d\n", s.At.Round(time.Second), float64(s.RSSBytes)/(1<<20), s.OpenSessions, r.PoolSize)
	}
	return b.String()
}

func processRSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if kb, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}

// poolOpen reads the mount's status: open sessions and pool size.
func (c *HTTPClient) poolOpen(ctx context.Context, mount string) (int, int) {
	req, err := c.getJSON(ctx, mount+"/status")
	if err != nil {
		return -1, 0
	}
	var st struct {
		Data struct {
			Pool struct {
				Open int `json:"open"`
				Size int `json:"size"`
			} `json:"pool"`
		} `json:"data"`
	}
	if json.Unmarshal(req, &st) != nil {
		return -1, 0
	}
	return st.Data.Pool.Open, st.Data.Pool.Size
}

// MachineDescription names the machine a run was made on.
func MachineDescription() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), ":"))
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0]); len(f) >= 2 {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%d cores, %s%s, %s/%s, %s", runtime.NumCPU(), model, mem, runtime.GOOS, runtime.GOARCH, runtime.Version())
}
