package keyring

import (
	"regexp"
	"unicode/utf8"
)

// Bounds of a key's tags and description.
const (
	MaxTags            = 50
	MaxTagValueLen     = 256
	MaxDescriptionLen  = 4096
	maxTagKeyLenInText = "128"
)

// tagKeyRe: a tag's key starts with a letter or digit and holds letters,
// digits and _ . : / = + @ -, at most 128 in all (AWS's and GCP's tag keys
// fit).
var tagKeyRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/=+@-]{0,127}$`)

// CheckTags says what is wrong with a key's tags, or nil.
func CheckTags(tags map[string]string) error {
	if len(tags) > MaxTags {
		return FieldErrorf("tags", "%d tags; at most %d allowed", len(tags), MaxTags)
	}
	for k, v := range tags {
		if !tagKeyRe.MatchString(k) {
			return FieldErrorf("tags", "tag key %q: 1 to "+maxTagKeyLenInText+" letters, digits or _ . : / = + @ -, starting with a letter or digit", k)
		}
		if len(v) > MaxTagValueLen || !utf8.ValidString(v) || !printable(v) {
			return FieldErrorf("tags", "the value of tag %q: at most %d bytes of printable UTF-8", k, MaxTagValueLen)
		}
	}
	return nil
}

// CheckDescription says what is wrong with a key's description, or nil.
func CheckDescription(d string) error {
	if len(d) > MaxDescriptionLen || !utf8.ValidString(d) {
		return FieldErrorf("description", "at most %d bytes of UTF-8", MaxDescriptionLen)
	}
	return nil
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
