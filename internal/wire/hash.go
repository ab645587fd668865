package wire

import (
	"crypto"
	_ "crypto/sha1" // verifies old signatures; BYOK's OAEP may use it
	_ "crypto/sha256"
	_ "crypto/sha3"
	_ "crypto/sha512"
	"strings"
)

// Use is what a request may use a hash for.
type Use uint8

const (
	// UseSign: sign hashes with it (the HSM signs the digest).
	UseSign Use = 1 << iota
	// UseVerify: verify checks signatures made with it; a superset of
	// UseSign (sha1 verifies old signatures only, as in Transit).
	UseVerify
	// UseHashPath: the hash path computes it.
	UseHashPath
	// UseHMAC: hmac and its verification take it.
	UseHMAC
	// UseOAEP: Transit's BYOK import takes it as the hash of the RSA-OAEP
	// that wrapped the ephemeral key, spelled as BYOK spells it (SHA256).
	UseOAEP
)

// hashEntry is one hash under its two spellings.
type hashEntry struct {
	name string // Transit's spelling: sha2-256
	byok string // Transit BYOK's spelling: SHA256; "" when BYOK does not take it
	hash crypto.Hash
	uses Use
}

const shaTwo = UseSign | UseVerify | UseHashPath

// hashes is the one list of the hashes the plugin takes, in the order
// messages name them.
var hashes = []hashEntry{
	{"sha1", "SHA1", crypto.SHA1, UseVerify | UseOAEP},
	{"sha2-224", "SHA224", crypto.SHA224, shaTwo | UseOAEP},
	{"sha2-256", "SHA256", crypto.SHA256, shaTwo | UseHMAC | UseOAEP},
	{"sha2-384", "SHA384", crypto.SHA384, shaTwo | UseHMAC | UseOAEP},
	{"sha2-512", "SHA512", crypto.SHA512, shaTwo | UseHMAC | UseOAEP},
	{"sha3-224", "", crypto.SHA3_224, shaTwo},
	{"sha3-256", "", crypto.SHA3_256, shaTwo},
	{"sha3-384", "", crypto.SHA3_384, shaTwo},
	{"sha3-512", "", crypto.SHA3_512, shaTwo},
}

// spelling is the name of e a request gives for use.
func (e hashEntry) spelling(use Use) string {
	if use == UseOAEP {
		return e.byok
	}
	return e.name
}

// canonical is name in the case of the spellings use takes: Transit's
// lower case, BYOK's upper case.
func canonical(name string, use Use) string {
	if use == UseOAEP {
		return strings.ToUpper(name)
	}
	return strings.ToLower(name)
}

// LookupHash finds the hash a request names for use, in any case: Transit's
// spelling (sha2-256), or BYOK's (SHA256) for UseOAEP. use is one Use.
func LookupHash(name string, use Use) (crypto.Hash, bool) {
	name = canonical(name, use)
	for _, e := range hashes {
		if e.uses&use != 0 && name == e.spelling(use) {
			return e.hash, true
		}
	}
	return 0, false
}

// HashNames are the names use takes, in the order messages list them.
func HashNames(use Use) []string {
	var names []string
	for _, e := range hashes {
		if e.uses&use != 0 {
			names = append(names, e.spelling(use))
		}
	}
	return names
}

// HashName is Transit's spelling of h (sha3-256), for messages; h's own
// name when the registry does not have it.
func HashName(h crypto.Hash) string {
	for _, e := range hashes {
		if e.hash == h {
			return e.name
		}
	}
	return h.String()
}

// HashAllows reports whether h may be used for use.
func HashAllows(h crypto.Hash, use Use) bool {
	for _, e := range hashes {
		if e.hash == h {
			return e.uses&use != 0
		}
	}
	return false
}
