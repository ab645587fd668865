package hsmkms

import (
	"context"
	"encoding/base64"
	"errors"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

// contextFields are the three ways to bind data to a context; all of them
// go into the AEAD's associated data.
func contextFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"context": {
			Type:        framework.TypeString,
			Description: "Base64 context (Transit). Bound into the authenticated data: decrypt needs the same value.",
		},
		"associated_data": {
			Type:        framework.TypeString,
			Description: "Base64 associated data (Transit). Bound into the authenticated data: decrypt needs the same value.",
		},
		"encryption_context": {
			Type: framework.TypeKVPairs,
			Description: "Map of strings (OKMS encryption context), or key=value pairs. Bound into the authenticated data " +
				"(order does not matter): decrypt needs the same pairs.",
		},
		"batch_input": {
			Type: framework.TypeSlice,
			Description: "List of items, each an object with this path's fields and an optional 'reference' echoed in its result. " +
				"When given, the top-level item fields are ignored. Results keep the input order.",
		},
		"partial_failure_response_code": {
			Type: framework.TypeInt,
			Description: "HTTP status to answer when some batch items failed and others succeeded (default 400, as Transit). " +
				"If every item failed the status stays 400.",
		},
	}
}

func (b *backend) pathEncrypt() *framework.Path {
	fields := contextFields()
	fields["name"] = nameField
	fields["plaintext"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "Base64 plaintext to encrypt; at most max_plaintext_bytes (default 4096) after decoding; empty is allowed, as in Transit.",
	}
	fields["key_version"] = &framework.FieldSchema{
		Type:        framework.TypeInt,
		Description: "Key version to encrypt with; 0 (default) means the latest. Must be at least min_encryption_version.",
	}
	fields["padding_scheme"] = paddingField
	fields["type"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "Type of the key to create when it does not exist (upsert, Transit's): aes128-gcm96, aes256-gcm96 (default) or an rsa type.",
		Default:     keyring.DefaultType,
	}
	return &framework.Path{
		Pattern:        "encrypt/" + keyNamePattern,
		DisplayAttrs:   &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "encrypt"},
		Fields:         fields,
		ExistenceCheck: b.keyExists,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.CreateOperation: &framework.PathOperation{
				Callback: b.pathEncryptWrite,
				Summary:  "Encrypt with a key that does not exist yet: it is created first (Transit's upsert), unless config/keys disables it.",
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathEncryptWrite,
				Summary:  "Encrypt data with a key in the HSM (AES-GCM).",
			},
		},
		HelpSynopsis:    "Encrypt data with a key that never leaves the HSM.",
		HelpDescription: pathEncryptHelpDesc,
	}
}

func (b *backend) pathDecrypt() *framework.Path {
	fields := contextFields()
	fields["name"] = nameField
	fields["ciphertext"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "Ciphertext as encrypt returned it: vault:v<version>:<base64>.",
	}
	fields["padding_scheme"] = paddingField
	return &framework.Path{
		Pattern:      "decrypt/" + keyNamePattern,
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "decrypt"},
		Fields:       fields,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathDecryptWrite,
				Summary:  "Decrypt data with a key in the HSM.",
			},
		},
		HelpSynopsis:    "Decrypt data with a key that never leaves the HSM.",
		HelpDescription: pathDecryptHelpDesc,
	}
}

var paddingField = &framework.FieldSchema{
	Type: framework.TypeString,
	Description: "RSA keys only: oaep (default; SHA-256, MGF1-SHA-256, empty label) or pkcs1v15. Decrypt needs the scheme " +
		"encrypt used. May also be set per batch item.",
}

var (
	encryptFields = []string{"plaintext", "context", "associated_data", "encryption_context", "key_version", "reference", "padding_scheme"}
	decryptFields = []string{"ciphertext", "context", "associated_data", "encryption_context", "reference", "padding_scheme"}
)

func (b *backend) pathEncryptWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if req.Operation == logical.CreateOperation {
		if resp, err := b.upsertKey(ctx, req, d); resp != nil || err != nil {
			return resp, err
		}
	}
	r, err := b.newOpRequest(ctx, req, d, keyring.OpEncrypt, encryptFields)
	if err != nil {
		return respondError("encrypt", err)
	}
	results := b.each(r, "encrypt", func(item cryptoItem) (batchResult, error) {
		ciphertext, version, err := b.encryptItem(ctx, r.client, r.conf, r.key, item)
		return batchResult{Ciphertext: ciphertext, KeyVersion: version, version: version}, err
	})
	return answer(req, d, r, "encrypt", batchEncrypt, true, results, func(res batchResult) map[string]interface{} {
		return map[string]interface{}{"ciphertext": res.Ciphertext, "key_version": res.KeyVersion}
	})
}

func (b *backend) pathDecryptWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r, err := b.newOpRequest(ctx, req, d, keyring.OpDecrypt, decryptFields)
	if err != nil {
		return respondError("decrypt", err)
	}
	results := b.each(r, "decrypt", func(item cryptoItem) (batchResult, error) {
		plaintext, version, _, err := b.decryptItem(ctx, r.client, r.key, item)
		return batchResult{Plaintext: base64.StdEncoding.EncodeToString(plaintext), version: version}, err
	})
	return answer(req, d, r, "decrypt", batchDecrypt, true, results, func(res batchResult) map[string]interface{} {
		return map[string]interface{}{"plaintext": res.Plaintext}
	})
}

// itemAAD decodes an item's context fields into the AAD of its domain
// (wire.DomainAEAD unless the item says otherwise).
func itemAAD(item cryptoItem) ([]byte, error) {
	domain := item.domain
	if domain == "" {
		domain = wire.DomainAEAD
	}
	ctxBytes, err := base64.StdEncoding.DecodeString(item.Context)
	if err != nil {
		return nil, keyring.Userf("context is not valid base64")
	}
	ad, err := base64.StdEncoding.DecodeString(item.AssociatedData)
	if err != nil {
		return nil, keyring.Userf("associated_data is not valid base64")
	}
	return wire.AAD(domain, ctxBytes, ad, item.EncryptionContext), nil
}

func (b *backend) encryptItem(ctx context.Context, client *hsm.Client, conf *mountConfig, k *keyring.Entry, item cryptoItem) (string, int, error) {
	if k.KeyType().EncryptsRSA() {
		return b.encryptRSA(k, item)
	}
	if item.PaddingScheme != "" {
		return "", 0, keyring.Userf("padding_scheme applies only to RSA keys")
	}
	if !item.plaintextGiven {
		return "", 0, keyring.Userf("missing plaintext to encrypt")
	}
	if base64.StdEncoding.DecodedLen(len(item.Plaintext)) > conf.MaxPlaintextBytes+2 {
		return "", 0, keyring.Userf("plaintext is larger than max_plaintext_bytes (%d bytes); encrypt a data key instead (envelope encryption)", conf.MaxPlaintextBytes)
	}
	plaintext, err := base64.StdEncoding.DecodeString(item.Plaintext)
	if err != nil {
		return "", 0, keyring.Userf("plaintext is not valid base64")
	}
	if len(plaintext) > conf.MaxPlaintextBytes {
		return "", 0, keyring.Userf("plaintext is %d bytes, larger than max_plaintext_bytes (%d); encrypt a data key instead (envelope encryption)", len(plaintext), conf.MaxPlaintextBytes)
	}
	aad, err := itemAAD(item)
	if err != nil {
		return "", 0, err
	}
	version, kv, err := k.EncryptionVersion(item.KeyVersion)
	if err != nil {
		return "", 0, err
	}
	release, err := b.ring.Pin(ctx, client, k, kv)
	if err != nil {
		return "", 0, err
	}
	defer release()
	blob, err := client.EncryptGCM(ctx, kv.ObjectID, plaintext, aad)
	if err != nil {
		return "", 0, err
	}
	return wire.Format(version, blob), version, nil
}

// decryptItem opens a ciphertext of the item's domain; an item with none
// opens ordinary ciphertexts and, failing that, data keys (decrypt opens
// what datakey made, as in Transit). It returns the version
// it names and the domain that opened it.
func (b *backend) decryptItem(ctx context.Context, client *hsm.Client, k *keyring.Entry, item cryptoItem) ([]byte, int, string, error) {
	version, blob, err := wire.Parse(wire.NounCiphertext, item.Ciphertext)
	if err != nil {
		return nil, 0, "", err
	}
	kv, err := k.DecryptionVersion(version, wire.NounCiphertext)
	if err != nil {
		return nil, version, "", err
	}
	release, err := b.ring.Pin(ctx, client, k, kv)
	if err != nil {
		return nil, version, "", err
	}
	defer release()
	if k.KeyType().EncryptsRSA() {
		plaintext, err := b.decryptRSA(ctx, client, kv, item, blob)
		return plaintext, version, "", err
	}
	if item.PaddingScheme != "" {
		return nil, version, "", keyring.Userf("padding_scheme applies only to RSA keys")
	}
	transit := opensTransitLayout(kv, item)
	domains := []string{item.domain}
	switch {
	case item.domain == "":
		domains = []string{wire.DomainAEAD, wire.DomainDataKey}
	case item.domain == wire.DomainDataKey && kv.SealedDataKeysAsOrdinary():
		domains = []string{wire.DomainDataKey, wire.DomainAEAD}
	}
	for _, domain := range domains {
		item.domain = domain
		aad, aerr := itemAAD(item)
		if aerr != nil {
			return nil, version, "", aerr
		}
		var plaintext []byte
		plaintext, err = client.DecryptGCM(ctx, kv.ObjectID, blob, aad)
		if !errors.Is(err, hsm.ErrDecrypt) {
			return plaintext, version, domain, err
		}
	}
	if transit {
		// A ciphertext Transit made under an imported key: its AAD is
		// associated_data alone. rewrap writes it in the plugin's layout.
		ad, aerr := base64.StdEncoding.DecodeString(item.AssociatedData)
		if aerr != nil {
			return nil, version, "", keyring.Userf("associated_data is not valid base64")
		}
		plaintext, terr := client.DecryptGCMForeign(ctx, kv.ObjectID, blob, ad)
		if !errors.Is(terr, hsm.ErrDecrypt) {
			return plaintext, version, wire.DomainAEAD, terr
		}
	}
	return nil, version, "", err
}

// opensTransitLayout: an ordinary decrypt (not a data key's) on a version
// imported from Transit, with no context Transit would have derived a key
// from.
func opensTransitLayout(kv *keyring.Version, item cryptoItem) bool {
	return kv.TransitLayout && item.domain == "" && item.Context == "" && len(item.EncryptionContext) == 0
}

const pathEncryptHelpDesc = `
Encrypts base64 plaintext with AES-256/192/128-GCM inside the HSM, under a
fresh 96-bit IV made by the plugin, and returns Transit's ciphertext form
vault:v<version>:<base64 of IV, ciphertext and tag>. context,
associated_data and encryption_context are bound into the authenticated
data: decrypt needs the same values. batch_input encrypts many items in one
request; results keep the input order and each failed item has an 'error'.

Example:

    $ vault write kms/encrypt/app1 plaintext=$(echo -n secret | base64)
`

const pathDecryptHelpDesc = `
Decrypts a ciphertext made by encrypt with the same key, inside the HSM.
A tampered ciphertext, another key's ciphertext or a different context is a
400 that does not say which part was wrong. Versions below the key's
min_decryption_version are refused.

Example:

    $ vault write kms/decrypt/app1 ciphertext=vault:v1:...
`
