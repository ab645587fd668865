package hsmkms

import (
	"context"
	"encoding/base64"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

const (
	defaultDatakeyBits = 256
	minDatakeyBits     = 64
	maxDatakeyBits     = 4096
)

func datakeyFields() map[string]*framework.FieldSchema {
	fields := contextFields()
	delete(fields, "batch_input")
	delete(fields, "partial_failure_response_code")
	fields["name"] = nameField
	return fields
}

func (b *backend) pathDatakey() *framework.Path {
	fields := datakeyFields()
	fields["plaintext"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "'plaintext' returns the data key and its ciphertext; 'wrapped' returns only the ciphertext.",
	}
	fields["bits"] = &framework.FieldSchema{
		Type:        framework.TypeInt,
		Description: "Length of the data key in bits: 64 to 4096, a multiple of 8. Default 256.",
		Default:     defaultDatakeyBits,
	}
	fields["key_version"] = &framework.FieldSchema{
		Type:        framework.TypeInt,
		Description: "Key version to wrap with; 0 (default) means the latest.",
	}
	return &framework.Path{
		Pattern:      "datakey/(?P<plaintext>plaintext|wrapped)/" + keyNamePattern,
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "generate", OperationSuffix: "data-key"},
		Fields:       fields,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathDatakeyWrite, Summary: "Make a data key from the HSM's RNG, wrapped by a key."},
		},
		HelpSynopsis: "Generate a data key for envelope encryption.",
		HelpDescription: `
Draws a data key from the HSM's RNG and encrypts it with the key (AES-GCM in
the HSM), as encrypt would: the ciphertext decrypts with datakey/decrypt and
with decrypt. Use the plaintext key to encrypt large data locally, keep only
the ciphertext, and forget the plaintext key. Needs the key's wrapKey
operation. The context fields bind as in encrypt.

    $ vault write -f kms/datakey/plaintext/app1 bits=256
`,
	}
}

func (b *backend) pathDatakeyDecrypt() *framework.Path {
	fields := datakeyFields()
	fields["ciphertext"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "The data key's ciphertext as datakey returned it.",
	}
	return &framework.Path{
		Pattern:      "datakey/decrypt/" + keyNamePattern,
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "decrypt", OperationSuffix: "data-key"},
		Fields:       fields,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathDatakeyDecryptWrite, Summary: "Unwrap a data key."},
		},
		HelpSynopsis: "Decrypt (unwrap) a data key made by datakey.",
		HelpDescription: `
Returns the plaintext of a data key's ciphertext. Needs the key's unwrapKey
operation and the same context fields the data key was made with. Only data
keys are opened here: a ciphertext made by encrypt is refused, so a token
allowed datakey/decrypt cannot decrypt ordinary data. (decrypt, which needs
the decrypt operation, opens both.)
`,
	}
}

func (b *backend) pathDatakeyWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	bits := d.Get("bits").(int)
	if bits < minDatakeyBits || bits > maxDatakeyBits || bits%8 != 0 {
		return respondError("datakey", keyring.Userf("bits must be between %d and %d and a multiple of 8, not %d", minDatakeyBits, maxDatakeyBits, bits))
	}
	r, err := b.newOpRequest(ctx, req, d, keyring.OpWrapKey, []string{"context", "associated_data", "encryption_context", "key_version"})
	if err != nil {
		return respondError("datakey", err)
	}
	client, k := r.client, r.key
	if !k.KeyType().EncryptsGCM() {
		return respondError("datakey", keyring.Userf("key %q is of type %s; data keys are wrapped by AES keys", k.Name, k.Type))
	}
	item := r.items[0]
	item.domain = wire.DomainDataKey
	aad, err := itemAAD(item)
	if err != nil {
		return respondError("datakey", err)
	}
	version, kv, err := k.EncryptionVersion(item.KeyVersion)
	if err != nil {
		return respondError("datakey", err)
	}
	release, err := b.ring.Pin(ctx, client, k, kv)
	if err != nil {
		return respondError("datakey", err)
	}
	defer release()
	dataKey, err := client.Random(ctx, bits/8)
	if err != nil {
		return respondError("datakey", err)
	}
	defer clear(dataKey)
	blob, err := client.EncryptGCM(ctx, kv.ObjectID, dataKey, aad)
	if err != nil {
		return respondError("datakey", err)
	}
	b.stats.count("datakey")
	b.ring.RecordUse(k.Name, version, "datakey", 1)
	data := map[string]interface{}{"ciphertext": wire.Format(version, blob), "key_version": version}
	if d.Get("plaintext").(string) == "plaintext" {
		data["plaintext"] = base64.StdEncoding.EncodeToString(dataKey)
	}
	return &logical.Response{Data: data}, nil
}

func (b *backend) pathDatakeyDecryptWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r, err := b.newOpRequest(ctx, req, d, keyring.OpUnwrapKey, []string{"ciphertext", "context", "associated_data", "encryption_context"})
	if err != nil {
		return respondError("datakey decrypt", err)
	}
	if !r.key.KeyType().EncryptsGCM() {
		return respondError("datakey decrypt", keyring.Userf("key %q is of type %s; data keys are wrapped by AES keys", r.key.Name, r.key.Type))
	}
	item := r.items[0]
	item.domain = wire.DomainDataKey // never what encrypt made
	plaintext, version, _, err := b.decryptItem(ctx, r.client, r.key, item)
	if err != nil {
		return respondError("datakey decrypt", err)
	}
	defer clear(plaintext)
	b.stats.count("datakey_decrypt")
	b.ring.RecordUse(r.key.Name, version, "decrypt", 1)
	return &logical.Response{Data: map[string]interface{}{"plaintext": base64.StdEncoding.EncodeToString(plaintext)}}, nil
}
