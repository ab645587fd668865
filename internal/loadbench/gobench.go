package loadbench

import (
	"strconv"
	"strings"
)

// ParseGoBench reads `go test -bench` output into ns/op by benchmark name
// (without the Benchmark prefix and the -GOMAXPROCS suffix).
func ParseGoBench(out string) map[string]float64 {
	res := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") || fields[3] != "ns/op" {
			continue
		}
		name := strings.TrimPrefix(fields[0], "Benchmark")
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i]
		}
		if ns, err := strconv.ParseFloat(fields[2], 64); err == nil {
			res[name] = ns
		}
	}
	return res
}
