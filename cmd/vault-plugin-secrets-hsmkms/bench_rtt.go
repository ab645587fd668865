//go:build hsmkms_benchrtt

package main

import (
	"github.com/hashicorp/vault/sdk/logical"

	hsmkms "github.com/hsmkms/vault-plugin-secrets-hsmkms"
)

// backendFactory serves every mount of the bench's build through the
// simulated network HSM (the root package's bench_rtt.go).
func backendFactory() logical.Factory { return hsmkms.BenchFactory }
