package hsmkms

import (
	"encoding/base64"
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
)

const ciphertextPrefix = "vault"

// formatCiphertext makes Transit's "vault:v<N>:<base64>" form.
func formatCiphertext(version int, blob []byte) string {
	return ciphertextPrefix + ":v" + strconv.Itoa(version) + ":" + base64.StdEncoding.EncodeToString(blob)
}

// parseCiphertext reads "vault:v<N>:<base64>": exactly two colons, N a
// positive integer. The message says what to fix, never what the bytes are.
func parseCiphertext(s string) (int, []byte, string) {
	if s == "" {
		return 0, nil, "ciphertext is empty"
	}
	parts := strings.Split(s, ":")
	if len(parts) != 3 || parts[0] != ciphertextPrefix {
		return 0, nil, "ciphertext must have the form vault:v<version>:<base64>"
	}
	version, msg := parseVersionPart(parts[1])
	if msg != "" {
		return 0, nil, msg
	}
	blob, err := base64.StdEncoding.Strict().DecodeString(parts[2])
	if err != nil {
		return 0, nil, "ciphertext payload is not valid base64"
	}
	if len(blob) == 0 {
		return 0, nil, "ciphertext payload is empty"
	}
	return version, blob, ""
}

// parseVersionPart reads the "v<N>" between the colons.
func parseVersionPart(s string) (int, string) {
	if !strings.HasPrefix(s, "v") {
		return 0, "ciphertext version must have the form v<number>"
	}
	version, err := strconv.Atoi(s[1:])
	if err != nil || version < 1 || s[1:] != strconv.Itoa(version) {
		return 0, "ciphertext version must be v1 or higher"
	}
	return version, ""
}

// aadDomain starts every AAD: it keeps the AAD non-empty whatever the
// caller binds, and ties the format to its version. Data keys have their
// own domain, so a ciphertext is bound to its purpose: datakey/decrypt
// (allowed by unwrapKey) never opens what encrypt made.
const (
	aadDomain        = "hsmkms.aead.v1"
	dataKeyAADDomain = "hsmkms.datakey.v1"
)

// buildAAD encodes the three ways a caller binds data to a context into one
// unambiguous AAD: each part is length-prefixed, and the encryption context
// is sorted by key so that its order does not matter.
func buildAAD(context, associatedData []byte, encryptionContext map[string]string) []byte {
	return buildDomainAAD(aadDomain, context, associatedData, encryptionContext)
}

// buildDomainAAD is buildAAD for a ciphertext of the given domain.
func buildDomainAAD(domain string, context, associatedData []byte, encryptionContext map[string]string) []byte {
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
