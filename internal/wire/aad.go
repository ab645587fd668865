package wire

import (
	"encoding/binary"
	"slices"
)

// The AAD domains start every AAD: they keep the AAD non-empty whatever
// the caller binds, and tie the format to its version. Data keys have their
// own domain, so a ciphertext is bound to its purpose: datakey/decrypt
// (allowed by unwrapKey) never opens what encrypt made.
//
// The bytes are part of every stored ciphertext: they never change.
const (
	DomainAEAD    = "hsmkms.aead.v1"
	DomainDataKey = "hsmkms.datakey.v1"
)

// AAD encodes the three ways a caller binds data to a context into one
// unambiguous AAD of the domain: each part is length-prefixed, and the
// encryption context is sorted by key so that its order does not matter.
//
// domain | len(context) context | len(ad) ad | count | (len(k) k len(v) v)...
// with each length and the count a big-endian uint32.
func AAD(domain string, context, associatedData []byte, encryptionContext map[string]string) []byte {
	size := len(domain) + 12 + len(context) + len(associatedData)
	keys := make([]string, 0, len(encryptionContext))
	for k, v := range encryptionContext {
		keys = append(keys, k)
		size += 8 + len(k) + len(v)
	}
	slices.Sort(keys)
	out := make([]byte, 0, size)
	out = append(out, domain...)
	out = appendPart(out, context)
	out = appendPart(out, associatedData)
	out = binary.BigEndian.AppendUint32(out, uint32(len(keys)))
	for _, k := range keys {
		out = appendPart(out, []byte(k))
		out = appendPart(out, []byte(encryptionContext[k]))
	}
	return out
}

func appendPart(out, part []byte) []byte {
	out = binary.BigEndian.AppendUint32(out, uint32(len(part)))
	return append(out, part...)
}
