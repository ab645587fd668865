#!/usr/bin/env bash
# The main job: a dev Vault with hsmkms mounted at kms/ on a SoftHSM2 token.
# Installs what is missing, builds Vault (once, cached) and the plugin, makes
# a project-local token, registers the plugin by SHA-256, mounts and
# configures it, prints how to use it, and runs until interrupted. Kills only
# the Vault it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib.sh
source scripts/lib.sh

bash scripts/deps.sh
# Vault's build (once: minutes on a fresh machine) fetches its modules while
# the plugin compiles, then compiles on the build cache the plugin filled
# (build_server in lib.sh): it waits for the lock held until then.
vault_path=$(mktemp)
plugin_built=$(mktemp)
exec {plugin_lock}>"$plugin_built"
flock "$plugin_lock"
HSMKMS_BUILD_AFTER=$plugin_built bash scripts/build-vault.sh >"$vault_path" {plugin_lock}>&- &
vault_build=$!
fetch_modules ./cmd/vault-plugin-secrets-hsmkms
build_plugin
exec {plugin_lock}>&-
wait "$vault_build" || { echo "dev: building Vault failed (see above)" >&2; exit 1; }
rm -f "$plugin_built"
vault_bin=$(cat "$vault_path")
rm -f "$vault_path"
state="$root/.dev"
mkdir -p "$state"
conf=$(bash scripts/make-token.sh "$state/softhsm" hsmkms)
library=$(softhsm_library)

port=${HSMKMS_DEV_PORT:-8200}
export VAULT_ADDR="http://127.0.0.1:$port"
export VAULT_TOKEN=${HSMKMS_DEV_ROOT_TOKEN:-root}
cat >"$state/vault.hcl" <<HCL
plugin_directory = "$root/bin"
HCL

SOFTHSM2_CONF="$conf" "$vault_bin" server -dev -dev-root-token-id="$VAULT_TOKEN" \
  -dev-listen-address="127.0.0.1:$port" -config="$state/vault.hcl" >"$state/vault.log" 2>&1 &
vault_pid=$!
trap 'kill "$vault_pid" 2>/dev/null || true; wait "$vault_pid" 2>/dev/null || true' EXIT
trap 'exit 0' INT TERM

for _ in $(seq 1 100); do
  "$vault_bin" status >/dev/null 2>&1 && break
  kill -0 "$vault_pid" 2>/dev/null || { cat "$state/vault.log" >&2; exit 1; }
  sleep 0.2
done

sha=$(sha256sum bin/vault-plugin-secrets-hsmkms | cut -d' ' -f1)
# Through the catalog API, as on OpenBao, whose `plugin register` has no -env.
"$vault_bin" write sys/plugins/catalog/secret/hsmkms sha256="$sha" command=vault-plugin-secrets-hsmkms \
  env="HSMKMS_LIBRARY_DIRS=$(dirname "$(readlink -f "$library")"):$(dirname "$library")" >/dev/null
"$vault_bin" secrets enable -path=kms hsmkms >/dev/null
"$vault_bin" write kms/config library="$library" token_label=hsmkms pin=@"$state/softhsm/pin" >/dev/null

cat <<INFO

hsmkms is mounted at kms/ on the SoftHSM2 token 'hsmkms' ($state/softhsm).

    export VAULT_ADDR=$VAULT_ADDR
    export VAULT_TOKEN=$VAULT_TOKEN
    export PATH="$(dirname "$vault_bin"):\$PATH"

Try:

    vault write kms/keys/app1 type=aes256-gcm96
    vault write kms/encrypt/app1 plaintext=\$(echo -n "my secret" | base64)
    vault write kms/decrypt/app1 ciphertext=vault:v1:...

Vault's log: $state/vault.log. Ctrl-C stops Vault.
INFO
wait "$vault_pid"
