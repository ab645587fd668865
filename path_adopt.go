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
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
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

// adoptSelector reads label, id or hsm_ref, and names the field given, for
// messages about the object it selects.
func adoptSelector(d *framework.FieldData, slot uint) (hsm.ObjectSelector, string, error) {
	label, hasLabel := d.GetOk("label")
	id, hasID := d.GetOk("id")
	ref, hasRef := d.GetOk("hsm_ref")
	if countGiven(hasLabel, hasID, hasRef) != 1 {
		return hsm.ObjectSelector{}, "", keyring.Userf("give exactly one of label, id or hsm_ref")
	}
	switch {
	case hasLabel:
		if label.(string) == "" {
			return hsm.ObjectSelector{}, "", keyring.Userf("label must not be empty")
		}
		return hsm.ObjectSelector{Label: label.(string)}, "label", nil
	case hasID:
		raw, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(id.(string)), "0x"))
		if err != nil || len(raw) == 0 {
			return hsm.ObjectSelector{}, "", keyring.Userf("id must be the object's CKA_ID in hex")
		}
		return hsm.ObjectSelector{ID: raw}, "id", nil
	}
	parts := strings.Split(ref.(string), "::")
	if len(parts) != 3 || parts[0] != "hsm" || parts[2] == "" {
		return hsm.ObjectSelector{}, "", keyring.Userf("hsm_ref must have the form hsm::<slot>::<label>")
	}
	refSlot, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return hsm.ObjectSelector{}, "", keyring.Userf("hsm_ref must have the form hsm::<slot>::<label>, the slot a number")
	}
	if uint(refSlot) != slot {
		return hsm.ObjectSelector{}, "", keyring.Userf("hsm_ref names slot %d, but this mount's token is in slot %d", refSlot, slot)
	}
	return hsm.ObjectSelector{Label: parts[2]}, "hsm_ref", nil
}

// adoptedKeyType is the key type of an existing object; field is the one
// that selected it, named in the caller's errors.
func adoptedKeyType(ek hsm.ExistingKey, field string) (keyring.KeyType, error) {
	switch ek.Kind {
	case hsm.ImportAES:
		return keyTypeNamed(fmt.Sprintf("aes%d-gcm96", ek.Bits)), nil
	case hsm.ImportHMAC:
		if ek.Bits < hsm.MinHMACImportBytes*8 || ek.Bits > hsm.MaxHMACImportBytes*8 {
			return keyring.KeyType{}, keyring.FieldErrorf(field, "the object is a generic secret of %d bits; an HMAC key is %d to %d bytes", ek.Bits, hsm.MinHMACImportBytes, hsm.MaxHMACImportBytes)
		}
		kt := keyTypeNamed("hmac")
		kt.Bits = ek.Bits
		return kt, nil
	case hsm.ImportRSA:
		kt, err := keyring.RSAType(ek.Bits, "the object")
		if err != nil {
			return keyring.KeyType{}, within(field, err)
		}
		return kt, nil
	case hsm.ImportEC:
		return keyTypeNamed("ecdsa-p" + strings.TrimPrefix(ek.Curve, "P-")), nil
	}
	return keyring.KeyType{}, keyring.FieldErrorf(field, "the object is not a key type the plugin uses")
}

// adoptableOps are the operations of kt the object's own attributes permit:
// RSA and EC verification and RSA encryption happen in the plugin with the
// public key; everything else is done by the object.
func adoptableOps(kt keyring.KeyType, ek hsm.ExistingKey) map[string]bool {
	ok := map[string]bool{}
	for _, op := range kt.AllowedOps {
		switch {
		case op == keyring.OpVerify && kt.Asymmetric(), op == keyring.OpEncrypt && kt.Family == keyring.FamilyRSA:
			ok[op] = true
		case op == keyring.OpEncrypt || op == keyring.OpWrapKey:
			ok[op] = ek.Encrypt
		case op == keyring.OpDecrypt || op == keyring.OpUnwrapKey:
			ok[op] = ek.Decrypt
		case op == keyring.OpSign || op == keyring.OpVerify:
			ok[op] = ek.Sign
		}
	}
	return ok
}

func (b *backend) pathAdoptWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := keyring.CheckName(name); err != nil {
		return respondError("adopt key", err)
	}
	client, conf, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("adopt key", err)
	}
	sel, field, err := adoptSelector(d, client.Slot())
	if err != nil {
		return respondError("adopt key", err)
	}
	if strings.HasPrefix(sel.Label, keyring.ObjectLabelPrefix) {
		return respondError("adopt key", keyring.FieldErrorf(field, "objects this plugin made (labelled %s...) belong to their keys and cannot be adopted", keyring.ObjectLabelPrefix))
	}
	ek, err := client.FindExistingKey(ctx, sel)
	if err != nil {
		return respondError("adopt key", fieldOfInput(field, err))
	}
	if err := b.refuseKEK(ctx, req.Storage, client, ek, field); err != nil {
		return respondError("adopt key", err)
	}
	if _, _, isKEK := keyring.KEKLabelOwner(ek.Label); isKEK || strings.HasPrefix(ek.Label, keyring.ObjectLabelPrefix) {
		return respondError("adopt key", keyring.FieldErrorf(field, "the object is labelled %q: objects this plugin made belong to their keys or mounts and cannot be adopted", ek.Label))
	}
	kt, err := adoptedKeyType(ek, field)
	if err != nil {
		return respondError("adopt key", err)
	}
	if typ := d.Get("type").(string); typ != "" && !strings.EqualFold(typ, kt.Name) {
		return respondError("adopt key", keyring.Userf("type %s does not match the object, which is a %s key", typ, kt.Name))
	}
	extractable := ek.Extractable || !ek.Sensitive
	if extractable && !d.Get("allow_extractable").(bool) {
		return respondError("adopt key", keyring.FieldErrorf(field, "the object is extractable or not sensitive, so its key can leave the HSM; give allow_extractable=true to adopt it anyway"))
	}
	permitted := adoptableOps(kt, ek)
	var ops []string
	if raw, ok := d.GetOk("operations"); ok && len(raw.([]string)) > 0 {
		if ops, err = keyring.NormaliseOperations(raw.([]string), kt); err != nil {
			return respondError("adopt key", err)
		}
		for _, op := range ops {
			if !permitted[op] {
				return respondError("adopt key", keyring.FieldErrorf("operations", "the object's attributes do not permit %s (see its CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN)", op))
			}
		}
	} else {
		for _, op := range kt.DefaultOps {
			if permitted[op] {
				ops = append(ops, op)
			}
		}
		if len(ops) == 0 {
			return respondError("adopt key", keyring.FieldErrorf(field, "the object permits none of the operations of a %s key", kt.Name))
		}
	}
	kv := &keyring.Version{
		ObjectID:        ek.ID,
		Label:           ek.Label,
		CreationTime:    b.ring.Now().UTC(),
		Origin:          keyring.OriginAdopted,
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

	b.ring.Lock()
	defer b.ring.Unlock()
	k, err := keyring.Load(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if k == nil {
		if err := b.ring.CheckNew(ctx, req.Storage, name, conf.MaxKeys, ""); err != nil {
			return respondError("adopt key", err)
		}
		k = keyring.NewEntry(keyring.Params{
			Name: name, Type: kt, Operations: ops, Description: d.Get("description").(string), Residency: keyring.ResidencyHSM,
			DeletionAllowed: d.Get("deletion_allowed").(bool), Imported: true,
		})
	} else {
		if k.Type != kt.Name {
			return respondError("adopt key", keyring.FieldErrorf(field, "the object is a %s key; %q is %s", kt.Name, name, k.Type))
		}
		for _, op := range k.Operations {
			if !permitted[op] {
				return respondError("adopt key", keyring.FieldErrorf(field, "the object's attributes do not permit %s, which key %q allows", op, name))
			}
		}
		for v, existing := range k.Versions {
			if slices.Equal(existing.ObjectID, ek.ID) {
				return respondError("adopt key", keyring.FieldErrorf(field, "the object is already version %d of %q", v, name))
			}
		}
	}
	if err := b.ring.StoreNewVersion(ctx, req.Storage, k, k.LatestVersion+1, kv); err != nil {
		return nil, err
	}
	return &logical.Response{Data: keyResponse(k)}, nil
}

// fieldOfInput names the field at fault in the token's refusal of an
// input.
func fieldOfInput(field string, err error) error {
	var ie *hsm.InputError
	if errors.As(err, &ie) {
		return keyring.FieldErrorf(field, "%s", ie.Reason)
	}
	return err
}

// refuseKEK refuses an object found for adoption that is a KEK: one of
// this mount's KEK versions, a KEK another mount recorded on the token, or
// a key that only wraps and unwraps. field selected the object.
func (b *backend) refuseKEK(ctx context.Context, s logical.Storage, client *hsm.Client, ek hsm.ExistingKey, field string) error {
	const never = "; a KEK never becomes a data key"
	st, err := b.ring.KEK(ctx, s)
	if err != nil {
		return err
	}
	for v, kv := range st.Versions {
		if bytes.Equal(kv.ObjectID, ek.ID) {
			return keyring.FieldErrorf(field, "the object is version %d of this mount's key-encryption key"+never, v)
		}
	}
	records, err := client.ListObjects(ctx, keyring.ObjectLabelPrefix)
	if err != nil {
		return err
	}
	for _, o := range records {
		if owner, id, ok := keyring.ParseKEKRecord(o.Label); ok && bytes.Equal(id, ek.ID) {
			return keyring.FieldErrorf(field, "the object is the key-encryption key of mount %s"+never, owner)
		}
	}
	if ek.Wrap && !ek.Encrypt && !ek.Decrypt && !ek.Sign {
		return keyring.FieldErrorf(field, "the object may only wrap and unwrap keys: it is a key-encryption key"+never)
	}
	return nil
}
