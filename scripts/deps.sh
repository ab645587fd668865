#!/usr/bin/env bash
# Installs what hsmkms needs on a Debian machine that has Go: SoftHSM2 (the
# development HSM), NSS softokn (libnss3, the second token implementation
# the tests run on), opensc (pkcs11-tool) and a C compiler for cgo. Uses sudo
# when not root. Installs nothing that is already there.
set -euo pipefail

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
# NSS softokn is a library with no command: look for the module itself.
has_softokn() {
  local f
  for f in /usr/lib/*/libsoftokn3.so /usr/lib64/libsoftokn3.so /usr/lib/libsoftokn3.so; do
    [[ -e $f ]] && return 0
  done
  return 1
}
has_softokn || need+=(libnss3)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v make >/dev/null 2>&1 || need+=(make)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v go >/dev/null 2>&1 || { echo "deps: Go is required (https://go.dev/doc/install)" >&2; exit 1; }

if ((${#need[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${need[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "deps: installing ${need[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
