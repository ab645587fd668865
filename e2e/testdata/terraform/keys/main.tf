# vault_transit_secret_backend_key for every key type the plugin shares with
# Transit, on each backend in var.backends (hsmkms and Vault's own Transit,
# so that the test can compare what the provider sees on both).
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
variable "types" { type = map(string) }
variable "min_decryption_version" {
  type    = number
  default = 1
}

locals {
  keys = { for pair in setproduct(var.backends, keys(var.types)) :
  "${pair[0]}/${pair[1]}" => { backend = pair[0], name = pair[1], type = var.types[pair[1]] } }
}

resource "vault_transit_secret_backend_key" "k" {
  for_each               = local.keys
  backend                = each.value.backend
  name                   = each.value.name
  type                   = each.value.type
  deletion_allowed       = true
  min_decryption_version = var.min_decryption_version
  # Transit refuses the provider's default key_size of 0 for HMAC keys.
  key_size = each.value.type == "hmac" ? 32 : 0
}

output "keys" {
  value = { for id, k in vault_transit_secret_backend_key.k : id => {
    type                   = k.type
    latest_version         = k.latest_version
    min_available_version  = k.min_available_version
    min_decryption_version = k.min_decryption_version
    min_encryption_version = k.min_encryption_version
    deletion_allowed       = k.deletion_allowed
    exportable             = k.exportable
    derived                = k.derived
    supports_encryption    = k.supports_encryption
    supports_decryption    = k.supports_decryption
    supports_signing       = k.supports_signing
    key_size               = k.key_size
    # The provider lists versions in Go map order: sorted here, so that
    # the outputs are the same from one run to the next.
    version_fields = sort([for ver in k.keys : join(",", sort(keys(ver)))])
    public_keys    = sort([for ver in k.keys : substr(lookup(ver, "public_key", ""), 0, 26)])
  } }
}
