package loadbench

import (
	"strconv"
	"strings"
)

// ParseGoBench reads `go test -bench` output into ns/op by benchmark name
// (without the Benchmark prefix and the -GOMAXPROCS suffix).
func ParseGoBench(out string) map[string]float64 {
	res := map[string]float64{}
	for name, metrics := range ParseGoBenchMetrics(out) {
		if ns, ok := metrics["ns/op"]; ok {
			res[name] = ns
		}
	}
	return res
}

// ParseGoBenchMetrics reads `go test -bench` output into every metric a
// benchmark reported (ns/op, B/op and those of b.ReportMetric), by
// benchmark name (as ParseGoBench names them) and unit. A benchmark run
// more than once (-count) keeps its last line.
func ParseGoBenchMetrics(out string) map[string]map[string]float64 {
	res := map[string]map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		if _, err := strconv.ParseInt(fields[1], 10, 64); err != nil {
			continue // not a result line (a benchmark's log output)
		}
		metrics := map[string]float64{}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				break
			}
			metrics[fields[i+1]] = v
		}
		if len(metrics) > 0 {
			res[benchName(fields[0])] = metrics
		}
	}
	return res
}

// benchName drops the Benchmark prefix and the -GOMAXPROCS suffix (absent
// when GOMAXPROCS is 1, so only a suffix of digits is dropped).
func benchName(field string) string {
	name := strings.TrimPrefix(field, "Benchmark")
	if i := strings.LastIndex(name, "-"); i > 0 && i < len(name)-1 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			name = name[:i]
		}
	}
	return name
}
