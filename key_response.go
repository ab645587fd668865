package hsmkms

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

// keyResponse is the read form: Transit's fields plus the seeds'.
func keyResponse(k *keyring.Entry) map[string]interface{} {
	versions := make(map[string]interface{}, len(k.Versions))
	objects := make(map[string]map[string]interface{}, len(k.Versions))
	jwks := map[string]interface{}{}
	kt := k.KeyType()
	for v, kv := range k.Versions {
		objects[strconv.Itoa(v)] = map[string]interface{}{
			"id":                hex.EncodeToString(kv.ObjectID),
			"label":             kv.Label,
			"origin":            kv.OriginName(),
			"public_only":       kv.PublicOnly(),
			"transit_layout":    kv.TransitLayout,
			"extractable":       kv.Extractable,
			"destroy_on_delete": kv.OwnsObject(),
		}
		if kv.Wrapped() {
			objects[strconv.Itoa(v)]["kek_version"] = kv.KEKVersion
		}
		if kv.HMACObjectID != nil {
			objects[strconv.Itoa(v)]["hmac_id"] = hex.EncodeToString(kv.HMACObjectID)
			objects[strconv.Itoa(v)]["hmac_label"] = kv.Label + "/hmac"
		}
		if v < k.MinDecryptionVersion {
			continue // Transit lists only the versions that still decrypt
		}
		if !kt.Asymmetric() {
			versions[strconv.Itoa(v)] = kv.CreationTime.Unix()
			continue
		}
		// Exactly Transit's fields, all strings: clients such as the
		// Terraform provider decode each version as a map of strings.
		versions[strconv.Itoa(v)] = map[string]interface{}{
			"name":              transitKeyName(kt),
			"creation_time":     kv.CreationTime.Format(time.RFC3339Nano),
			"public_key":        transitPublicKey(kt, kv.PublicKey),
			"certificate_chain": "",
			"hybrid_public_key": "",
		}
		if jwk, err := wire.PublicJWK(kv.PublicKey, fmt.Sprintf("%s:v%d", k.Name, v)); err == nil {
			jwks[strconv.Itoa(v)] = jwk
		}
	}
	resp := map[string]interface{}{
		"name":                   k.Name,
		"type":                   k.Type,
		"keys":                   versions,
		"latest_version":         k.LatestVersion,
		"min_available_version":  k.MinAvailableVersion,
		"min_decryption_version": k.MinDecryptionVersion,
		"min_encryption_version": k.MinEncryptionVersion,
		"deletion_allowed":       k.DeletionAllowed,
		"auto_rotate_period":     int64(k.AutoRotatePeriod.Seconds()),
		"exportable":             false,
		"allow_plaintext_backup": false,
		"derived":                false,
		"convergent_encryption":  false,
		"imported_key":           k.Imported,
		"allow_rotation":         k.AllowRotation,
		"supports_encryption":    k.Allows(keyring.OpEncrypt) || k.Allows(keyring.OpWrapKey),
		"supports_decryption":    k.Allows(keyring.OpDecrypt) || k.Allows(keyring.OpUnwrapKey),
		"supports_derivation":    false,
		"supports_signing":       k.Allows(keyring.OpSign) && kt.Family != keyring.FamilyHMAC,
		"state":                  k.State,
		"tags":                   nonNilTags(k.Tags),
		"operations":             k.Operations,
		"description":            k.Description,
		"residency":              k.Residency,
		"hsm_objects":            objects,
		"public_jwks":            jwks,
	}
	if !k.DeletionDate.IsZero() {
		resp["deletion_date"] = k.DeletionDate.Format(time.RFC3339)
	}
	if kt.Family == keyring.FamilyHMAC {
		// Transit's read of an HMAC key: key_size in bytes (the Terraform
		// provider needs it) and no keys map; versions are in hsm_objects.
		resp["key_size"] = kt.Bits / 8
		delete(resp, "keys")
	}
	return resp
}

// keyTypeNamed is the key type of that name, or the zero type.
func keyTypeNamed(name string) keyring.KeyType {
	kt, _ := keyring.Type(name)
	return kt
}
