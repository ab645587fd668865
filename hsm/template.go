package hsm

import "github.com/miekg/pkcs11"

// Usage is what a key may be used for in the HSM; everything else is off.
type Usage struct {
	Encrypt bool
	Decrypt bool
	Sign    bool
	Verify  bool
}

// secretKeyTemplate is the one builder of secret-key templates: a token
// object that is private, sensitive and never extractable, with only the
// usage bits asked for and CKA_ID as the link to the plugin's metadata.
func secretKeyTemplate(keyType uint, valueLen int, id []byte, label string, use Usage) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, valueLen),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, use.Encrypt),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, use.Decrypt),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, use.Sign),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, use.Verify),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// keyPairTemplates are the one builder of key-pair templates: the private
// half is a private, sensitive, never-extractable token object; the public
// half is a public token object. Both carry the same CKA_ID and neither can
// be modified, recover data from a signature or derive keys. The pair is
// pairwise consistent: the public half may verify what the private half may
// sign and encrypt what it may decrypt, since NSS and HSMs that run a
// pairwise test refuse anything else. The plugin enforces each key's
// operations itself; the public half's usages grant nothing secret.
func keyPairTemplates(keyType uint, id []byte, label string, use Usage, public, private []*pkcs11.Attribute) (pub, priv []*pkcs11.Attribute) {
	pub = append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, use.Verify || use.Sign),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, use.Encrypt || use.Decrypt),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, public...)
	priv = append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, use.Sign),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, use.Decrypt),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, private...)
	return pub, priv
}
