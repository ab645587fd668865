package wire

import (
	"encoding/base64"
	"strconv"
	"strings"
)

// prefix starts every versioned string, as in Transit.
const prefix = "vault"

// The nouns of the versioned strings: the request field each is read from,
// named in every message about it.
const (
	NounCiphertext = "ciphertext"
	NounHMAC       = "hmac"
	NounSignature  = "signature"
)

// Format makes Transit's "vault:v<N>:<base64>" form of a ciphertext or an
// HMAC.
func Format(version int, blob []byte) string {
	return prefix + ":v" + strconv.Itoa(version) + ":" + base64.StdEncoding.EncodeToString(blob)
}

// Parse reads "vault:v<N>:<base64>" (a ciphertext or an HMAC): exactly two
// colons, N a positive integer, a payload of standard base64 that is not
// empty. noun is the field it came from (NounCiphertext, NounHMAC), so the
// message says what to fix.
func Parse(noun, s string) (int, []byte, error) {
	if s == "" {
		return 0, nil, fieldError(noun, "is empty")
	}
	version, payload, err := split(noun, s)
	if err != nil {
		return 0, nil, err
	}
	blob, err := base64.StdEncoding.Strict().DecodeString(payload)
	if err != nil {
		return 0, nil, fieldError(noun, "payload is not valid base64")
	}
	if len(blob) == 0 {
		return 0, nil, fieldError(noun, "payload is empty")
	}
	return version, blob, nil
}

// FormatSignature makes a signature's "vault:v<N>:<base64>"; jws writes
// base64url without padding, as Transit does with marshaling_algorithm=jws.
func FormatSignature(version int, sig []byte, jws bool) string {
	enc := base64.StdEncoding
	if jws {
		enc = base64.RawURLEncoding
	}
	return prefix + ":v" + strconv.Itoa(version) + ":" + enc.EncodeToString(sig)
}

// ParseSignature reads what FormatSignature writes.
func ParseSignature(s string, jws bool) (int, []byte, error) {
	if s == "" {
		return 0, nil, fieldError(NounSignature, "is missing")
	}
	version, payload, err := split(NounSignature, s)
	if err != nil {
		return 0, nil, err
	}
	enc := base64.StdEncoding.Strict()
	if jws {
		enc = base64.RawURLEncoding.Strict()
	}
	sig, err := enc.DecodeString(payload)
	if err != nil || len(sig) == 0 {
		if jws {
			return 0, nil, fieldError(NounSignature, "payload is not url-safe base64 without padding (marshaling_algorithm=jws)")
		}
		return 0, nil, fieldError(NounSignature, "payload is not valid base64")
	}
	return version, sig, nil
}

// split checks the prefix and the version of "vault:v<N>:<payload>".
func split(noun, s string) (int, string, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 || parts[0] != prefix {
		return 0, "", fieldError(noun, "must have the form vault:v<version>:<base64>")
	}
	if !strings.HasPrefix(parts[1], "v") {
		return 0, "", fieldError(noun, "version must have the form v<number>")
	}
	digits := parts[1][1:]
	version, err := strconv.Atoi(digits)
	// The number must be written as Itoa writes it ("v01" and "v+1" are
	// refused), so that a string has one form.
	if err != nil || version < 1 || digits != strconv.Itoa(version) {
		return 0, "", fieldError(noun, "version must be v1 or higher")
	}
	return version, parts[2], nil
}
