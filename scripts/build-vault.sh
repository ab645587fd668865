#!/usr/bin/env bash
# Builds the Vault server from source through the Go module proxy, at a pinned
# version, into a cache outside the repository. HashiCorp publishes no Debian
# package, and `go install` refuses Vault's module because of its `replace`
# directives, so we download the module, drop the replaces that point at the
# nested ./api and ./sdk modules (the proxy's zip does not contain them), and
# build with -mod=mod. It is Vault's own minimal build (the `minimal` tag,
# Vault's BUILD_MINIMAL: the core, raft, Transit, KV, PKI, SSH, cert,
# userpass, approle and JWT, without the cloud and database plugins) plus
# the file storage the tests restart Vault on, and without raft auto_join's
# cloud providers (see without_cloud_auto_join in lib.sh): a third of the
# Go source of the full server, which is what a fresh machine spends its
# first minutes compiling. A second run reuses the cached binary; a run
# that starts while another builds waits for it (see cache_lock).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

VAULT_VERSION="${VAULT_VERSION:-v1.21.0}"
CACHE_DIR=$(hsmkms_cache)
VAULT_BIN="$CACHE_DIR/vault-$VAULT_VERSION-minimal-no-cloud-join/vault"

cached() { [[ -x "$VAULT_BIN" ]] && "$VAULT_BIN" version 2>/dev/null | grep -q "Vault ${VAULT_VERSION}"; }
cached && { echo "$VAULT_BIN"; exit 0; }
cache_lock "$CACHE_DIR/vault-$VAULT_VERSION-minimal-no-cloud-join.lock" build-vault
cached && { echo "$VAULT_BIN"; exit 0; }

command -v go >/dev/null || { echo "build-vault: Go is required" >&2; exit 1; }

echo "build-vault: building Vault $VAULT_VERSION, minimal (about 5 minutes on 2 cores, once)" >&2
src_json=$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/vault@$VAULT_VERSION")
src_dir=$(printf '%s' "$src_json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d "$src_dir" ]] || { echo "build-vault: download failed: $src_json" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vault-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src_dir/." "$work/"
chmod -R u+w "$work"
# The module zip leaves out the nested api/ and sdk/ modules, so the replaces
# would point at nothing; the require lines name the matching released versions.
sed -i -E '/^[[:space:]]*(replace[[:space:]]+)?github.com\/hashicorp\/vault\/[^[:space:]]+[[:space:]]+=>[[:space:]]+\.\/[^[:space:]]*[[:space:]]*$/d' "$work/go.mod"
without_cloud_auto_join "$work"

mkdir -p "$(dirname "$VAULT_BIN")"
(
  cd "$work"
  # The minimal build's handlers, with the file storage backend added.
  cat >command/commands_min.go <<'GO'
//go:build minimal

package command

import (
	_ "github.com/hashicorp/vault/helper/builtinplugins"
	physFile "github.com/hashicorp/vault/sdk/physical/file"
)

func extendAddonHandlers(handlers *vaultHandlers) {
	handlers.physicalBackends["file"] = physFile.NewFileBackend
}
GO
  CGO_ENABLED=1 GOFLAGS=-mod=mod fetch_modules -tags minimal .
  build_server -tags minimal \
    -ldflags "-s -w -X github.com/hashicorp/vault/version.Version=${VAULT_VERSION#v} -X github.com/hashicorp/vault/version.VersionPrerelease=" \
    -o "$VAULT_BIN.tmp.$$" .
)
# The rename is atomic: a reader sees no binary or the whole one.
mv "$VAULT_BIN.tmp.$$" "$VAULT_BIN"
"$VAULT_BIN" version >&2
echo "$VAULT_BIN"
