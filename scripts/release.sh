#!/usr/bin/env bash
# `make release VERSION=v1.2.3`: the plugin for each platform, reporting
# VERSION to Vault, with SHA256SUMS and each binary's build info (`go version
# -m`), into dist/ (or the directory given). cgo is required (miekg/pkcs11),
# so each platform needs a C compiler for it: Debian's cross gcc for
# linux/arm64 (scripts/deps.sh release installs it).
#   usage: VERSION=v1.2.3 scripts/release.sh [DIR]
#   RELEASE_PLATFORMS: "linux/amd64 linux/arm64" unless set.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
source "$root/scripts/lib.sh"

version=${VERSION:?VERSION=v1.2.3 is required}
check_version "$version"
dist=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
cd "$root"
name=vault-plugin-secrets-hsmkms

# c_compiler ARCH: the gcc that targets linux/ARCH from this machine.
c_compiler() {
  local host triple
  host=$(go env GOHOSTARCH)
  [[ $1 == "$host" ]] && { echo gcc; return; }
  case $1 in
    amd64) triple=x86_64-linux-gnu ;;
    arm64) triple=aarch64-linux-gnu ;;
    *) echo "release: no C cross compiler known for linux/$1" >&2; return 1 ;;
  esac
  command -v "$triple-gcc" >/dev/null || {
    echo "release: $triple-gcc is missing, and cgo needs it for linux/$1 (scripts/deps.sh release installs it)" >&2
    return 1
  }
  echo "$triple-gcc"
}

# Only this release's files: a stale binary of another version must not
# be listed in, or left beside, the new SHA256SUMS.
rm -f "$dist/$name"_* "$dist/SHA256SUMS"
files=()
for platform in ${RELEASE_PLATFORMS:-linux/amd64 linux/arm64}; do
  os=${platform%/*} arch=${platform#*/}
  [[ $os == linux ]] || { echo "release: only linux platforms are built, not $platform" >&2; exit 1; }
  cc=$(c_compiler "$arch")
  bin="${name}_${version}_${os}_${arch}"
  echo "release: $bin (CC=$cc)" >&2
  # No -trimpath: under it the go command leaves -ldflags, and with it the
  # version, out of the build info (go.dev/issue/52372), and the build info
  # is the release's record of how it was made.
  CGO_ENABLED=1 GOOS=$os GOARCH=$arch CC=$cc go build \
    -ldflags "-s -w -X $(version_var)=$version" -o "$dist/$bin.tmp.$$" ./cmd/$name
  mv "$dist/$bin.tmp.$$" "$dist/$bin"
  (cd "$dist" && go version -m "$bin" >"$bin.buildinfo")
  files+=("$bin" "$bin.buildinfo")
done
(cd "$dist" && sha256sum "${files[@]}" >SHA256SUMS.tmp.$$ && mv SHA256SUMS.tmp.$$ SHA256SUMS)
echo "release: $dist" >&2
cat "$dist/SHA256SUMS" >&2
