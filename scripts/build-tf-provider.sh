#!/usr/bin/env bash
# Builds terraform-provider-vault at a pinned release through the Go module
# proxy, into the same cache as Vault, and lays it out as a provider
# filesystem mirror (Terraform's and OpenTofu's "unpacked" layout) so that
# `tofu init` installs it with no network. Release 5.9.0 is published on the
# proxy only as a pseudo-version (the repository's tags carry no /v5 module
# path). A second run reuses the cached binary; a run that starts while
# another builds waits for it. Prints the mirror directory.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

PROVIDER_VERSION="${TF_PROVIDER_VAULT_VERSION:-5.9.0}"
PROVIDER_MODULE="${TF_PROVIDER_VAULT_MODULE:-github.com/hashicorp/terraform-provider-vault@v1.9.1-0.20260422134934-5e9fcd457a99}"
CACHE_DIR=$(hsmkms_cache)
GOBIN_DIR="$CACHE_DIR/terraform-provider-vault-$PROVIDER_VERSION"
BIN="$GOBIN_DIR/terraform-provider-vault"
MIRROR="$CACHE_DIR/tf-mirror"

command -v go >/dev/null || { echo "build-tf-provider: Go is required" >&2; exit 1; }
platform="$(go env GOOS)_$(go env GOARCH)"

if [[ ! -x "$BIN" ]]; then
  cache_lock "$CACHE_DIR/terraform-provider-vault-$PROVIDER_VERSION.lock" build-tf-provider
fi
if [[ ! -x "$BIN" ]]; then
  echo "build-tf-provider: building terraform-provider-vault $PROVIDER_VERSION (once)" >&2
  mkdir -p "$GOBIN_DIR"
  # As the other builds: the module's source, copied, its modules fetched
  # many at a time (go install would fetch them two at a time), built into
  # a temporary name and moved, so that an interrupted build never leaves a
  # binary that looks cached.
  src_json=$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "$PROVIDER_MODULE")
  src_dir=$(printf '%s' "$src_json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d "$src_dir" ]] || { echo "build-tf-provider: download failed: $src_json" >&2; exit 1; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/tf-provider-build.XXXXXX")
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  cp -r "$src_dir/." "$work/"
  chmod -R u+w "$work"
  (
    cd "$work"
    CGO_ENABLED=1 GOFLAGS=-mod=mod fetch_modules .
    build_server -ldflags "-s -w" -o "$BIN.tmp.$$" .
  )
  mv "$BIN.tmp.$$" "$BIN"
fi

# Both registry hosts: Terraform's default and OpenTofu's, so that a
# configuration that says source = "hashicorp/vault" works with either.
for host in registry.terraform.io registry.opentofu.org; do
  dir="$MIRROR/$host/hashicorp/vault/$PROVIDER_VERSION/$platform"
  mkdir -p "$dir"
  dst="$dir/terraform-provider-vault_v$PROVIDER_VERSION"
  if [[ ! -e "$dst" ]] || ! cmp -s "$BIN" "$dst"; then
    ln -f "$BIN" "$dst.tmp.$$" 2>/dev/null || cp "$BIN" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
  fi
done
echo "$MIRROR"
