# Shared by the scripts: where things are. Sourced, not run.
# shellcheck shell=bash

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

# build_plugin builds the plugin (cgo is required by miekg/pkcs11) into bin/.
build_plugin() {
  mkdir -p bin
  CGO_ENABLED=1 go build -trimpath -o bin/vault-plugin-secrets-hsmkms ./cmd/vault-plugin-secrets-hsmkms
}
