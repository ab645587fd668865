package hsmkms

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

func (b *backend) pathAdopt() *framework.Path {
	return &framework.Path{
		Pattern:      "keys/" + keyNamePattern + "/adopt",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "adopt", OperationSuffix: "key"},
		Fields: map[string]*framework.FieldSchema{
			"name":    nameField,
			"label":   {Type: framework.TypeString, Description: "CKA_LABEL of the secret or private key object to adopt."},
			"id":      {Type: framework.TypeString, Description: "CKA_ID, in hex, of the secret or private key object to adopt."},
			"hsm_ref": {Type: framework.TypeString, Description: "hsm::<slot>::<label> (Cosmian's form); the slot must be this mount's token."},
			"type": {
				Type:        framework.TypeString,
				Description: "Expected key type; read from the object when empty (AES size, generic secret = hmac, RSA modulus, EC curve).",
			},
			"operations": {
				Type:        framework.TypeCommaStringSlice,
				Description: "What the key may be used for; default: what the type allows and the object's CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN permit.",
			},
			"description":       {Type: framework.TypeString, Description: "Free text describing the key."},
			"deletion_allowed":  {Type: framework.TypeBool, Description: "Transit's flag: the key may be deleted while active."},
			"allow_extractable": {Type: framework.TypeBool, Description: "Adopt an object that is extractable or not sensitive; the version is marked extractable."},
			"destroy_on_delete": {Type: framework.TypeBool, Description: "Destroy the object when the key is deleted; by default deleting forgets it and leaves it on the token."},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathAdoptWrite, Summary: "Bind a key object that already exists on the token."},
		},
		HelpSynopsis: "Adopt a key object that exists on the token (made in an HSM key ceremony).",
		HelpDescription: `
Binds an existing secret or private key object, named by label, id (hex
CKA_ID) or hsm_ref=hsm::<slot>::<label>, to a key of this mount. The object
must carry a CKA_ID no other key object of its class shares, must not be one
this plugin made, and must be sensitive and never extractable unless
allow_extractable=true. Its type is read from the object. On an existing key,
adopt adds a version of the same type. Deleting the key leaves the object on
the token unless destroy_on_delete=true was given.

    $ vault write kms/keys/payments/adopt label=ceremony-2026-aes
    $ vault write kms/keys/signer/adopt hsm_ref=hsm::0::ceremony-rsa
`,
	}
}

// adoptSelector reads label, id or hsm_ref; the string names the field for
// messages.
func adoptSelector(d *framework.FieldData, slot uint) (hsm.ObjectSelector, string, string) {
	label, hasLabel := d.GetOk("label")
	id, hasID := d.GetOk("id")
	ref, hasRef := d.GetOk("hsm_ref")
	if countGiven(hasLabel, hasID, hasRef) != 1 {
		return hsm.ObjectSelector{}, "", "give exactly one of label, id or hsm_ref"
	}
	switch {
	case hasLabel:
		if label.(string) == "" {
			return hsm.ObjectSelector{}, "", "label must not be empty"
		}
		return hsm.ObjectSelector{Label: label.(string)}, "label", ""
	case hasID:
		raw, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(id.(string)), "0x"))
		if err != nil || len(raw) == 0 {
			return hsm.ObjectSelector{}, "", "id must be the object's CKA_ID in hex"
		}
		return hsm.ObjectSelector{ID: raw}, "id", ""
	}
	parts := strings.Split(ref.(string), "::")
	if len(parts) != 3 || parts[0] != "hsm" || parts[2] == "" {
		return hsm.ObjectSelector{}, "", "hsm_ref must have the form hsm::<slot>::<label>"
	}
	refSlot, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return hsm.ObjectSelector{}, "", "hsm_ref must have the form hsm::<slot>::<label>, the slot a number"
	}
	if uint(refSlot) != slot {
		return hsm.ObjectSelector{}, "", fmt.Sprintf("hsm_ref names slot %d, but this mount's token is in slot %d", refSlot, slot)
	}
	return hsm.ObjectSelector{Label: parts[2]}, "hsm_ref", ""
}

// adoptedKeyType is the key type of an existing object.
func adoptedKeyType(ek hsm.ExistingKey) (keyType, string) {
	switch ek.Kind {
	case hsm.ImportAES:
		return keyTypes[fmt.Sprintf("aes%d-gcm96", ek.Bits)], ""
	case hsm.ImportHMAC:
		if ek.Bits < hsm.MinHMACImportBytes*8 || ek.Bits > hsm.MaxHMACImportBytes*8 {
			return keyType{}, fmt.Sprintf("the object is a generic secret of %d bits; an HMAC key is %d to %d bytes", ek.Bits, hsm.MinHMACImportBytes, hsm.MaxHMACImportBytes)
		}
		kt := keyTypes["hmac"]
		kt.bits = ek.Bits
		return kt, ""
	case hsm.ImportRSA:
		return rsaKeyType(ek.Bits, "the object")
	case hsm.ImportEC:
		return keyTypes["ecdsa-p"+strings.TrimPrefix(ek.Curve, "P-")], ""
	}
	return keyType{}, "the object is not a key type the plugin uses"
}

// adoptableOps are the operations of kt the object's own attributes permit:
// RSA and EC verification and RSA encryption happen in the plugin with the
// public key; everything else is done by the object.
func adoptableOps(kt keyType, ek hsm.ExistingKey) map[string]bool {
	ok := map[string]bool{}
	for _, op := range kt.allowedOps {
		switch {
		case op == opVerify && kt.asymmetric(), op == opEncrypt && kt.family == familyRSA:
			ok[op] = true
		case op == opEncrypt || op == opWrapKey:
			ok[op] = ek.Encrypt
		case op == opDecrypt || op == opUnwrapKey:
			ok[op] = ek.Decrypt
		case op == opSign || op == opVerify:
			ok[op] = ek.Sign
		}
	}
	return ok
}

func (b *backend) pathAdoptWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if msg := checkKeyName(name); msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("adopt key", err)
	}
	sel, field, msg := adoptSelector(d, client.Slot())
	if msg != "" {
		return logical.ErrorResponse(msg), logical.ErrInvalidRequest
	}
	if strings.HasPrefix(sel.Label, objectLabelPrefix) {
		return logical.ErrorResponse("%s: objects this plugin made (labelled %s...) belong to their keys and cannot be adopted", field, objectLabelPrefix), logical.ErrInvalidRequest
	}
	ek, err := client.FindExistingKey(ctx, sel)
	if err != nil {
		if errors.Is(err, hsm.ErrInvalidInput) {
			return logical.ErrorResponse("%s: %s", field, strings.TrimPrefix(err.Error(), hsm.ErrAdopt.Error()+": ")), logical.ErrInvalidRequest
		}
		return respondError("adopt key", err)
	}
	if _, _, isKEK := kekLabelOwner(ek.Label); isKEK || strings.HasPrefix(ek.Label, objectLabelPrefix) {
		return logical.ErrorResponse("%s: the object is labelled %q: objects this plugin made belong to their keys or mounts and cannot be adopted", field, ek.Label), logical.ErrInvalidRequest
	}
	if msg, err := b.kekUse(ctx, req.Storage, client, ek); err != nil {
		return respondError("adopt key", err)
	} else if msg != "" {
		return logical.ErrorResponse("%s: %s; a KEK never becomes a data key", field, msg), logical.ErrInvalidRequest
	}
	kt, msg := adoptedKeyType(ek)
	if msg != "" {
		return logical.ErrorResponse("%s: %s", field, msg), logical.ErrInvalidRequest
	}
	if typ := d.Get("type").(string); typ != "" && !strings.EqualFold(typ, kt.name) {
		return logical.ErrorResponse("type %s does not match the object, which is a %s key", typ, kt.name), logical.ErrInvalidRequest
	}
	extractable := ek.Extractable || !ek.Sensitive
	if extractable && !d.Get("allow_extractable").(bool) {
		return logical.ErrorResponse("%s: the object is extractable or not sensitive, so its key can leave the HSM; give allow_extractable=true to adopt it anyway", field), logical.ErrInvalidRequest
	}
	permitted := adoptableOps(kt, ek)
	var ops []string
	if raw, ok := d.GetOk("operations"); ok && len(raw.([]string)) > 0 {
		if ops, msg = normaliseOperations(raw.([]string), kt); msg != "" {
			return logical.ErrorResponse(msg), logical.ErrInvalidRequest
		}
		for _, op := range ops {
			if !permitted[op] {
				return logical.ErrorResponse("operations: the object's attributes do not permit %s (see its CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN)", op), logical.ErrInvalidRequest
			}
		}
	} else {
		for _, op := range kt.defaultOps {
			if permitted[op] {
				ops = append(ops, op)
			}
		}
		if len(ops) == 0 {
			return logical.ErrorResponse("%s: the object permits none of the operations of a %s key", field, kt.name), logical.ErrInvalidRequest
		}
	}
	kv := &keyVersion{
		ObjectID:        ek.ID,
		Label:           ek.Label,
		CreationTime:    b.now().UTC(),
		Origin:          originAdopted,
		Extractable:     extractable,
		DestroyOnDelete: d.Get("destroy_on_delete").(bool),
	}
	if ek.Public != nil {
		der, err := x509.MarshalPKIXPublicKey(ek.Public)
		if err != nil {
			return nil, fmt.Errorf("encoding the adopted key's public key: %w", err)
		}
		kv.PublicKey = der
	}

	b.keysMu.Lock()
	defer b.keysMu.Unlock()
	k, err := loadKey(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if k == nil {
		if resp, err := b.checkNewKeyLocked(ctx, req.Storage, conf, name, ""); resp != nil || err != nil {
			return resp, err
		}
		k = &keyEntry{
			Name:                 name,
			Type:                 kt.name,
			Bits:                 hmacBits(kt),
			Operations:           ops,
			State:                stateActive,
			Description:          d.Get("description").(string),
			Residency:            residencyHSM,
			DeletionAllowed:      d.Get("deletion_allowed").(bool),
			MinDecryptionVersion: 1,
			Versions:             map[int]*keyVersion{},
			Imported:             true,
		}
	} else {
		if k.Type != kt.name {
			return logical.ErrorResponse("%s: the object is a %s key; %q is %s", field, kt.name, name, k.Type), logical.ErrInvalidRequest
		}
		for _, op := range k.Operations {
			if !permitted[op] {
				return logical.ErrorResponse("%s: the object's attributes do not permit %s, which key %q allows", field, op, name), logical.ErrInvalidRequest
			}
		}
		for v, existing := range k.Versions {
			if slices.Equal(existing.ObjectID, ek.ID) {
				return logical.ErrorResponse("%s: the object is already version %d of %q", field, v, name), logical.ErrInvalidRequest
			}
		}
	}
	if err := b.storeNewVersionLocked(ctx, req.Storage, k, k.LatestVersion+1, kv); err != nil {
		return nil, err
	}
	return &logical.Response{Data: k.keyResponse()}, nil
}

// kekUse says why an object found for adoption is a KEK, or "": one of
// this mount's KEK versions, a KEK another mount recorded on the token, or
// a key that only wraps and unwraps.
func (b *backend) kekUse(ctx context.Context, s logical.Storage, client *hsm.Client, ek hsm.ExistingKey) (string, error) {
	st, err := b.kek(ctx, s)
	if err != nil {
		return "", err
	}
	for v, kv := range st.Versions {
		if bytes.Equal(kv.ObjectID, ek.ID) {
			return fmt.Sprintf("the object is version %d of this mount's KEK", v), nil
		}
	}
	records, err := client.ListObjects(ctx, objectLabelPrefix)
	if err != nil {
		return "", err
	}
	for _, o := range records {
		if owner, id, ok := parseKEKRecord(o.Label); ok && bytes.Equal(id, ek.ID) {
			return fmt.Sprintf("the object is the KEK of mount %s", owner), nil
		}
	}
	if ek.Wrap && !ek.Encrypt && !ek.Decrypt && !ek.Sign {
		return "the object may only wrap and unwrap keys: it is a key-encryption key", nil
	}
	return "", nil
}
