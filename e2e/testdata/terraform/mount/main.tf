# Registers hsmkms in the plugin catalog, mounts it and configures it, all
# from Terraform, then uses the mount with a key and an encrypt/decrypt
# round trip.
terraform {
  required_providers {
    vault = {
      source  = "hashicorp/vault"
      version = "5.9.0"
    }
  }
}

provider "vault" {}

variable "plugin_name" { type = string }
variable "plugin_version" { type = string }
variable "plugin_sha256" { type = string }
variable "plugin_command" { type = string }
variable "plugin_env" { type = list(string) }
variable "path" { type = string }
variable "description" { type = string }
variable "library" { type = string }
variable "token_label" { type = string }
variable "init_args" {
  type    = string
  default = ""
}
variable "pin" {
  type      = string
  sensitive = true
}
variable "max_keys" { type = number }

resource "vault_plugin" "hsmkms" {
  type    = "secret"
  name    = var.plugin_name
  version = var.plugin_version
  sha256  = var.plugin_sha256
  command = var.plugin_command
  env     = var.plugin_env
}

resource "vault_mount" "kms" {
  path        = var.path
  type        = vault_plugin.hsmkms.name
  description = var.description
}

# The PIN is write-only: ignore_absent_fields keeps it out of the
# comparison with what config reads back.
resource "vault_generic_endpoint" "config" {
  path                 = "${vault_mount.kms.path}/config"
  ignore_absent_fields = true
  data_json = jsonencode(merge({
    library     = var.library
    token_label = var.token_label
    pin         = var.pin
    max_keys    = var.max_keys
  }, var.init_args == "" ? {} : { init_args = var.init_args }))
}

resource "vault_transit_secret_backend_key" "key" {
  backend          = vault_mount.kms.path
  name             = "tf-mounted"
  deletion_allowed = true
  depends_on       = [vault_generic_endpoint.config]
}

data "vault_transit_encrypt" "round" {
  backend   = vault_mount.kms.path
  key       = vault_transit_secret_backend_key.key.name
  plaintext = "mounted by terraform"
}

data "vault_transit_decrypt" "round" {
  backend    = vault_mount.kms.path
  key        = vault_transit_secret_backend_key.key.name
  ciphertext = data.vault_transit_encrypt.round.ciphertext
}

output "mount_type" { value = vault_mount.kms.type }
output "mount_description" { value = vault_mount.kms.description }
output "max_keys" { value = jsondecode(nonsensitive(vault_generic_endpoint.config.data_json)).max_keys }
output "key_type" { value = vault_transit_secret_backend_key.key.type }
output "plaintext" {
  value     = data.vault_transit_decrypt.round.plaintext
  sensitive = true
}
