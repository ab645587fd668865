#!/usr/bin/env bash
# `make bench`: the plugin against the raw HSM and Vault's Transit, in one
# run, on two token implementations side by side (a scratch SoftHSM2 token
# at kms/ and a scratch NSS softokn token at kms-nss/) and one dev Vault
# (the binary the tests use). Prints a table and writes
# bench-results/bench.json. Settings, all optional:
#   HSMKMS_BENCH_CONCURRENCY (8), HSMKMS_BENCH_DURATION (5s per scenario),
#   HSMKMS_BENCH_SOAK (5m of mixed load; 0 skips it), HSMKMS_BENCH_PORT (18200),
#   HSMKMS_BENCH_SCALE_KEYS (100000 wrapped keys in kms-scale/ against 10 in
#   kms-small/, both on the SoftHSM2 token; 0 skips it),
#   HSMKMS_BENCH_SCALE_DURATION (its measured phase; default 3 x DURATION),
#   HSMKMS_BENCH_SCALE_WARMUP (5m: bound on its warm-up pass; 0: none).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib.sh
source scripts/lib.sh

bash scripts/deps.sh
vault_bin=$(bash scripts/build-vault.sh)
build_plugin
CGO_ENABLED=1 go build -o bin/hsmkms-bench ./cmd/hsmkms-bench
mkdir -p bench-results

work=$(mktemp -d "${TMPDIR:-/tmp}/hsmkms-bench.XXXXXX")
vault_pid=""
cleanup() {
  [[ -n $vault_pid ]] && { kill "$vault_pid" 2>/dev/null || true; wait "$vault_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

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
printf 'plugin_directory = "%s"\n' "$root/bin" >"$work/vault.hcl"
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
sha=$(sha256sum bin/vault-plugin-secrets-hsmkms | cut -d' ' -f1)
# Both modules' directories (as given and resolved) are allowed.
library_dirs=$(printf '%s\n' "$library" "$(readlink -f "$library")" "$nss_library" "$(readlink -f "$nss_library")" |
  xargs -n1 dirname | sort -u | paste -sd:)
quietly "$vault_bin" write sys/plugins/catalog/secret/hsmkms sha256="$sha" \
  command=vault-plugin-secrets-hsmkms env="HSMKMS_LIBRARY_DIRS=$library_dirs"
quietly "$vault_bin" secrets enable -path=kms hsmkms
quietly "$vault_bin" write kms/config library="$library" token_label=bench pin=@"$work/softhsm/pin" max_keys=0
quietly "$vault_bin" secrets enable -path=kms-nss hsmkms
quietly "$vault_bin" write kms-nss/config library="$nss_library" init_args=@"$work/nss/init-args" token_label=bench \
  pin=@"$work/nss/pin" max_keys=0
plugin_pid=$(pgrep -P "$vault_pid" -f vault-plugin-secrets-hsmkms | head -1 || true)

echo "== through Vault (plugin pid ${plugin_pid:-unknown})" >&2
SOFTHSM2_CONF="$conf" bin/hsmkms-bench -library "$library" -token-label bench -pin-file "$work/softhsm/pin" -kms kms \
  -nss-library "$nss_library" -nss-init-args-file "$work/nss/init-args" -nss-token-label bench \
  -nss-pin-file "$work/nss/pin" -nss-kms kms-nss \
  -concurrency "${HSMKMS_BENCH_CONCURRENCY:-8}" -duration "${HSMKMS_BENCH_DURATION:-5s}" \
  -soak "${HSMKMS_BENCH_SOAK:-5m}" -plugin-pid "${plugin_pid:-0}" \
  -scale-keys "${HSMKMS_BENCH_SCALE_KEYS:-100000}" -scale-duration "${HSMKMS_BENCH_SCALE_DURATION:-0}" \
  -scale-warmup-max "${HSMKMS_BENCH_SCALE_WARMUP:-5m}" \
  -gobench bench-results/gobench.txt -out bench-results/bench.json | tee bench-results/table.txt
echo "JSON: bench-results/bench.json" >&2
