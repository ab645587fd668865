# The transit data sources against hsmkms keys: encrypt/decrypt round trips
# (AES and RSA), sign/verify (ECDSA and RSA), verify of an HMAC made through
# the generic endpoint. Only deterministic values are outputs, so that a
# plan after apply has nothing to change.
terraform {
  required_providers {
    vault = {
      source  = "hashicorp/vault"
      version = "5.9.0"
    }
  }
}

provider "vault" {}

variable "backend" { type = string }
variable "plaintext" { type = string }

resource "vault_transit_secret_backend_key" "aes" {
  backend          = var.backend
  name             = "tf-ds-aes"
  type             = "aes256-gcm96"
  deletion_allowed = true
}

resource "vault_transit_secret_backend_key" "rsa" {
  backend          = var.backend
  name             = "tf-ds-rsa"
  type             = "rsa-2048"
  deletion_allowed = true
}

resource "vault_transit_secret_backend_key" "ec" {
  backend          = var.backend
  name             = "tf-ds-ec"
  type             = "ecdsa-p256"
  deletion_allowed = true
}

resource "vault_transit_secret_backend_key" "hmac" {
  backend          = var.backend
  name             = "tf-ds-hmac"
  type             = "hmac"
  key_size         = 32
  deletion_allowed = true
}

data "vault_transit_encrypt" "aes" {
  backend   = var.backend
  key       = vault_transit_secret_backend_key.aes.name
  plaintext = var.plaintext
}

data "vault_transit_decrypt" "aes" {
  backend    = var.backend
  key        = vault_transit_secret_backend_key.aes.name
  ciphertext = data.vault_transit_encrypt.aes.ciphertext
}

data "vault_transit_encrypt" "rsa" {
  backend   = var.backend
  key       = vault_transit_secret_backend_key.rsa.name
  plaintext = var.plaintext
}

data "vault_transit_decrypt" "rsa" {
  backend    = var.backend
  key        = vault_transit_secret_backend_key.rsa.name
  ciphertext = data.vault_transit_encrypt.rsa.ciphertext
}

data "vault_transit_sign" "ec" {
  path  = var.backend
  name  = vault_transit_secret_backend_key.ec.name
  input = base64encode(var.plaintext)
}

data "vault_transit_verify" "ec" {
  path      = var.backend
  name      = vault_transit_secret_backend_key.ec.name
  input     = base64encode(var.plaintext)
  signature = data.vault_transit_sign.ec.signature
}

data "vault_transit_verify" "ec_other_input" {
  path      = var.backend
  name      = vault_transit_secret_backend_key.ec.name
  input     = base64encode("${var.plaintext} (changed)")
  signature = data.vault_transit_sign.ec.signature
}

data "vault_transit_sign" "rsa" {
  path  = var.backend
  name  = vault_transit_secret_backend_key.rsa.name
  input = base64encode(var.plaintext)
}

data "vault_transit_verify" "rsa" {
  path      = var.backend
  name      = vault_transit_secret_backend_key.rsa.name
  input     = base64encode(var.plaintext)
  signature = data.vault_transit_sign.rsa.signature
}

# The provider has no HMAC data source; the generic endpoint makes one and
# keeps the response's hmac field.
resource "vault_generic_endpoint" "hmac" {
  path           = "${var.backend}/hmac/${vault_transit_secret_backend_key.hmac.name}"
  disable_read   = true
  disable_delete = true
  data_json      = jsonencode({ input = base64encode(var.plaintext) })
  write_fields   = ["hmac"]
}

data "vault_transit_verify" "hmac" {
  path  = var.backend
  name  = vault_transit_secret_backend_key.hmac.name
  input = base64encode(var.plaintext)
  hmac  = vault_generic_endpoint.hmac.write_data["hmac"]
}

output "aes_plaintext" {
  value     = data.vault_transit_decrypt.aes.plaintext
  sensitive = true
}
output "aes_ciphertext_prefix" { value = substr(data.vault_transit_encrypt.aes.ciphertext, 0, 9) }
output "rsa_plaintext" {
  value     = data.vault_transit_decrypt.rsa.plaintext
  sensitive = true
}
output "rsa_ciphertext_prefix" { value = substr(data.vault_transit_encrypt.rsa.ciphertext, 0, 9) }
output "ec_signature_prefix" { value = substr(data.vault_transit_sign.ec.signature, 0, 9) }
output "ec_valid" { value = data.vault_transit_verify.ec.valid }
output "ec_other_input_valid" { value = data.vault_transit_verify.ec_other_input.valid }
output "rsa_valid" { value = data.vault_transit_verify.rsa.valid }
output "hmac_prefix" { value = substr(vault_generic_endpoint.hmac.write_data["hmac"], 0, 9) }
output "hmac_valid" { value = data.vault_transit_verify.hmac.valid }
