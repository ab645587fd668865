//go:build hsmkms_benchrtt

package main

import hsmkms "github.com/hsmkms/vault-plugin-secrets-hsmkms"

// The bench's build serves every mount through the simulated network HSM
// (the root package's bench_rtt.go).
func init() { factory = hsmkms.BenchFactory }
