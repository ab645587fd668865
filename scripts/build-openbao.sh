#!/usr/bin/env bash
# Builds the OpenBao server from source through the Go module proxy, as
# build-vault.sh builds Vault, into the same cache. The proxy serves
# OpenBao v2.4.0 only as a pseudo-version of its root module; its go.mod
# replaces the nested api/sdk modules with directories the module zip does
# not hold (dropped, so the released versions are used) and requires two
# auth modules only its tests use (dropped too). A second run reuses the
# cached binary; a run that starts while another builds waits for it.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

OPENBAO_VERSION="${OPENBAO_VERSION:-v2.4.0}"
OPENBAO_MODULE="${OPENBAO_MODULE:-github.com/openbao/openbao@v0.0.0-20250828202315-f9407a27fbee}"
CACHE_DIR=$(hsmkms_cache)
BAO_BIN="$CACHE_DIR/openbao-$OPENBAO_VERSION/bao"

cached() { [[ -x "$BAO_BIN" ]] && "$BAO_BIN" version 2>/dev/null | grep -q "OpenBao ${OPENBAO_VERSION}"; }
cached && { echo "$BAO_BIN"; exit 0; }
cache_lock "$CACHE_DIR/openbao-$OPENBAO_VERSION.lock" build-openbao
cached && { echo "$BAO_BIN"; exit 0; }

command -v go >/dev/null || { echo "build-openbao: Go is required" >&2; exit 1; }

echo "build-openbao: building OpenBao $OPENBAO_VERSION (10-15 minutes on 2 cores, once)" >&2
src_json=$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "$OPENBAO_MODULE")
src_dir=$(printf '%s' "$src_json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d "$src_dir" ]] || { echo "build-openbao: download failed: $src_json" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/openbao-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src_dir/." "$work/"
chmod -R u+w "$work"
sed -i -E '/^[[:space:]]*(replace[[:space:]]+)?github.com\/openbao\/openbao\/[^[:space:]]+[[:space:]]+=>[[:space:]]+\.\/[^[:space:]]*[[:space:]]*$/d' "$work/go.mod"
sed -i -E '/github.com\/openbao\/openbao\/api\/auth\/(approle|userpass)\/v2[[:space:]]/d' "$work/go.mod"

mkdir -p "$(dirname "$BAO_BIN")"
(
  cd "$work"
  GOFLAGS=-mod=mod fetch_modules
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
    -ldflags "-s -w -X github.com/openbao/openbao/version.fullVersion=${OPENBAO_VERSION#v}" \
    -o "$BAO_BIN.tmp.$$" .
)
mv "$BAO_BIN.tmp.$$" "$BAO_BIN"
"$BAO_BIN" version >&2
echo "$BAO_BIN"
