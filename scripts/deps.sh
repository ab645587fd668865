#!/usr/bin/env bash
# Installs what hsmkms needs on a Debian machine that has Go: SoftHSM2 (the
# development HSM), NSS softokn (libnss3, the second token implementation
# the tests run on), opensc (pkcs11-tool), p11-kit and its proxy module
# (p11-kit-proxy.so, a third way to load a token), Prometheus (prometheus and
# promtool, which the metrics tests run) and a C compiler for cgo. Uses sudo
# when not root. Installs nothing that is already there.
#   usage: scripts/deps.sh            what `make dev` and `make test` need
#          scripts/deps.sh release    also the arm64 cross compiler of `make release`
set -euo pipefail

# has_lib NAME: a shared library that ships no command, in any multiarch dir.
has_lib() {
  local f
  for f in /usr/lib/*/"$1" /usr/lib64/"$1" /usr/lib/"$1"; do
    [[ -e $f ]] && return 0
  done
  return 1
}

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
has_lib libsoftokn3.so || need+=(libnss3)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
command -v p11-kit >/dev/null 2>&1 || need+=(p11-kit)
has_lib p11-kit-proxy.so || need+=(p11-kit-modules)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
command -v make >/dev/null 2>&1 || need+=(make)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [[ ${1:-} == release ]]; then
  # cgo for linux/arm64: Debian's cross gcc and the arm64 C library it links.
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
  [[ -e /usr/aarch64-linux-gnu/include/stdlib.h ]] || need+=(libc6-dev-arm64-cross)
fi
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
  # Prometheus's package starts a server on :9090 under systemd. The tests
  # start their own, on a free port; the one we installed stays off.
  if [[ " ${need[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
