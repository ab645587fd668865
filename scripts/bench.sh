#!/usr/bin/env bash
# `make bench`: the plugin against the raw HSM and Vault's Transit, in one
# run, on two token implementations side by side (a scratch SoftHSM2 token
# at kms/ and a scratch NSS softokn token at kms-nss/) and one dev Vault
# (the binary the tests use), at each simulated network HSM round trip.
# The plugin is built with the hsmkms_benchrtt tag, which a release never
# has: each of its PKCS#11 calls then takes HSMKMS_BENCH_HSM_RTT longer, as
# a network HSM's do, and is counted (internal/netsim). One plugin is
# registered per round trip, with its own mounts; the raw tokens go through
# the same simulated network in the bench's process. Prints a table and
# writes bench-results/bench.json. Settings, all optional:
#   HSMKMS_BENCH_RTTS ("0 2ms": the round trips, Go durations),
#   HSMKMS_BENCH_CONCURRENCY (8), HSMKMS_BENCH_DURATION (5s per scenario),
#   HSMKMS_BENCH_SOAK (5m of mixed load; 0 skips it), HSMKMS_BENCH_PORT (18200),
#   HSMKMS_BENCH_SCALE_KEYS (100000 wrapped keys in kms-scale/ against 10 in
#   kms-small/, both on the SoftHSM2 token; 0 skips it),
#   HSMKMS_BENCH_SCALE_DURATION (its measured phase; default 3 x DURATION),
#   HSMKMS_BENCH_SCALE_WARMUP (5m: bound on its warm-up pass; 0: none).
# The soak and the scale scenario run at round trip 0.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib.sh
source scripts/lib.sh

bash scripts/deps.sh
vault_bin=$(bash scripts/build-vault.sh)
CGO_ENABLED=1 go build -o bin/hsmkms-bench ./cmd/hsmkms-bench
rtts=$(bin/hsmkms-bench rtts "${HSMKMS_BENCH_RTTS:-0 2ms}")
mkdir -p bench-results

work=$(mktemp -d "${TMPDIR:-/tmp}/hsmkms-bench.XXXXXX")
vault_pid=""
cleanup() {
  [[ -n $vault_pid ]] && { kill "$vault_pid" 2>/dev/null || true; wait "$vault_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
# The bench's plugin goes in the scratch directory, never in bin/ where
# `make dev` and `make test` find the plugin they run.
mkdir -p "$work/plugins"
CGO_ENABLED=1 go build -tags hsmkms_benchrtt -ldflags "-X $(version_var)=v0.0.0-dev" \
  -o "$work/plugins/vault-plugin-secrets-hsmkms" ./cmd/vault-plugin-secrets-hsmkms

echo "== in-process handler benchmarks, and the PKCS11 seam on every token" >&2
{
  go test -count=1 -run '^$' -bench 'Handler|HSM' -benchtime 2s .
  go test -count=1 -run '^$' -bench 'Seam' -benchtime 3s ./hsm/
} | tee bench-results/gobench.txt >&2

conf=$(bash scripts/make-token.sh "$work/softhsm" bench)
library=$(softhsm_library)
nss_library=$(bin/hsmkms-bench make-nss-token -dir "$work/nss" -label bench)
port=${HSMKMS_BENCH_PORT:-18200}
export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN=bench-root
printf 'plugin_directory = "%s"\n' "$work/plugins" >"$work/vault.hcl"
SOFTHSM2_CONF="$conf" "$vault_bin" server -dev -dev-root-token-id="$VAULT_TOKEN" \
  -dev-listen-address="127.0.0.1:$port" -config="$work/vault.hcl" >"$work/vault.log" 2>&1 &
vault_pid=$!
for _ in $(seq 1 100); do
  "$vault_bin" status >/dev/null 2>&1 && break
  kill -0 "$vault_pid" 2>/dev/null || { cat "$work/vault.log" >&2; exit 1; }
  sleep 0.2
done
# quietly runs a vault command, showing its output only when it fails (a
# config write warns that it made the default key).
quietly() { "$@" >"$work/cmd.log" 2>&1 || { cat "$work/cmd.log" >&2; return 1; }; }
sha=$(sha256sum "$work/plugins/vault-plugin-secrets-hsmkms" | cut -d' ' -f1)
# Both modules' directories (as given and resolved) are allowed.
library_dirs=$(printf '%s\n' "$library" "$(readlink -f "$library")" "$nss_library" "$(readlink -f "$nss_library")" |
  xargs -n1 dirname | sort -u | paste -sd:)
# register NAME RTT SOCKET: the plugin as NAME, every PKCS#11 call of its
# process RTT longer, its call counters served on SOCKET.
register() {
  quietly "$vault_bin" write "sys/plugins/catalog/secret/$1" sha256="$sha" command=vault-plugin-secrets-hsmkms \
    env="HSMKMS_LIBRARY_DIRS=$library_dirs" env="HSMKMS_BENCH_HSM_RTT=$2" env="HSMKMS_BENCH_SEAM_SOCKET=$3"
}
# mount_pair PLUGIN SUFFIX: kmsSUFFIX/ on the SoftHSM2 token and
# kms-nssSUFFIX/ on the NSS one, both served by PLUGIN.
mount_pair() {
  quietly "$vault_bin" secrets enable -path="kms$2" "$1"
  quietly "$vault_bin" write "kms$2/config" library="$library" token_label=bench pin=@"$work/softhsm/pin" max_keys=0
  quietly "$vault_bin" secrets enable -path="kms-nss$2" "$1"
  quietly "$vault_bin" write "kms-nss$2/config" library="$nss_library" init_args=@"$work/nss/init-args" token_label=bench \
    pin=@"$work/nss/pin" max_keys=0
}
# kms/ and kms-nss/ (and the soak and the scale scenario) at round trip 0.
register hsmkms 0s "$work/seam-0.sock"
mount_pair hsmkms ""
plugin_pid=$(pgrep -P "$vault_pid" -f vault-plugin-secrets-hsmkms | head -1 || true)
phases=()
i=0
for rtt in $rtts; do
  if [[ $rtt == 0s ]]; then
    phases+=(-phase "rtt=0s,kms=kms,nss-kms=kms-nss,seam=$work/seam-0.sock")
    continue
  fi
  i=$((i + 1))
  register "hsmkms-rtt$i" "$rtt" "$work/seam-rtt$i.sock"
  mount_pair "hsmkms-rtt$i" "-rtt$i"
  phases+=(-phase "rtt=$rtt,kms=kms-rtt$i,nss-kms=kms-nss-rtt$i,seam=$work/seam-rtt$i.sock")
done

echo "== through Vault (plugin pid ${plugin_pid:-unknown})" >&2
SOFTHSM2_CONF="$conf" bin/hsmkms-bench -library "$library" -token-label bench -pin-file "$work/softhsm/pin" -kms kms \
  -nss-library "$nss_library" -nss-init-args-file "$work/nss/init-args" -nss-token-label bench \
  -nss-pin-file "$work/nss/pin" -nss-kms kms-nss \
  -concurrency "${HSMKMS_BENCH_CONCURRENCY:-8}" -duration "${HSMKMS_BENCH_DURATION:-5s}" \
  -soak "${HSMKMS_BENCH_SOAK:-5m}" -plugin-pid "${plugin_pid:-0}" \
  -scale-keys "${HSMKMS_BENCH_SCALE_KEYS:-100000}" -scale-duration "${HSMKMS_BENCH_SCALE_DURATION:-0}" \
  -scale-warmup-max "${HSMKMS_BENCH_SCALE_WARMUP:-5m}" \
  "${phases[@]}" -gobench bench-results/gobench.txt -out bench-results/bench.json | tee bench-results/table.txt
echo "JSON: bench-results/bench.json" >&2
