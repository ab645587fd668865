package hsmkms

import (
	"context"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func (b *backend) pathMetrics() *framework.Path {
	return &framework.Path{
		Pattern:      "metrics",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "read", OperationSuffix: "metrics"},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathMetricsRead,
				Summary:  "This mount's metrics in the Prometheus text format.",
			},
		},
		HelpSynopsis:    pathMetricsHelpSyn,
		HelpDescription: pathMetricsHelpDesc,
	}
}

func (b *backend) pathMetricsRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	return b.scrape(ctx, req.Storage)
}

const pathMetricsHelpSyn = `This mount's metrics, for Prometheus.`

const pathMetricsHelpDesc = `
Answers the Prometheus text format (not JSON): requests by operation and
outcome with their latency, PKCS#11 calls by function with their latency and
error class, retries, re-initialisations and the login state, the session
pool, the unwrapped-key cache, the KEK rewrap's progress, and the keys by
state and residency. Metric names start with hsmkms_. The figures are this
mount's, in this plugin process, since the plugin started; no key name, key
material or PIN is in them.

Prometheus scrapes it with a Vault token that may read this path alone:

    path "kms/metrics" { capabilities = ["read"] }

    scrape_configs:
      - job_name: hsmkms-kms
        metrics_path: /v1/kms/metrics
        authorization: { type: Bearer, credentials_file: /etc/prometheus/vault-token }
        static_configs: [{ targets: ["vault.example.com:8200"] }]
`
