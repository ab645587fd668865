#!/usr/bin/env bash
# Builds OpenTofu at a pinned version from source through the Go module
# proxy, into the same cache as Vault: download the module, build ./cmd/tofu
# with -mod=mod (the module zip has no vendor directory). A second run reuses
# the cached binary; a run that starts while another builds waits for it.
# Prints the binary's path.
#
# It is OpenTofu without the state backends and state-encryption key
# providers of the clouds (azurerm, consul, cos, gcs, kubernetes, oss, pg,
# s3; aws_kms, gcp_kms, azure_vault), which the tests never use: their SDKs
# are over a third of the Go source a fresh machine would compile. The
# local, http, inmem, remote and cloud backends, and the pbkdf2, openbao
# and external key providers, stay. The edit fails the build if either
# file no longer reads as expected.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

TOFU_VERSION="${TOFU_VERSION:-v1.12.6}"
CACHE_DIR=$(hsmkms_cache)
TOFU_BIN="$CACHE_DIR/opentofu-$TOFU_VERSION-no-cloud-state/tofu"

cached() { [[ -x "$TOFU_BIN" ]] && TF_CLI_CONFIG_FILE=/dev/null "$TOFU_BIN" version 2>/dev/null | grep -qx "OpenTofu ${TOFU_VERSION}"; }
cached && { echo "$TOFU_BIN"; exit 0; }
cache_lock "$CACHE_DIR/opentofu-$TOFU_VERSION-no-cloud-state.lock" build-tofu
cached && { echo "$TOFU_BIN"; exit 0; }

command -v go >/dev/null || { echo "build-tofu: Go is required" >&2; exit 1; }

echo "build-tofu: building OpenTofu $TOFU_VERSION (once)" >&2
src_json=$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "github.com/opentofu/opentofu@$TOFU_VERSION")
src_dir=$(printf '%s' "$src_json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d "$src_dir" ]] || { echo "build-tofu: download failed: $src_json" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/tofu-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src_dir/." "$work/"
chmod -R u+w "$work"
backends="$work/internal/backend/init/init.go"
keyproviders="$work/internal/encryption/default_registry.go"
sed -i -E '/backend(Azure|Consul|Cos|GCS|Kubernetes|OSS|Pg|S3)[ .]/d' "$backends"
sed -i -E -e '/keyprovider\/(aws_kms|azure_vault|gcp_kms)"$/d' \
  -e '/RegisterKeyProvider\((aws_kms|gcp_kms|azure_vault)\.New\(\)\)/,+2d' "$keyproviders"
if grep -q -E 'remote-state/(azure|consul|cos|gcs|kubernetes|oss|pg|s3)"' "$backends" ||
  grep -q -E 'keyprovider/(aws_kms|azure_vault|gcp_kms)"' "$keyproviders" ||
  ! grep -q 'backendLocal.New' "$backends" || ! grep -q 'RegisterKeyProvider(openbao.New())' "$keyproviders"; then
  echo "build-tofu: OpenTofu $TOFU_VERSION's backends or key providers are not where this script expects them" >&2
  exit 1
fi

mkdir -p "$(dirname "$TOFU_BIN")"
# version.dev=no is what OpenTofu's release builds set: without it the
# binary calls itself v1.12.6-dev.
(
  cd "$work"
  CGO_ENABLED=0 GOFLAGS=-mod=mod fetch_modules ./cmd/tofu
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
    -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" \
    -o "$TOFU_BIN.tmp.$$" ./cmd/tofu
)
mv "$TOFU_BIN.tmp.$$" "$TOFU_BIN"
TF_CLI_CONFIG_FILE=/dev/null "$TOFU_BIN" version >&2
echo "$TOFU_BIN"
