#!/usr/bin/env bash
# `make test`: every test, in parts that run side by side, each started as
# soon as what it needs is ready. On a fresh 2-core machine most of the time
# is building the servers and clients from the module proxy, so the unit
# tests run meanwhile:
#
#   modules        this module's requirements, fetched many at a time
#   compile        go build and go vet ./...: every package and what the tests
#                  import, once, into the build cache all the parts share
#   vault, openbao, tofu, tf-provider   scripts/build-*.sh (cached: once per
#                  machine): their modules fetched at once, compiled once
#                  compile has ended, reusing what it compiled
#   then at once:  lint (gofmt, staticcheck), unit-root, unit-hsm,
#                  unit-other (every other package but e2e), race (the
#                  race detector on the races the code guards against),
#                  pure (internal/wire with no cgo: no PKCS#11 module)
#   e2e-1, e2e-2   once Vault is built: every e2e test but Terraform's and
#                  OpenBao's (the release test among them), in
#                  HSMKMS_E2E_SHARDS (2) processes side by side
#   e2e-openbao    once OpenBao is built too: the tests named *OnOpenBao
#   e2e-terraform  once OpenTofu and the provider are built too
#
# Each part's output is in test-logs/PART.log (HSMKMS_TEST_LOGS moves it).
# The run fails if any part fails; a part whose inputs failed to build is
# not run, and fails. The end prints each part's result, times and the CPU
# it used (user + system seconds of every process the part waited for).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib.sh
source scripts/lib.sh

bash scripts/deps.sh release

logs=${HSMKMS_TEST_LOGS:-$root/test-logs}
mkdir -p "$logs"
rm -f "$logs"/*.log "$logs"/*.result "$logs"/*.times "$logs"/*.lock
t0=$(date +%s)
module=$(go list -m)

declare -A pid=()
declare -a parts=()
failed=()

# cpu_seconds FILE turns the output of bash's `times` into the whole
# seconds of CPU (user + system) that the shell's waited-for children used.
cpu_seconds() {
  awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] + 0.5 }' "$1"
}

# part NAME "NEEDS" NICENESS FUNC [ARGS...] runs FUNC in the background,
# at NICENESS, once every part in NEEDS has ended, if they all succeeded;
# if one failed, NAME is recorded as not run (and fails). FUNC's output is
# in NAME.log; NAME.result gets its exit status, start, end and CPU seconds.
# A part holds NAME.lock from the moment it is declared until it has
# ended, and waiting for it is taking that lock: no part waits for another
# that was declared after it, and parts start in whatever order their
# needs end.
part() {
  local name=$1 needs=$2 niceness=$3 fd
  shift 3
  parts+=("$name")
  exec {fd}>"$logs/$name.lock"
  flock "$fd"
  (
    local p rc=0 begin end
    for p in $needs; do
      flock -s "$logs/$p.lock" true
      read -r rc _ <"$logs/$p.result" || rc=missing
      if [[ $rc != 0 ]]; then
        echo "needs $needs, and $p failed" >"$logs/$name.log"
        echo "not-run 0 0 0" >"$logs/$name.result"
        echo "test: $name NOT RUN: it needs $p, which failed" >&2
        exit 0
      fi
    done
    # The builds that nothing waits for soon yield the cores to the parts
    # that something does; every process FUNC starts inherits this.
    renice -n "$niceness" -p "$BASHPID" >/dev/null
    begin=$(($(date +%s) - t0))
    echo "test: $name started at $begin s" >&2
    # In the background, so that set -e holds inside FUNC (it is ignored in
    # a function called on the left of ||); without the lock, which only
    # this shell holds, so that no leftover process of FUNC can keep it.
    "$@" >"$logs/$name.log" 2>&1 {fd}>&- &
    wait $! || rc=$?
    end=$(($(date +%s) - t0))
    # Not in a command substitution: a forked shell would count no children.
    times >"$logs/$name.times"
    echo "$rc $begin $end $(cpu_seconds "$logs/$name.times")" >"$logs/$name.result"
    if ((rc)); then
      echo "test: $name FAILED (exit $rc, $((end - begin)) s): $logs/$name.log" >&2
    else
      echo "test: $name ok ($((end - begin)) s)" >&2
    fi
  ) &
  pid[$name]=$!
  exec {fd}>&-
}

# The packages of each unit part: listed, not spelled out, so that a new
# package is tested without anyone adding it here.
packages() {
  case $1 in
    root) echo "$module" ;;
    hsm) go list ./hsm/... ;;
    other) go list ./... | grep -v -x -e "$module" -e "$module/e2e" -e "$module/hsm" -e "$module/hsm/.*" ;;
  esac
}

# compile fills the build cache that every later part reads: go build
# compiles every package, go vet every package its tests import (and vets
# them, the lint part's vet).
compile() {
  go build ./...
  go vet ./...
}

lint() {
  local unformatted
  unformatted=$(gofmt -l . | grep -v '^vendor/' || true)
  if [[ -n $unformatted ]]; then
    echo "gofmt wants to change: $unformatted"
    return 1
  fi
  # staticcheck at a pinned version, through the module proxy.
  go run "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION:-v0.8.2}" ./...
}

unit() {
  local pkgs
  pkgs=$(packages "$1")
  # go test with no package would test the current directory's.
  [[ -n $pkgs ]] || { echo "no packages"; return 0; }
  # shellcheck disable=SC2086 # one word per package
  go test -count=1 -v -timeout 30m $pkgs
}

# pure: internal/wire as a machine with no PKCS#11 module runs it. Without
# cgo nothing can dlopen a module (miekg/pkcs11 does not even build), and
# its dependencies name no token, no Vault and nothing of ours.
pure() {
  local deps
  deps=$(go list -deps -test ./internal/wire/...)
  if grep -e 'miekg/pkcs11' -e 'hashicorp/vault' -e "$module/hsm" -e "$module/internal/tokentest" <<<"$deps"; then
    echo "internal/wire depends on the above: it must stay pure"
    return 1
  fi
  CGO_ENABLED=0 SOFTHSM2_CONF=/nonexistent go test -count=1 -v ./internal/wire/...
}

# The races the code guards against, under the race detector: the key
# cache's fill against writers, Close against calls, the pool's bound.
# Compiled without optimisation (-N -l): the race build is a build of its
# own, of Vault's whole SDK, and a quarter cheaper so (296 -> 229 CPU-s);
# the tests run no slower, and the detector then sees every memory access
# the source makes, none optimised away.
race() {
  local flags=(-count=1 -v -race -gcflags='all=-N -l' -timeout 10m)
  go test "${flags[@]}" -run 'TestKeyCacheNeverGoesBack|TestConcurrentMixedOperations' .
  go test "${flags[@]}" -run 'TestCloseRacingCallsNeverCrashes|TestNoSessionLeakedByCloseUnderLoad|TestPoolNeverExceedsItsSize' ./hsm
}

# e2e ARGS: the e2e package against the Vault built above (the script
# prints the cached path at once), with go test's ARGS.
e2e() {
  HSMKMS_E2E=1 HSMKMS_VAULT_BIN=$(bash scripts/build-vault.sh) go test -count=1 -v -timeout 30m ./e2e "$@"
}

# e2e_shard I N: every Nth e2e test from the Ith, but Terraform's and
# OpenBao's. The tests run one after another within a go test process, and
# much of each is waiting for a server, so shards in parallel shorten the
# longest part. Listed, not named, so that a new test lands in a shard by
# itself.
e2e_shard() {
  local names
  names=$(HSMKMS_E2E='' go test -list '.' ./e2e | grep '^Test' | grep -v -e '^TestTerraform' -e 'OnOpenBao$' |
    awk -v i="$1" -v n="$2" 'NR % n == i % n')
  [[ -n $names ]] || { echo "no tests in this shard"; return 0; }
  e2e -run "^($(paste -sd'|' <<<"$names"))\$"
}

# The tests on OpenBao: their names end in OnOpenBao (the e2e package fails
# a test that runs OpenBao under another name).
e2e_openbao() {
  HSMKMS_OPENBAO_BIN=$(bash scripts/build-openbao.sh) e2e -run 'OnOpenBao$'
}

# The real Transit clients: OpenTofu and terraform-provider-vault 5.9.0,
# served to it from a filesystem mirror (no network at test time).
e2e_terraform() {
  HSMKMS_TOFU_BIN=$(bash scripts/build-tofu.sh) HSMKMS_TF_MIRROR=$(bash scripts/build-tf-provider.sh) \
    e2e -run '^TestTerraform'
}

part modules "" 0 fetch_modules -test ./...
part compile modules 0 compile
# The builds fetch their modules at once, and compile once compile has
# filled the build cache they share with it (see build_server in lib.sh).
export HSMKMS_BUILD_AFTER="$logs/compile.lock"
part vault "" 0 bash scripts/build-vault.sh
part openbao "" 10 bash scripts/build-openbao.sh
part tofu "" 15 bash scripts/build-tofu.sh
part tf-provider "" 19 bash scripts/build-tf-provider.sh
part lint compile 0 lint
part unit-root compile 0 unit root
part unit-hsm compile 0 unit hsm
part unit-other compile 0 unit other
part race compile 0 race
part pure compile 0 pure
# The e2e parts wait for compile too, so that they never compile what
# compile is compiling.
shards=${HSMKMS_E2E_SHARDS:-2}
for ((i = 1; i <= shards; i++)); do
  part "e2e-$i" "compile vault" 0 e2e_shard "$i" "$shards"
done
part e2e-openbao "compile vault openbao" 0 e2e_openbao
part e2e-terraform "compile vault tofu tf-provider" 0 e2e_terraform

for p in "${parts[@]}"; do wait "${pid[$p]}" || true; done

total=$(($(date +%s) - t0))
echo
printf '%-14s %-8s %7s %7s %7s %7s %6s\n' part result start end seconds cpu skips
for p in "${parts[@]}"; do
  read -r rc begin end cpu <"$logs/$p.result"
  case $rc in
    0) result=ok ;;
    not-run) result="not run" ;;
    *) result=FAILED ;;
  esac
  [[ $rc == 0 ]] || failed+=("$p")
  skips=$(grep -c -e '--- SKIP' "$logs/$p.log" || true)
  printf '%-14s %-8s %7s %7s %7s %7s %6s\n' "$p" "$result" "$begin" "$end" "$((end - begin))" "$cpu" "$skips"
done
times >"$logs/total.times"
echo "total: $total s, $(cpu_seconds "$logs/total.times") s of CPU; logs in $logs"
if ((${#failed[@]})); then
  for p in "${failed[@]}"; do
    echo
    echo "===== $p: the end of $logs/$p.log"
    grep -e '--- FAIL' "$logs/$p.log" || true
    tail -n 60 "$logs/$p.log"
  done
  echo "test: FAILED: ${failed[*]}" >&2
  exit 1
fi
