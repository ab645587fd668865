#!/usr/bin/env bash
# Builds the OpenBao server from source through the Go module proxy, as
# build-vault.sh builds Vault, into the same cache. The proxy serves
# OpenBao v2.4.0 only as a pseudo-version of its root module; its go.mod
# replaces the nested api/sdk modules with directories the module zip does
# not hold (dropped, so the released versions are used) and requires two
# auth modules only its tests use (dropped too). Like Vault's, it is built
# without raft auto_join's cloud providers (see without_cloud_auto_join in
# lib.sh), and without the Kubernetes auth and secrets engines, which the
# tests never mount: the two take OpenBao from 118 MB of Go source to 68.
# The edit fails the build if the registry no longer reads as expected.
# A second run reuses the
# cached binary; a run that starts while another builds waits for it.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

OPENBAO_VERSION="${OPENBAO_VERSION:-v2.4.0}"
OPENBAO_MODULE="${OPENBAO_MODULE:-github.com/openbao/openbao@v0.0.0-20250828202315-f9407a27fbee}"
CACHE_DIR=$(hsmkms_cache)
BAO_BIN="$CACHE_DIR/openbao-$OPENBAO_VERSION-no-k8s-no-cloud-join/bao"

cached() { [[ -x "$BAO_BIN" ]] && "$BAO_BIN" version 2>/dev/null | grep -q "OpenBao ${OPENBAO_VERSION}"; }
cached && { echo "$BAO_BIN"; exit 0; }
cache_lock "$CACHE_DIR/openbao-$OPENBAO_VERSION-no-k8s-no-cloud-join.lock" build-openbao
cached && { echo "$BAO_BIN"; exit 0; }

command -v go >/dev/null || { echo "build-openbao: Go is required" >&2; exit 1; }

echo "build-openbao: building OpenBao $OPENBAO_VERSION (about 4 minutes on 2 cores, once)" >&2
src_json=$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "$OPENBAO_MODULE")
src_dir=$(printf '%s' "$src_json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d "$src_dir" ]] || { echo "build-openbao: download failed: $src_json" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/openbao-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src_dir/." "$work/"
chmod -R u+w "$work"
sed -i -E '/^[[:space:]]*(replace[[:space:]]+)?github.com\/openbao\/openbao\/[^[:space:]]+[[:space:]]+=>[[:space:]]+\.\/[^[:space:]]*[[:space:]]*$/d' "$work/go.mod"
sed -i -E '/github.com\/openbao\/openbao\/api\/auth\/(approle|userpass)\/v2[[:space:]]/d' "$work/go.mod"
without_cloud_auto_join "$work"
registry="$work/helper/builtinplugins/registry.go"
sed -i -E -e '/^[[:space:]]*(credKube|logicalKube) "github.com\/openbao\/openbao\/builtin\/(credential|logical)\/kubernetes"$/d' \
  -e '/^[[:space:]]*"kubernetes": \{Factory: (credKube|logicalKube)\.Factory\},$/d' "$registry"
if grep -q -E 'credKube|logicalKube|builtin/(credential|logical)/kubernetes' "$registry" ||
  ! grep -q '"transit":' "$registry"; then
  echo "build-openbao: OpenBao $OPENBAO_VERSION's plugin registry is not where this script expects it" >&2
  exit 1
fi

mkdir -p "$(dirname "$BAO_BIN")"
(
  cd "$work"
  CGO_ENABLED=1 GOFLAGS=-mod=mod fetch_modules .
  build_server \
    -ldflags "-s -w -X github.com/openbao/openbao/version.fullVersion=${OPENBAO_VERSION#v}" \
    -o "$BAO_BIN.tmp.$$" .
)
mv "$BAO_BIN.tmp.$$" "$BAO_BIN"
"$BAO_BIN" version >&2
echo "$BAO_BIN"
