package loadbench

import (
	"fmt"
	"time"
)

// ComputeLatencyRatio compares num's p50 with den's p50 plus add (the
// round trips num makes that den does not): the value must stay at or
// under bound.
func ComputeLatencyRatio(name string, num, den Result, add time.Duration, bound float64) Ratio {
	d := den.Key() + " p50"
	if add > 0 {
		d += " + " + add.String()
	}
	r := Ratio{Name: name, Numerator: num.Key() + " p50", Denominator: d, Target: bound, AtMost: true}
	if total := den.P50 + add; total > 0 && num.Ops > 0 && den.Ops > 0 {
		r.Value = float64(num.P50) / float64(total)
	}
	r.Met = r.Value > 0 && r.Value <= bound && num.Errors == 0 && den.Errors == 0
	return r
}

// ComputeIdealRatio compares num's items per second with ideal, the rate
// it would reach if nothing but the simulated round trips cost time.
func ComputeIdealRatio(name string, num Result, ideal float64, idealName string, bound float64) Ratio {
	r := Ratio{Name: name, Numerator: num.Key(), Denominator: fmt.Sprintf("%s = %.0f items/s", idealName, ideal), Target: bound}
	if ideal > 0 {
		r.Value = num.ItemsPerSec / ideal
	}
	r.Met = ideal > 0 && r.Value >= bound && num.Errors == 0
	return r
}

// SessionsIdeal is the items per second of sessions working side by side
// when an item costs calls round trips of rtt each and nothing else.
func SessionsIdeal(sessions, calls int, rtt time.Duration) float64 {
	if rtt <= 0 || calls <= 0 {
		return 0
	}
	return float64(sessions) / (float64(calls) * rtt.Seconds())
}
