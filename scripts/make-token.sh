#!/usr/bin/env bash
# Makes (once) a SoftHSM2 token in a project-local directory and prints the
# SOFTHSM2_CONF path. The PIN is generated and kept in a 0600 file beside the
# token, never in the environment or on a command line that `ps` would show
# for long.
#   usage: scripts/make-token.sh DIR [LABEL]
set -euo pipefail

dir=${1:?usage: make-token.sh DIR [LABEL]}
label=${2:-hsmkms}
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
cat >"$conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF

umask 077
if [[ ! -s "$dir/pin" ]]; then
  od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$dir/pin"
  od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$dir/so-pin"
fi
if ! SOFTHSM2_CONF="$conf" softhsm2-util --show-slots 2>/dev/null | grep -q "Label:[[:space:]]*$label\$"; then
  SOFTHSM2_CONF="$conf" softhsm2-util --init-token --free --label "$label" \
    --pin "$(cat "$dir/pin")" --so-pin "$(cat "$dir/so-pin")" >/dev/null
fi
echo "$conf"
