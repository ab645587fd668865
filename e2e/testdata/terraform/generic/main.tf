# A key made and read back through vault_generic_endpoint on keys/:name,
# its config written through keys/:name/config, and the key read with the
# vault_generic_secret data source; on each backend in var.backends
# (hsmkms and Vault's own Transit, for the test to compare).
terraform {
  required_providers {
    vault = {
      source  = "hashicorp/vault"
      version = "5.9.0"
    }
  }
}

provider "vault" {}

variable "backends" { type = list(string) }
variable "name" { type = string }
variable "min_decryption_version" { type = number }

resource "vault_generic_endpoint" "key" {
  for_each             = toset(var.backends)
  path                 = "${each.key}/keys/${var.name}"
  ignore_absent_fields = true
  data_json = jsonencode({
    type = "ecdsa-p256"
  })
}

# keys/:name/config has no read, in Transit as here. Transit takes
# deletion_allowed only here, not at create.
resource "vault_generic_endpoint" "config" {
  for_each       = vault_generic_endpoint.key
  path           = "${each.value.path}/config"
  disable_read   = true
  disable_delete = true
  data_json = jsonencode({
    min_decryption_version = var.min_decryption_version
    deletion_allowed       = true
  })
}

data "vault_generic_secret" "key" {
  for_each   = vault_generic_endpoint.key
  path       = each.value.path
  depends_on = [vault_generic_endpoint.config]
}

output "keys" {
  # Only metadata is read here; the data source marks all of it sensitive.
  value = { for b, d in data.vault_generic_secret.key : b => {
    for f, v in jsondecode(nonsensitive(d.data_json)) : f => v
    if contains(["type", "latest_version", "min_decryption_version", "deletion_allowed", "supports_signing"], f)
  } }
}

output "versions" {
  value = { for b, d in data.vault_generic_secret.key : b => {
    for v, k in jsondecode(nonsensitive(d.data_json)).keys : v => keys(k)
  } }
}
