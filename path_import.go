package hsmkms

import (
	"context"
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

func importFields(create bool) map[string]*framework.FieldSchema {
	fields := map[string]*framework.FieldSchema{
		"name": nameField,
		"jwk": {
			Type: framework.TypeString,
			Description: "A JSON Web Key (RFC 7517/7518), as a JSON object or a string: kty oct (AES 16/24/32 bytes, or HMAC 16 to 512 bytes with type=hmac or alg HS*), " +
				"RSA with n, e, d, p, q, dp, dq, qi (2048/3072/4096 bits), or EC with d on P-256/384/521. Without its private part, a public-only key for verify (and encrypt, RSA).",
			DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
		},
		"ciphertext": {
			Type: framework.TypeString,
			Description: "Transit's BYOK form: base64 of RSA-OAEP(ephemeral AES-256 key) under wrapping_key, then the key wrapped under the ephemeral key with AES-KWP (RFC 5649). " +
				"Raw bytes for AES and HMAC keys, PKCS#8 DER for RSA and EC keys. 'vault transit import' makes it.",
			DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
		},
		"hash_function": {
			Type:        framework.TypeString,
			Description: "Hash of the RSA-OAEP that wrapped the ephemeral key: SHA1, SHA224, SHA256 (default), SHA384 or SHA512.",
			Default:     "SHA256",
		},
		"public_key": {
			Type:        framework.TypeString,
			Description: "A PEM public key (RSA or EC) to import as a public-only key, as Transit takes it.",
		},
		"type": {
			Type:        framework.TypeString,
			Description: "Key type, Transit's names (aes128-gcm96, aes256-gcm96, rsa-2048, ecdsa-p256, hmac, ...). Default aes256-gcm96 for ciphertext; taken from the key for jwk and public_key.",
		},
	}
	if !create {
		return fields
	}
	for name, f := range map[string]*framework.FieldSchema{
		"operations": {
			Type:        framework.TypeCommaStringSlice,
			Description: "What the key may be used for; default: the type's, or with public_key verify (and encrypt, RSA). A JWK without its private part needs operations=verify (or verify,encrypt).",
		},
		"description":        {Type: framework.TypeString, Description: "Free text describing the key."},
		"deletion_allowed":   {Type: framework.TypeBool, Description: "Transit's flag: the key may be deleted while active."},
		"allow_rotation":     {Type: framework.TypeBool, Description: "Allow rotate (and auto_rotate_period) to add versions made in the HSM; false by default, as in Transit."},
		"auto_rotate_period": {Type: framework.TypeDurationSecond, Description: "Automatic rotation period; needs allow_rotation."},
		"exportable":         {Type: framework.TypeBool, Description: "Refused when true: keys never leave the HSM."},
		"derived":            {Type: framework.TypeBool, Description: "Refused when true: key derivation is not supported."},
		"allow_plaintext_backup": {
			Type: framework.TypeBool, Description: "Refused when true: keys never leave the HSM.",
		},
		"convergent_encryption": {Type: framework.TypeBool, Description: "Refused when true, as in Transit's import."},
	} {
		fields[name] = f
	}
	return fields
}

func (b *backend) pathImport() []*framework.Path {
	return []*framework.Path{
		{
			Pattern:      "keys/" + keyNamePattern + "/import",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "import", OperationSuffix: "key"},
			Fields:       importFields(true),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{Callback: b.pathImportWrite, Summary: "Import a key into the HSM (JWK, Transit BYOK or a public key)."},
			},
			HelpSynopsis:    "Import a key into the HSM: a JWK, Transit's BYOK ciphertext, or a public key.",
			HelpDescription: pathImportHelp,
		},
		{
			Pattern:      "keys/" + keyNamePattern + "/import_version",
			DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "import", OperationSuffix: "key-version"},
			Fields:       importFields(false),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: &framework.PathOperation{Callback: b.pathImportVersionWrite, Summary: "Import a new version of an imported or adopted key."},
			},
			HelpSynopsis: "Import a new version of a key made by import or adopt.",
			HelpDescription: `
Adds version latest+1 from ciphertext (Transit's BYOK), jwk or public_key. The
key must have been made by import or adopt, and the new key must be of its
type. 'vault transit import-version kms/keys/NAME @key.b64' sends this.
`,
		},
	}
}

const pathImportHelp = `
Brings a key into the HSM as a new key. Give exactly one of:

  jwk         a JSON Web Key; checked in full (sizes, EC point on its curve,
              RSA primes and CRT values) before the HSM sees it
  ciphertext  Transit's BYOK form, made for GET wrapping_key; unwrapped inside
              the HSM (hash_function names the OAEP hash)
  public_key  a PEM public key, imported public-only (verify, RSA encrypt)

The key becomes a sensitive, never-extractable token object with the template
of a generated key. Its AES versions also open Transit's own ciphertexts
(associated_data as the only AAD), so data moved from Transit keeps
decrypting; rewrap moves it to this plugin's layout. Imported keys rotate only
with allow_rotation=true. exportable, derived, allow_plaintext_backup and
convergent_encryption are refused.

    $ vault transit import kms/keys/app1 @key.b64 type=aes256-gcm96
    $ vault write kms/keys/app2/import jwk=@key.jwk
`

// importRequest is what one import or import_version asks for.
type importRequest struct {
	material   keyMaterial // jwk or public_key
	ciphertext []byte      // BYOK
	hash       crypto.Hash
	keyType    keyring.KeyType
}

func (r importRequest) field() string {
	if r.ciphertext != nil {
		return "ciphertext"
	}
	return r.material.field
}

func (r importRequest) publicOnly() bool { return r.ciphertext == nil && r.material.publicOnly() }

// countGiven counts the fields a request gave, for "exactly one of" rules.
func countGiven(given ...bool) int {
	n := 0
	for _, g := range given {
		if g {
			n++
		}
	}
	return n
}

// readImportRequest reads the key source fields. existing is the type of
// the key a version is added to, or "" for a new key. Its errors are the
// caller's.
func readImportRequest(d *framework.FieldData, existing string) (importRequest, error) {
	typ := d.Get("type").(string)
	if existing != "" {
		if typ != "" && !strings.EqualFold(typ, existing) {
			return importRequest{}, keyring.Userf("type %s does not match the key's type %s", typ, existing)
		}
		typ = existing
	}
	rawJWK, hasJWK := d.Raw["jwk"]
	ct, hasCT := d.GetOk("ciphertext")
	pemKey, hasPEM := d.GetOk("public_key")
	if countGiven(hasJWK, hasCT, hasPEM) != 1 {
		return importRequest{}, keyring.Userf("give exactly one of jwk, ciphertext (Transit's BYOK form) or public_key")
	}
	switch {
	case hasJWK:
		m, err := parseJWK(rawJWK, typ)
		if err != nil {
			return importRequest{}, err
		}
		return importRequest{material: m, keyType: m.keyType}, nil
	case hasPEM:
		m, err := parsePublicKeyPEM(pemKey.(string), typ)
		if err != nil {
			return importRequest{}, err
		}
		return importRequest{material: m, keyType: m.keyType}, nil
	}
	hash, ok := wire.LookupHash(d.Get("hash_function").(string), wire.UseOAEP)
	if !ok {
		return importRequest{}, keyring.Userf("hash_function must be SHA1, SHA224, SHA256, SHA384 or SHA512")
	}
	blob, err := base64.StdEncoding.DecodeString(strings.TrimSpace(ct.(string)))
	if err != nil || len(blob) == 0 {
		return importRequest{}, keyring.Userf("ciphertext must be base64 of Transit's BYOK form")
	}
	if typ == "" {
		typ = keyring.DefaultType
	}
	kt, err := keyring.ResolveType(typ, 0, "")
	if err != nil {
		return importRequest{}, err
	}
	if !kt.Importable() {
		return importRequest{}, keyring.Userf("type %s cannot be imported: such keys are generated in the HSM (keys/:name type=%s)", kt.Name, kt.Name)
	}
	return importRequest{ciphertext: blob, hash: hash, keyType: kt}, nil
}

// importOperations decides a new imported key's operations.
func importOperations(d *framework.FieldData, r importRequest) ([]string, error) {
	kt := r.keyType
	ops := kt.DefaultOps
	// A JWK without its private part is most likely a mistake: it becomes
	// a public key only when operations say so. public_key is explicit.
	if r.publicOnly() && r.material.field == "public_key" {
		ops = []string{keyring.OpVerify}
		if kt.EncryptsRSA() {
			ops = []string{keyring.OpVerify, keyring.OpEncrypt}
		}
	}
	if raw, ok := d.GetOk("operations"); ok && len(raw.([]string)) > 0 {
		var err error
		if ops, err = keyring.NormaliseOperations(raw.([]string), kt); err != nil {
			return nil, err
		}
	}
	if r.publicOnly() {
		for _, op := range ops {
			if op == keyring.OpSign || op == keyring.OpDecrypt || op == keyring.OpUnwrapKey {
				part := "d is missing"
				if r.material.field == "public_key" {
					part = "it is a public key"
				}
				return nil, keyring.FieldErrorf(r.material.field, "%s, but %s needs the private key; give the private key, or operations=verify for a public key alone", part, op)
			}
		}
	}
	return ops, nil
}

func (b *backend) pathImportWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := keyring.CheckName(name); err != nil {
		return respondError("import key", err)
	}
	for _, field := range []string{"exportable", "derived", "allow_plaintext_backup", "convergent_encryption"} {
		if v, ok := d.GetOk(field); ok && v.(bool) {
			return respondError("import key", keyring.Userf("%s=true is not supported: keys here live in the HSM and never leave it, and are not derived", field))
		}
	}
	r, err := readImportRequest(d, "")
	if err != nil {
		return respondError("import key", err)
	}
	ops, err := importOperations(d, r)
	if err != nil {
		return respondError("import key", err)
	}
	allowRotation := d.Get("allow_rotation").(bool)
	autoRotate := time.Duration(d.Get("auto_rotate_period").(int)) * time.Second
	if autoRotate != 0 && !allowRotation {
		return respondError("import key", keyring.Userf("auto_rotate_period needs allow_rotation=true on an imported key"))
	}
	p := keyring.Params{
		Name: name, Type: r.keyType, Operations: ops, Description: d.Get("description").(string), Residency: keyring.ResidencyHSM,
		DeletionAllowed: d.Get("deletion_allowed").(bool), AutoRotatePeriod: autoRotate, Imported: true, AllowRotation: allowRotation,
	}
	if err := p.Check(); err != nil {
		return respondError("import key", err)
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("import key", err)
	}
	k := keyring.NewEntry(p)
	b.ring.Lock()
	defer b.ring.Unlock()
	if err := b.ring.CheckNew(ctx, req.Storage, name, conf.MaxKeys, "use import_version to add a version"); err != nil {
		return respondError("import key", err)
	}
	if err := b.ring.ImportVersion(ctx, req.Storage, client, k, r.keyType, r.source()); err != nil {
		return respondError(fmt.Sprintf("import key %q", name), importError(r.field(), err))
	}
	return &logical.Response{Data: keyResponse(k)}, nil
}

func (b *backend) pathImportVersionWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("import key version", err)
	}
	k, unlock, err := b.ring.ForChange(ctx, req.Storage, d.Get("name").(string))
	if err != nil {
		return respondError("import key version", err)
	}
	defer unlock()
	if !k.Imported {
		return respondError("import key version", keyring.Userf("key %q was generated in the HSM, not imported; import_version adds versions only to imported or adopted keys (rotate makes a new version)", k.Name))
	}
	r, err := readImportRequest(d, k.Type)
	if err != nil {
		return respondError("import key version", err)
	}
	if r.keyType.Name != k.Type {
		return respondError("import key version", keyring.Userf("the key given is a %s key; %q is %s", r.keyType.Name, k.Name, k.Type))
	}
	if r.publicOnly() && slices.ContainsFunc(k.Operations, func(op string) bool { return op == keyring.OpSign || op == keyring.OpDecrypt }) {
		return respondError("import key version", keyring.FieldErrorf(r.material.field, "a public key alone cannot be a version of %q, which signs or decrypts", k.Name))
	}
	if err := b.ring.ImportVersion(ctx, req.Storage, client, k, r.keyType, r.source()); err != nil {
		return respondError(fmt.Sprintf("import key %q", k.Name), importError(r.field(), err))
	}
	return &logical.Response{Data: keyResponse(k)}, nil
}

// importError names the field at fault in an import's input errors: the
// token's refusal of what the caller sent is about that field.
func importError(field string, err error) error {
	var ie *hsm.InputError
	switch {
	case errors.Is(err, hsm.ErrNotUnwrapped):
		return keyring.Userf("ciphertext %s", hsm.ErrNotUnwrapped.Error())
	case errors.Is(err, hsm.ErrNoKeyWrap):
		// The token cannot import at all: the caller is told so, in the
		// sentinel's own words.
		return &keyring.UserError{Reason: hsm.ErrNoKeyWrap.Error()}
	case errors.As(err, &ie):
		return keyring.FieldErrorf(field, "%s", ie.Reason)
	}
	return err
}

// source is what the ring imports.
func (r importRequest) source() keyring.ImportSource {
	return keyring.ImportSource{Material: r.material.material, Public: r.material.public, Ciphertext: r.ciphertext, Hash: r.hash}
}

// importJWKList is the seeds' form of create: POST keys/:name with keys, a
// list of JWKs, one per version, oldest first.
func (b *backend) importJWKList(ctx context.Context, req *logical.Request, d *framework.FieldData, raw interface{}) (*logical.Response, error) {
	name := d.Get("name").(string)
	list, ok := raw.([]interface{})
	if !ok || len(list) == 0 {
		return respondError("import key", keyring.Userf("keys must be a non-empty list of JSON Web Keys"))
	}
	if r, ok := d.GetOk("residency"); ok && r.(string) != "" && !strings.EqualFold(r.(string), keyring.ResidencyHSM) {
		return respondError("import key", keyring.Userf("residency %q: imported keys are HSM objects (residency hsm); leave residency out, or generate the key with residency=wrapped", r))
	}
	typ, _ := d.Raw["type"].(string)
	var requests []importRequest
	for i, item := range list {
		m, err := parseJWK(item, typ)
		if err != nil {
			return respondError("import key", within(fmt.Sprintf("keys[%d]", i), err))
		}
		if i > 0 && m.keyType.Name != requests[0].keyType.Name {
			return respondError("import key", keyring.Userf("keys[%d] is a %s key; keys[0] is %s: all versions have one type", i, m.keyType.Name, requests[0].keyType.Name))
		}
		requests = append(requests, importRequest{material: m, keyType: m.keyType})
	}
	ops, err := importOperations(d, requests[0])
	if err != nil {
		return respondError("import key", err)
	}
	for i, r := range requests {
		if r.publicOnly() && !requests[0].publicOnly() {
			return respondError("import key", keyring.Userf("keys[%d] has no private part, unlike keys[0]", i))
		}
	}
	p := keyring.Params{
		Name: name, Type: requests[0].keyType, Operations: ops, Description: d.Get("description").(string),
		Residency: keyring.ResidencyHSM, DeletionAllowed: d.Get("deletion_allowed").(bool), Imported: true,
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("import key", err)
	}
	k := keyring.NewEntry(p)
	b.ring.Lock()
	defer b.ring.Unlock()
	if err := b.ring.CheckNew(ctx, req.Storage, name, conf.MaxKeys, "use keys/"+name+"/import_version to add a version"); err != nil {
		return respondError("import key", err)
	}
	for i, r := range requests {
		if err := b.ring.ImportVersion(ctx, req.Storage, client, k, r.keyType, r.source()); err != nil {
			err = importError(fmt.Sprintf("keys[%d]", i), err)
			if status, msg := failure(err); i > 0 && status == http.StatusBadRequest {
				err = keyring.Userf("%s (versions 1 to %d were imported)", msg, i)
			}
			return respondError(fmt.Sprintf("import key %q", name), err)
		}
	}
	return &logical.Response{Data: keyResponse(k)}, nil
}
