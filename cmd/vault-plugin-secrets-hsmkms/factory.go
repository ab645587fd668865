//go:build !hsmkms_benchrtt

package main

import (
	"github.com/hashicorp/vault/sdk/logical"

	hsmkms "github.com/hsmkms/vault-plugin-secrets-hsmkms"
)

// backendFactory makes each mount's backend; the bench's build has its own
// (bench_rtt.go, build tag hsmkms_benchrtt).
func backendFactory() logical.Factory { return hsmkms.Factory }
