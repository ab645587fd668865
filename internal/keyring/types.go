package keyring

import (
	"context"
	"crypto"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
)

// Operations a key may allow, in the seeds' spelling.
const (
	OpEncrypt   = "encrypt"
	OpDecrypt   = "decrypt"
	OpWrapKey   = "wrapKey"
	OpUnwrapKey = "unwrapKey"
	OpSign      = "sign"
	OpVerify    = "verify"
	// OpHMAC and OpHMACVerify are not key operations: they name the hmac
	// path's checks (HMAC keys need sign or verify; AES keys allow it, as
	// in Transit).
	OpHMAC       = "hmac"
	OpHMACVerify = "hmac verification"
)

// Family is a kind of key; what a key can do follows from it.
type Family string

const (
	FamilyAES     Family = "aes"
	FamilyRSA     Family = "rsa"
	FamilyEC      Family = "ec"
	FamilyHMAC    Family = "hmac"
	FamilyEd25519 Family = "ed25519"
)

// DefaultHMACBits: long enough for HMAC-SHA-512, which some tokens
// (SoftHSM among them) refuse with a key shorter than the hash.
const DefaultHMACBits = 512

// HMACCompanionBits is the size of the generic secret an AES version
// computes hmac with.
const HMACCompanionBits = 512

// DefaultType is the type of a key created without one.
const DefaultType = "aes256-gcm96"

// KeyType is one key type the mount can hold, and what it can do. Handlers
// ask it (KeyType.Signs, .Wrappable, ...) instead of testing families.
type KeyType struct {
	Name       string
	Family     Family
	Bits       int    // AES and RSA key size; HMAC key size
	Curve      string // EC curve name
	AllowedOps []string
	DefaultOps []string
}

var (
	symmetricOps  = []string{OpEncrypt, OpDecrypt, OpWrapKey, OpUnwrapKey}
	signingOps    = []string{OpSign, OpVerify}
	rsaAllowedOps = []string{OpSign, OpVerify, OpEncrypt, OpDecrypt}
)

// types is the table of every key type: adding a type is a row here and,
// for a new family, its capabilities below and its generator in hsm/.
var types = map[string]KeyType{
	"aes128-gcm96": {Name: "aes128-gcm96", Family: FamilyAES, Bits: 128, AllowedOps: symmetricOps, DefaultOps: symmetricOps},
	"aes192-gcm96": {Name: "aes192-gcm96", Family: FamilyAES, Bits: 192, AllowedOps: symmetricOps, DefaultOps: symmetricOps},
	"aes256-gcm96": {Name: "aes256-gcm96", Family: FamilyAES, Bits: 256, AllowedOps: symmetricOps, DefaultOps: symmetricOps},
	"rsa-2048":     {Name: "rsa-2048", Family: FamilyRSA, Bits: 2048, AllowedOps: rsaAllowedOps, DefaultOps: rsaAllowedOps},
	"rsa-3072":     {Name: "rsa-3072", Family: FamilyRSA, Bits: 3072, AllowedOps: rsaAllowedOps, DefaultOps: rsaAllowedOps},
	"rsa-4096":     {Name: "rsa-4096", Family: FamilyRSA, Bits: 4096, AllowedOps: rsaAllowedOps, DefaultOps: rsaAllowedOps},
	"ecdsa-p256":   {Name: "ecdsa-p256", Family: FamilyEC, Curve: "P-256", AllowedOps: signingOps, DefaultOps: signingOps},
	"ecdsa-p384":   {Name: "ecdsa-p384", Family: FamilyEC, Curve: "P-384", AllowedOps: signingOps, DefaultOps: signingOps},
	"ecdsa-p521":   {Name: "ecdsa-p521", Family: FamilyEC, Curve: "P-521", AllowedOps: signingOps, DefaultOps: signingOps},
	"hmac":         {Name: "hmac", Family: FamilyHMAC, Bits: DefaultHMACBits, AllowedOps: signingOps, DefaultOps: signingOps},
	"ed25519":      {Name: "ed25519", Family: FamilyEd25519, AllowedOps: signingOps, DefaultOps: signingOps},
}

// Type returns the key type of that name.
func Type(name string) (KeyType, bool) {
	kt, ok := types[name]
	return kt, ok
}

// Asymmetric: a key pair, whose public half the plugin keeps.
func (kt KeyType) Asymmetric() bool {
	return kt.Family == FamilyRSA || kt.Family == FamilyEC || kt.Family == FamilyEd25519
}

// EncryptsGCM: encrypt and decrypt are AES-GCM in the HSM, and data keys
// can be sealed under it.
func (kt KeyType) EncryptsGCM() bool { return kt.Family == FamilyAES }

// EncryptsRSA: encrypt is RSA with the public key, decrypt in the HSM.
func (kt KeyType) EncryptsRSA() bool { return kt.Family == FamilyRSA }

// Encrypts: the type can encrypt at all (upsert makes only such keys).
func (kt KeyType) Encrypts() bool { return kt.EncryptsGCM() || kt.EncryptsRSA() }

// Signs: sign and verify with a key pair.
func (kt KeyType) Signs() bool { return kt.Asymmetric() }

// SignsMessage: the mechanism signs the message itself, not a digest
// (EdDSA), so prehashed input and other hashes do not apply.
func (kt KeyType) SignsMessage() bool { return kt.Family == FamilyEd25519 }

// HMACs: the hmac path works with the key: an HMAC key, or an AES key
// through its companion (Transit gives every key an HMAC key).
func (kt KeyType) HMACs() bool { return kt.Family == FamilyHMAC || kt.HasHMACCompanion() }

// HasHMACCompanion: each version made in the HSM or imported gets a
// generic secret for hmac, made and destroyed with it.
func (kt KeyType) HasHMACCompanion() bool { return kt.Family == FamilyAES }

// HMACKeyBits is the size of the key hmac uses with this type.
func (kt KeyType) HMACKeyBits() int {
	if kt.HasHMACCompanion() {
		return HMACCompanionBits
	}
	return kt.Bits
}

// Wrappable: the type can have residency wrapped (the tokens have no
// PKCS#8 unwrap for Ed25519).
func (kt KeyType) Wrappable() bool { return kt.ImportKind() != 0 }

// Importable: import and import_version can bring such a key in.
func (kt KeyType) Importable() bool { return kt.ImportKind() != 0 }

// Adoptable: adopt can bind an existing object of the type.
func (kt KeyType) Adoptable() bool { return kt.ImportKind() != 0 }

// ImportKind is the kind of token object hsm/ unwraps for the type, or 0
// when it has none.
func (kt KeyType) ImportKind() hsm.ImportKind {
	switch kt.Family {
	case FamilyAES:
		return hsm.ImportAES
	case FamilyHMAC:
		return hsm.ImportHMAC
	case FamilyRSA:
		return hsm.ImportRSA
	case FamilyEC:
		return hsm.ImportEC
	}
	return 0
}

// Spec is what hsm/ makes or unwraps for a version of the type.
func (kt KeyType) Spec(ops []string, id []byte, label string, public crypto.PublicKey) hsm.ImportSpec {
	spec := hsm.ImportSpec{Kind: kt.ImportKind(), ID: id, Label: label, Use: UsageOf(ops), Public: public}
	switch kt.Family {
	case FamilyAES, FamilyRSA:
		spec.Bits = kt.Bits
	case FamilyEC:
		spec.Curve = kt.Curve
	}
	return spec
}

// UsageOf is the token usage a key's operations need.
func UsageOf(ops []string) hsm.Usage {
	has := func(op string) bool { return slices.Contains(ops, op) }
	return hsm.Usage{
		Encrypt: has(OpEncrypt) || has(OpWrapKey),
		Decrypt: has(OpDecrypt) || has(OpUnwrapKey),
		Sign:    has(OpSign),
		Verify:  has(OpVerify),
	}
}

// TypeNames lists the types, for messages.
func TypeNames() string {
	names := make([]string, 0, len(types))
	for n := range types {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// ResolveType accepts Transit's type names and the seeds' JWK form
// (type=oct with size, RSA with size, EC with curve).
//
// Keys named with Transit's type names get Transit's default operations
// (RSA: sign, verify, encrypt, decrypt); the seeds' form keeps the seeds'
// defaults (RSA: sign, verify).
func ResolveType(typ string, size int, curve string) (KeyType, error) {
	seedsRSA := false
	switch strings.ToLower(typ) {
	case "":
		typ = DefaultType
	case "oct":
		switch size {
		case 0:
			return KeyType{}, Userf("type oct needs size 128, 192 or 256")
		case 128, 192, 256:
			typ = fmt.Sprintf("aes%d-gcm96", size)
		default:
			return KeyType{}, Userf("size %d is not an AES key size; use 128, 192 or 256", size)
		}
	case "rsa":
		switch size {
		case 2048, 3072, 4096:
			typ = fmt.Sprintf("rsa-%d", size)
			seedsRSA = true
		default:
			return KeyType{}, Userf("type RSA needs size 2048, 3072 or 4096, not %d", size)
		}
		size = 0
	case "ec":
		switch strings.ToUpper(curve) {
		case "P-256", "P-384", "P-521":
			typ = "ecdsa-p" + curve[2:]
		default:
			return KeyType{}, Userf("type EC needs curve P-256, P-384 or P-521, not %q", curve)
		}
		curve = ""
	}
	if curve != "" {
		return KeyType{}, Userf("curve applies only to type EC")
	}
	kt, ok := types[strings.ToLower(typ)]
	if !ok {
		return KeyType{}, Userf("unknown key type %q; available: %s (or type=oct with size)", typ, TypeNames())
	}
	if seedsRSA {
		kt.DefaultOps = signingOps
	}
	if kt.Family == FamilyHMAC && size != 0 {
		if size < 256 || size > 4096 || size%8 != 0 {
			return KeyType{}, Userf("HMAC key size %d bits: give 256 to 4096, a multiple of 8", size)
		}
		kt.Bits = size
		return kt, nil
	}
	if size != 0 && size != kt.Bits {
		return KeyType{}, Userf("size %d does not match type %s", size, kt.Name)
	}
	return kt, nil
}

// RSAType is the RSA type of a modulus size; what names the key (a field,
// "the object") goes into the message.
func RSAType(bits int, what string) (KeyType, error) {
	kt, ok := types[fmt.Sprintf("rsa-%d", bits)]
	if !ok {
		return KeyType{}, Userf("%s: an RSA key of %d bits; 2048, 3072 or 4096 supported", what, bits)
	}
	return kt, nil
}

// HMACType is the hmac type with a key of bits.
func HMACType(bits int) KeyType {
	kt := types["hmac"]
	kt.Bits = bits
	return kt
}

// NormaliseOperations checks requested operations against the key type,
// accepting any letter case, and returns them in a fixed order.
func NormaliseOperations(requested []string, kt KeyType) ([]string, error) {
	var out []string
	for _, r := range requested {
		r = strings.TrimSpace(r)
		idx := slices.IndexFunc(kt.AllowedOps, func(op string) bool { return strings.EqualFold(op, r) })
		if idx < 0 {
			return nil, Userf("operation %q is not allowed for %s keys; allowed: %s", r, kt.Name, strings.Join(kt.AllowedOps, ", "))
		}
		if !slices.Contains(out, kt.AllowedOps[idx]) {
			out = append(out, kt.AllowedOps[idx])
		}
	}
	slices.SortFunc(out, func(a, b string) int {
		return slices.Index(kt.AllowedOps, a) - slices.Index(kt.AllowedOps, b)
	})
	return out, nil
}

// hmacBitsOf is what an entry stores in Bits: an HMAC key's size, 0 for
// the other types (whose size is in their name).
func hmacBitsOf(kt KeyType) int {
	if kt.Family == FamilyHMAC {
		return kt.Bits
	}
	return 0
}

// generate makes a version of the type on the token: a secret key, or a
// key pair whose public half it returns. A new family adds its case here
// and its generator in hsm/.
func (kt KeyType) generate(ctx context.Context, client HSM, id []byte, label string, use hsm.Usage) (crypto.PublicKey, error) {
	switch kt.Family {
	case FamilyAES:
		return nil, client.GenerateAESKey(ctx, id, label, kt.Bits, use)
	case FamilyHMAC:
		return nil, client.GenerateHMACKey(ctx, id, label, kt.Bits, use)
	case FamilyRSA:
		return client.GenerateRSAKeyPair(ctx, id, label, kt.Bits, use)
	case FamilyEC:
		return client.GenerateECKeyPair(ctx, id, label, kt.Curve, use)
	case FamilyEd25519:
		return client.GenerateEd25519KeyPair(ctx, id, label, use)
	}
	return nil, fmt.Errorf("key type %s has no generator", kt.Name)
}
