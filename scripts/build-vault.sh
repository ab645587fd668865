#!/usr/bin/env bash
# Builds the Vault server from source through the Go module proxy, at a pinned
# version, into a cache outside the repository. HashiCorp publishes no Debian
# package, and `go install` refuses Vault's module because of its `replace`
# directives, so we download the module, drop the replaces that point at the
# nested ./api and ./sdk modules (the proxy's zip does not contain them), and
# build with -mod=mod. It is Vault's own minimal build (the `minimal` tag,
# Vault's BUILD_MINIMAL: the core, raft, Transit, KV, PKI, SSH, cert,
# userpass, approle and JWT, without the cloud and database plugins) plus
# the file storage the tests restart Vault on, and without the cloud SDKs
# of three features the tests never use: raft auto_join's cloud providers
# (see without_cloud_auto_join in lib.sh), Vault Agent's cloud auto-auth
# methods and login MFA through Okta (both below). About a quarter of the
# Go source of the full server, which is what a fresh machine spends its
# first minutes compiling. A second run reuses the cached binary; a run
# that starts while another builds waits for it (see cache_lock).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# without_agent_cloud_auth DIR: Vault Agent's and Proxy's auto-auth methods
# for AliCloud, AWS, Azure, Cloud Foundry, GCP, Kerberos and OCI left out
# (GCP's alone compiles Google's 8 MB compute API). They are one switch in
# one file; Agent then answers that such a method is unknown.
without_agent_cloud_auth() {
  local helpers="$1/command/agentproxyshared/helpers.go" methods='alicloud|aws|azure|cf|gcp|kerberos|oci'
  sed -i -E -e "/^[[:space:]]*\"github.com\/hashicorp\/vault\/command\/agentproxyshared\/auth\/($methods)\"\$/d" \
    -e "/^[[:space:]]*case \"($methods|pcf)\":([[:space:]]*\/\/.*)?\$/,+1d" "$helpers"
  if grep -q -E "agentproxyshared/auth/($methods)\"|[^a-z_]($methods)\.New" "$helpers" ||
    ! grep -q 'case "approle":' "$helpers"; then
    echo "build-vault: Vault Agent's auto-auth methods are not where this script expects them" >&2
    return 1
  fi
}

# without_okta_mfa DIR: login MFA through Okta answers that it is not in
# this build. validateOkta is the one function that calls Okta's SDK, 12 MB
# in one package: the largest package Vault compiles, a minute of CPU.
without_okta_mfa() {
  local mfa="$1/vault/login_mfa.go"
  sed -i -E -e '/^func \(c \*Core\) validateOkta\(/,/^}$/{' -e '/^func /b' -e '/^}$/!d' -e 'i\' \
    -e $'\treturn fmt.Errorf("login MFA through Okta is left out of this build of Vault (scripts/build-vault.sh)")' \
    -e '}' -e '/^[[:space:]]*"github.com\/okta\/okta-sdk-golang\/v[0-9]+\/okta"$/d' "$mfa"
  # The function was regexp's only user there.
  grep -q 'regexp\.' "$mfa" || sed -i -E '/^[[:space:]]*"regexp"$/d' "$mfa"
  if grep -q 'okta-sdk-golang' "$mfa" || ! grep -q 'left out of this build' "$mfa"; then
    echo "build-vault: Vault's Okta MFA is not where this script expects it" >&2
    return 1
  fi
}

VAULT_VERSION="${VAULT_VERSION:-v1.21.0}"
CACHE_DIR=$(hsmkms_cache)
VAULT_BIN="$CACHE_DIR/vault-$VAULT_VERSION-minimal-no-cloud-sdks/vault"

cached() { [[ -x "$VAULT_BIN" ]] && "$VAULT_BIN" version 2>/dev/null | grep -q "Vault ${VAULT_VERSION}"; }
cached && { echo "$VAULT_BIN"; exit 0; }
cache_lock "$CACHE_DIR/vault-$VAULT_VERSION-minimal-no-cloud-sdks.lock" build-vault
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
without_agent_cloud_auth "$work"
without_okta_mfa "$work"

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
