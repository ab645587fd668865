package hsmkms

// version is the plugin's semantic version, reported to Vault as the
// backend's RunningVersion: `vault plugin info` and `vault secrets list
// -detailed` show it, and a registration that names a version must match
// it. Release builds set it with
// -ldflags "-X github.com/hsmkms/vault-plugin-secrets-hsmkms.version=v1.2.3"
// (`make plugin VERSION=v1.2.3`, `make release VERSION=...`).
var version = "v0.0.0-dev"
