#!/usr/bin/env bash
# `make test`: formatting and vet, unit tests of hsm/ and the backend on
# SoftHSM2, then end-to-end tests against a real Vault built by
# scripts/build-vault.sh (the crypto suite also against OpenBao, built by
# scripts/build-openbao.sh; the Terraform scenarios with OpenTofu and the
# Vault provider, built by scripts/build-tofu.sh and build-tf-provider.sh). Run after scripts/deps.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

unformatted=$(gofmt -l . | grep -v '^vendor/' || true)
if [[ -n $unformatted ]]; then
  echo "gofmt wants to change: $unformatted" >&2
  exit 1
fi
go vet ./...
# staticcheck at a pinned version, through the module proxy.
go run honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION:-v0.8.2} ./...
HSMKMS_VAULT_BIN=$(bash scripts/build-vault.sh)
export HSMKMS_VAULT_BIN
HSMKMS_OPENBAO_BIN=$(bash scripts/build-openbao.sh)
export HSMKMS_OPENBAO_BIN
# The real Transit clients: OpenTofu and terraform-provider-vault 5.9.0,
# served to it from a filesystem mirror (no network at test time).
HSMKMS_TOFU_BIN=$(bash scripts/build-tofu.sh)
HSMKMS_TF_MIRROR=$(bash scripts/build-tf-provider.sh)
export HSMKMS_TOFU_BIN HSMKMS_TF_MIRROR
go test -count=1 -timeout 30m ./...
# The races the code guards against, under the race detector: the key
# cache's fill against writers, Close against calls, the pool's bound.
go test -count=1 -race -timeout 10m -run 'TestKeyCacheNeverGoesBack|TestConcurrentMixedOperations' .
go test -count=1 -race -timeout 10m -run 'TestCloseRacingCallsNeverCrashes|TestNoSessionLeakedByCloseUnderLoad|TestPoolNeverExceedsItsSize' ./hsm
