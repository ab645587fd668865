# Shared by the scripts: where things are, and how the cached builds lock
# and fetch. Sourced, not run.
# shellcheck shell=bash

# hsmkms_cache is the directory the built servers and clients live in.
hsmkms_cache() { echo "${HSMKMS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hsmkms}"; }

# softhsm_library prints the path of SoftHSM2's PKCS#11 module.
softhsm_library() {
  local p
  for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    [[ -e $p ]] && { echo "$p"; return 0; }
  done
  echo "SoftHSM2 is not installed: run scripts/deps.sh" >&2
  return 1
}

# build_plugin builds the plugin (cgo is required by miekg/pkcs11) into bin/,
# reporting VERSION to Vault (v0.0.0-dev when unset). No -trimpath: the
# packages it compiles are then the very ones `go test` compiled, taken from
# the one build cache.
build_plugin() {
  local version=${VERSION:-v0.0.0-dev}
  check_version "$version" || return 1
  mkdir -p bin
  CGO_ENABLED=1 go build -ldflags "-X $(version_var)=$version" \
    -o bin/vault-plugin-secrets-hsmkms ./cmd/vault-plugin-secrets-hsmkms
}

# version_var is the variable the linker sets to the plugin's version.
version_var() { echo github.com/hsmkms/vault-plugin-secrets-hsmkms.version; }

# check_version refuses what Vault would refuse at registration: a plugin
# version is a semantic version with a leading v.
check_version() {
  local semver='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$'
  [[ $1 =~ $semver ]] && return 0
  echo "VERSION=$1 is not a semantic version with a leading v (e.g. v1.2.3, v1.3.0-rc.1)" >&2
  return 1
}

# cache_lock FILE WHO holds an exclusive lock on FILE for the rest of the
# calling script (on fd 9, released when it exits). Two builds of one tool
# at once would both take minutes to make the same file; the second waits
# for the first and then finds its result in the cache.
cache_lock() {
  mkdir -p "$(dirname "$1")"
  exec 9>"$1"
  if ! flock -n 9; then
    echo "$2: another build holds $1; waiting for it" >&2
    flock 9
  fi
}

# build_server ARGS... is `go build ARGS` in the module copy of a server or
# client (Vault, OpenBao, OpenTofu, the Terraform provider), built as the
# plugin and its tests are: with cgo and without -trimpath. The go command
# keys each compiled package by its source and those settings, so the
# standard library and every module at the version the plugin uses are
# compiled once for all of them, into the one build cache, instead of once
# more for a cgo-less, trimmed build. HSMKMS_BUILD_AFTER may name the lock
# of a build that is filling that cache (make test's compile part): the
# modules are fetched meanwhile, and the compiling waits for it rather than
# compiling the same packages beside it.
build_server() {
  if [[ -n ${HSMKMS_BUILD_AFTER:-} ]]; then
    flock -s "$HSMKMS_BUILD_AFTER" true
  fi
  CGO_ENABLED=1 GOFLAGS=-mod=mod go build "$@"
}

# fetch_modules PACKAGE... downloads the modules that the packages (and
# what they import) come from, many at a time, with go list's flags as
# given (e.g. -tags minimal, -test). The go command fetches at most
# GOMAXPROCS modules at once, two on a 2-core machine, and fetching is
# waiting on the network, not computing: without this the builds spend
# much of their time downloading one module after another. Only those
# modules: `go mod download` would fetch and extract every module each
# go.mod names, the modules of tests and of features the build leaves out.
fetch_modules() {
  GOMAXPROCS=${HSMKMS_FETCH_CONCURRENCY:-32} go list -deps "$@" >/dev/null
}

# without_cloud_auto_join DIR makes the Go module in DIR (Vault's or
# OpenBao's source) build against go-discover without its cloud providers:
# raft's retry_join auto_join, which the tests never use, is all that needs
# them, and their SDKs (EC2, Kubernetes, GCE, SoftLayer, vSphere...) are a
# third of the Go source a fresh machine would compile for each server. The
# root package (auto_join's parser and the provider registry) is
# go-discover's own, with no provider registered; auto_join then answers
# that the provider is unknown. Fails if go-discover no longer reads as
# expected.
without_cloud_auto_join() {
  local dir=$1 src stub=_hsmkms_go_discover
  src=$(required_module_dir "$dir" github.com/hashicorp/go-discover)
  [[ -f $src/discover.go ]] || { echo "without_cloud_auto_join: go-discover not found" >&2; return 1; }
  mkdir -p "$dir/$stub/provider/k8s"
  cp "$src/go.mod" "$src/discover.go" "$src/config.go" "$dir/$stub/"
  chmod -R u+w "$dir/$stub"
  sed -i -E -e '/^[[:space:]]*"github.com\/hashicorp\/go-discover\/provider\/[a-z]+"$/d' \
    -e '/^[[:space:]]*"[a-z]+":[[:space:]]*&[a-z]+\.Provider\{\},$/d' "$dir/$stub/discover.go"
  if grep -q -E 'go-discover/provider|Provider\{\}' "$dir/$stub/discover.go" ||
    ! grep -q '^var Providers = map\[string\]Provider{' "$dir/$stub/discover.go"; then
    echo "without_cloud_auto_join: go-discover's provider registry is not where this script expects it" >&2
    return 1
  fi
  cat >"$dir/$stub/provider/k8s/k8s.go" <<'GO'
// Package k8s stands in for go-discover's Kubernetes provider, left out of
// this build (see hsmkms's scripts/lib.sh).
package k8s

import (
	"errors"
	"log"
)

type Provider struct{}

func (*Provider) Help() string { return "k8s: not built in\n" }

func (*Provider) Addrs(map[string]string, *log.Logger) ([]string, error) {
	return nil, errors.New("discover-k8s: this build has no Kubernetes auto_join")
}
GO
  (cd "$dir" && go mod edit -replace "github.com/hashicorp/go-discover=./$stub")
}

# required_module_dir DIR MODULE prints the directory, in the module cache,
# of the version of MODULE that the Go module in DIR requires (fetching it).
required_module_dir() {
  local src
  src=$(cd "$1" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "$2")
  if [[ ! -d $src ]]; then
    src=$(cd "$1" && GOFLAGS=-mod=mod go mod download -json "$2" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  fi
  echo "$src"
}
