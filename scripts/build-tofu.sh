#!/usr/bin/env bash
# Builds OpenTofu at a pinned version from source through the Go module
# proxy, into the same cache as Vault: download the module, build ./cmd/tofu
# with -mod=mod (the module zip has no vendor directory). A second run reuses
# the cached binary; a run that starts while another builds waits for it.
# Prints the binary's path.
#
# It is OpenTofu without the state backends and state-encryption key
# providers of the clouds (azurerm, consul, cos, gcs, kubernetes, oss, pg,
# s3; aws_kms, gcp_kms, azure_vault), and without go-getter's s3:: and
# gcs:: module sources, which the tests never use: their SDKs are well over
# half the Go source a fresh machine would compile (110 MB to 46). The
# local, http, inmem, remote and cloud backends, the pbkdf2, openbao and
# external key providers, and the file, git, hg, http and oci module
# sources stay. The edit fails the build if a file no longer reads as
# expected.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

TOFU_VERSION="${TOFU_VERSION:-v1.12.6}"
CACHE_DIR=$(hsmkms_cache)
TOFU_BIN="$CACHE_DIR/opentofu-$TOFU_VERSION-no-cloud-sdks/tofu"

cached() { [[ -x "$TOFU_BIN" ]] && TF_CLI_CONFIG_FILE=/dev/null "$TOFU_BIN" version 2>/dev/null | grep -qx "OpenTofu ${TOFU_VERSION}"; }
cached && { echo "$TOFU_BIN"; exit 0; }
cache_lock "$CACHE_DIR/opentofu-$TOFU_VERSION-no-cloud-sdks.lock" build-tofu
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
# go-getter's S3 and GCS getters and detectors are in its root package, so
# OpenTofu builds against a copy of the module without them.
getmodules="$work/internal/getmodules/getter.go"
getter=_hsmkms_go_getter
getter_src=$(required_module_dir "$work" github.com/hashicorp/go-getter)
[[ -f $getter_src/get_s3.go ]] || { echo "build-tofu: go-getter's source not found" >&2; exit 1; }
cp -r "$getter_src/." "$work/$getter/"
chmod -R u+w "$work/$getter"
rm -rf "$work/$getter/"*_test.go "$work/$getter/"{get,detect}_{s3,gcs}.go "$work/$getter/test-fixtures" "$work/$getter/testdata"
sed -i -E '/^[[:space:]]*"(gcs|s3)":[[:space:]]*new\((GCS|S3)Getter\),$/d' "$work/$getter/get.go"
sed -i -E '/^[[:space:]]*new\((S3|GCS)Detector\),$/d' "$work/$getter/detect.go"
sed -i -E -e '/^[[:space:]]*new\(getter\.(GCS|S3)Detector\),$/d' \
  -e '/^[[:space:]]*"(gcs|s3)":[[:space:]]*new\(getter\.(GCS|S3)Getter\),$/d' "$getmodules"
if grep -q -E '(S3|GCS)(Getter|Detector)' "$work/$getter/get.go" "$work/$getter/detect.go" "$getmodules" ||
  ! grep -q 'new(getter.GitGetter)' "$getmodules"; then
  echo "build-tofu: go-getter's or OpenTofu's module sources are not where this script expects them" >&2
  exit 1
fi
(cd "$work" && go mod edit -replace "github.com/hashicorp/go-getter=./$getter")

mkdir -p "$(dirname "$TOFU_BIN")"
# version.dev=no is what OpenTofu's release builds set: without it the
# binary calls itself v1.12.6-dev.
(
  cd "$work"
  CGO_ENABLED=1 GOFLAGS=-mod=mod fetch_modules ./cmd/tofu
  build_server \
    -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" \
    -o "$TOFU_BIN.tmp.$$" ./cmd/tofu
)
mv "$TOFU_BIN.tmp.$$" "$TOFU_BIN"
TF_CLI_CONFIG_FILE=/dev/null "$TOFU_BIN" version >&2
echo "$TOFU_BIN"
