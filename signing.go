package hsmkms

import (
	"crypto"
	"crypto/rsa"
	"slices"
	"strconv"
	"strings"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/wire"
)

// signOptions are a sign or verify request's options, shared by its items.
type signOptions struct {
	hash      crypto.Hash
	prehashed bool
	pss       bool   // RSA: PSS rather than PKCS#1 v1.5
	jws       bool   // raw r||s (ECDSA) and base64url, rather than ASN.1 and base64
	saltLen   int    // RSA-PSS; rsa.PSSSaltLengthAuto or rsa.PSSSaltLengthEqualsHash allowed
	alg       string // the JWA name, when given
}

// jwaAlgorithms maps the seeds' JWA names to key family, hash and scheme.
var jwaAlgorithms = map[string]struct {
	family keyring.Family
	hash   string
	pss    bool
	curve  string
}{
	"RS256": {keyring.FamilyRSA, "sha2-256", false, ""},
	"RS384": {keyring.FamilyRSA, "sha2-384", false, ""},
	"RS512": {keyring.FamilyRSA, "sha2-512", false, ""},
	"PS256": {keyring.FamilyRSA, "sha2-256", true, ""},
	"PS384": {keyring.FamilyRSA, "sha2-384", true, ""},
	"PS512": {keyring.FamilyRSA, "sha2-512", true, ""},
	"ES256": {keyring.FamilyEC, "sha2-256", false, "P-256"},
	"ES384": {keyring.FamilyEC, "sha2-384", false, "P-384"},
	"ES512": {keyring.FamilyEC, "sha2-512", false, "P-521"},
}

func jwaNames() string {
	names := make([]string, 0, len(jwaAlgorithms))
	for n := range jwaAlgorithms {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// signRequest is what readSignOptions needs from the request; fields the
// caller did not give are empty.
type signRequest struct {
	hashAlgorithm      string // from the body or the URL
	hashGiven          bool
	prehashed          bool
	signatureAlgorithm string
	marshaling         string
	saltLength         string
	alg                string
}

// readSignOptions checks the options against the key type; a wrong one is
// the caller's mistake, named with the values allowed.
func readSignOptions(r signRequest, kt keyring.KeyType) (signOptions, error) {
	opts := signOptions{prehashed: r.prehashed}
	hashName := strings.ToLower(r.hashAlgorithm)
	if hashName == "" {
		hashName = "sha2-256"
	}
	sigAlg := strings.ToLower(r.signatureAlgorithm)
	saltGiven := r.saltLength != "" && !strings.EqualFold(r.saltLength, "auto")

	if r.alg != "" {
		jwa, ok := jwaAlgorithms[strings.ToUpper(r.alg)]
		if !ok {
			return opts, keyring.Userf("alg %q is not one of: %s", r.alg, jwaNames())
		}
		opts.alg = strings.ToUpper(r.alg)
		if jwa.family != kt.Family || (jwa.curve != "" && jwa.curve != kt.Curve) {
			return opts, keyring.Userf("alg %s does not fit key type %s; %s", opts.alg, kt.Name, fittingAlgs(kt))
		}
		if r.hashGiven && hashName != jwa.hash {
			return opts, keyring.Userf("alg %s implies hash_algorithm %s, not %s; give one of the two", opts.alg, jwa.hash, hashName)
		}
		hashName = jwa.hash
		if kt.Family == keyring.FamilyRSA {
			want := "pkcs1v15"
			if jwa.pss {
				want = "pss"
			}
			if sigAlg != "" && sigAlg != want {
				return opts, keyring.Userf("alg %s implies signature_algorithm %s, not %s; give one of the two", opts.alg, want, sigAlg)
			}
			sigAlg = want
			if jwa.pss && !saltGiven {
				r.saltLength = "hash" // RFC 7518: the salt is as long as the hash
			}
		}
	}

	// Verify's hashes: sign's and sha1, which signRequest refuses to sign
	// with.
	hash, ok := wire.LookupHash(hashName, wire.UseVerify)
	if !ok {
		return opts, keyring.Userf("hash_algorithm %q is not one of: %s", hashName, strings.Join(wire.HashNames(wire.UseVerify), ", "))
	}
	opts.hash = hash

	if kt.Family == keyring.FamilyRSA {
		switch sigAlg {
		case "", "pss":
			opts.pss = true
		case "pkcs1v15":
		default:
			return opts, keyring.Userf("signature_algorithm %q is not one of: pss, pkcs1v15", r.signatureAlgorithm)
		}
		if opts.pss {
			salt, err := parseSaltLength(r.saltLength)
			if err != nil {
				return opts, err
			}
			opts.saltLen = salt
		}
	}

	switch strings.ToLower(r.marshaling) {
	case "", "asn1":
	case "jws":
		opts.jws = true
	default:
		return opts, keyring.Userf("marshaling_algorithm %q is not one of: asn1, jws", r.marshaling)
	}
	return opts, nil
}

func fittingAlgs(kt keyring.KeyType) string {
	var fit []string
	for name, jwa := range jwaAlgorithms {
		if jwa.family == kt.Family && (jwa.curve == "" || jwa.curve == kt.Curve) {
			fit = append(fit, name)
		}
	}
	slices.Sort(fit)
	return "it takes " + strings.Join(fit, ", ")
}

// parseSaltLength reads Transit's salt_length: auto (largest when signing,
// detected when verifying), hash, or a number of bytes.
func parseSaltLength(s string) (int, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return rsa.PSSSaltLengthAuto, nil
	case "hash":
		return rsa.PSSSaltLengthEqualsHash, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, keyring.Userf("salt_length %q is not 'auto', 'hash' or a number of bytes", s)
	}
	return n, nil
}

// resolveSaltLength turns Transit's salt length into bytes for signing.
func resolveSaltLength(saltLen int, pub *rsa.PublicKey, hash crypto.Hash) int {
	switch saltLen {
	case rsa.PSSSaltLengthAuto:
		return hsm.PSSSaltMax(pub, hash)
	case rsa.PSSSaltLengthEqualsHash:
		return hash.Size()
	}
	return saltLen
}
