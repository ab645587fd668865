#!/usr/bin/env bash
# Regenerates the compatibility fixture of one commit: builds
# testdata/compat/<sha>/gen inside a `git archive <sha>` (as cmd/compatgen,
# so it imports that commit's plugin), runs it on a fresh SoftHSM2 token,
# captures the token, checks the fixture with the same plugin on a copy,
# and only then replaces the fixture's files.
#   usage: testdata/compat/regen.sh <sha>
set -euo pipefail

sha=${1:?usage: regen.sh <sha> (a directory under testdata/compat with gen/)}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
fixture="$repo/testdata/compat/$sha"
[[ -f $fixture/gen/main.go ]] || { echo "no generator at $fixture/gen/main.go" >&2; exit 1; }
# shellcheck source=../../scripts/lib.sh
source "$repo/scripts/lib.sh"
library=$(softhsm_library)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The commit's tree, with the generator added as one of its commands.
mkdir -p "$tmp/src"
git -C "$repo" archive "$sha" | tar -x -C "$tmp/src"
mkdir -p "$tmp/src/cmd/compatgen"
cp "$fixture"/gen/*.go "$tmp/src/cmd/compatgen/"
(cd "$tmp/src" && CGO_ENABLED=1 GOFLAGS=-mod=mod go build -o "$tmp/compatgen" ./cmd/compatgen)

# softhsm_conf DIR writes a SoftHSM2 config whose token directory is DIR/tokens.
softhsm_conf() {
  mkdir -p "$1/tokens"
  cat >"$1/softhsm2.conf" <<CONF
directories.tokendir = $1/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
}

# A throw-away token: its PINs are recorded in meta.json, so they are fixed.
label="compat-$sha"
pin="compat-$sha-pin"
so_pin="compat-$sha-so-pin"
softhsm_conf "$tmp/gen"
SOFTHSM2_CONF="$tmp/gen/softhsm2.conf" softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >/dev/null

SOFTHSM2_CONF="$tmp/gen/softhsm2.conf" "$tmp/compatgen" generate -out "$tmp/out" \
  -library "$library" -label "$label" -pin "$pin" -so-pin "$so_pin"

# The token directory is one subdirectory (named by SoftHSM) of tokens/.
# The archive is made reproducible apart from the key material itself.
tokdir=$(cd "$tmp/gen/tokens" && ls)
[[ $(wc -w <<<"$tokdir") == 1 ]] || { echo "expected one token directory, found: $tokdir" >&2; exit 1; }
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/gen/tokens" -cf - "$tokdir" | gzip -n -9 >"$tmp/out/token.tar.gz"

# The fixture must pass with the plugin that made it, from a copy of the
# token, before it replaces anything.
softhsm_conf "$tmp/check"
tar -xzf "$tmp/out/token.tar.gz" -C "$tmp/check/tokens"
SOFTHSM2_CONF="$tmp/check/softhsm2.conf" "$tmp/compatgen" check -out "$tmp/out"

cp "$tmp/out/storage.json" "$tmp/out/values.json" "$tmp/out/meta.json" "$tmp/out/token.tar.gz" "$fixture/"
du -sh "$fixture"
