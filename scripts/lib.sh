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

# fetch_modules downloads every module that the go.mod in the current
# directory requires, many at a time. The go command fetches at most
# GOMAXPROCS modules at once, two on a 2-core machine, and fetching is
# waiting on the network, not computing: without this the builds of the
# servers spend most of their time downloading one module after another.
fetch_modules() {
  GOMAXPROCS=${HSMKMS_FETCH_CONCURRENCY:-32} go mod download
}
