package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestFormatParseRoundTrip(t *testing.T) {
	blob := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	for _, noun := range []string{NounCiphertext, NounHMAC} {
		s := Format(12, blob)
		if s != "vault:v12:MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6" {
			t.Fatalf("Format: %q", s)
		}
		v, got, err := Parse(noun, s)
		if err != nil || v != 12 || !bytes.Equal(got, blob) {
			t.Fatalf("Parse(%s): %d %q %v", noun, v, got, err)
		}
	}
	sig := []byte{0xfb, 0xff, 0x01}
	for jws, want := range map[bool]string{false: "vault:v3:+/8B", true: "vault:v3:-_8B"} {
		s := FormatSignature(3, sig, jws)
		if s != want {
			t.Fatalf("FormatSignature(jws %v): %q, want %q", jws, s, want)
		}
		v, got, err := ParseSignature(s, jws)
		if err != nil || v != 3 || !bytes.Equal(got, sig) {
			t.Fatalf("ParseSignature(jws %v): %d %x %v", jws, v, got, err)
		}
	}
}

// The messages name the field the string came from, so no caller mends
// them; they are the messages the API has always given.
func TestParseMessagesNameTheField(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "%s is empty"},
		{"vault:v1", "%s must have the form vault:v<version>:<base64>"},
		{"vault:v1:AA:AA", "%s must have the form vault:v<version>:<base64>"},
		{"transit:v1:AAAA", "%s must have the form vault:v<version>:<base64>"},
		{"vault:1:AAAA", "%s version must have the form v<number>"},
		{"vault:vX:AAAA", "%s version must be v1 or higher"},
		{"vault:v0:AAAA", "%s version must be v1 or higher"},
		{"vault:v01:AAAA", "%s version must be v1 or higher"},
		{"vault:v+1:AAAA", "%s version must be v1 or higher"},
		{"vault:v99999999999999999999:AAAA", "%s version must be v1 or higher"},
		{"vault:v1:AAA", "%s payload is not valid base64"},
		{"vault:v1:AB==", "%s payload is not valid base64"}, // not strict: stray bits
		{"vault:v1:-_8B", "%s payload is not valid base64"},
		{"vault:v1:", "%s payload is empty"},
	} {
		for _, noun := range []string{NounCiphertext, NounHMAC} {
			v, blob, err := Parse(noun, tc.in)
			want := strings.Replace(tc.want, "%s", noun, 1)
			var ie *InputError
			if !errors.As(err, &ie) || err.Error() != want || ie.Field != noun || v != 0 || blob != nil {
				t.Errorf("Parse(%s, %q): %d %x %v, want %q", noun, tc.in, v, blob, err, want)
			}
		}
	}
}

func TestParseSignatureMessages(t *testing.T) {
	for _, tc := range []struct {
		in   string
		jws  bool
		want string
	}{
		{"", false, "signature is missing"},
		{"vault:v1", false, "signature must have the form vault:v<version>:<base64>"},
		{"vault:vX:abc", false, "signature version must be v1 or higher"},
		{"vault:x1:abc", true, "signature version must have the form v<number>"},
		{"vault:v1:***", false, "signature payload is not valid base64"},
		{"vault:v1:", false, "signature payload is not valid base64"},
		{"vault:v1:-_8B", false, "signature payload is not valid base64"},
		{"vault:v1:ab+/cd==", true, "signature payload is not url-safe base64 without padding (marshaling_algorithm=jws)"},
		{"vault:v1:", true, "signature payload is not url-safe base64 without padding (marshaling_algorithm=jws)"},
	} {
		_, _, err := ParseSignature(tc.in, tc.jws)
		var ie *InputError
		if !errors.As(err, &ie) || err.Error() != tc.want || ie.Field != NounSignature {
			t.Errorf("ParseSignature(%q, jws %v): %v, want %q", tc.in, tc.jws, err, tc.want)
		}
	}
}

// A refused string is never quoted back: it may be a ciphertext or an HMAC
// the caller would not want in a log.
func TestParseNeverEchoesTheInput(t *testing.T) {
	const secret = "SECRETSECRET"
	for _, in := range []string{secret, "vault:" + secret + ":AAAA", "vault:v1:" + secret + "*", "vault:v1:AAAA:" + secret} {
		if _, _, err := Parse(NounCiphertext, in); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("Parse(%q): %v", in, err)
		}
		if _, _, err := ParseSignature(in, false); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("ParseSignature(%q): %v", in, err)
		}
	}
}

func TestInputErrorShapes(t *testing.T) {
	for _, tc := range []struct {
		err  *InputError
		want string
	}{
		{fieldError("jwk", "is not valid JSON"), "jwk is not valid JSON"},
		{partError("jwk", "qi does not match p and q"), "jwk: qi does not match p and q"},
		{&InputError{Reason: "give exactly one"}, "give exactly one"},
		{&InputError{Field: "hmac", Reason: "is empty"}, "hmac is empty"},
	} {
		if got := tc.err.Error(); got != tc.want || tc.err.UserMessage() != got {
			t.Errorf("%#v: %q, want %q", tc.err, got, tc.want)
		}
	}
}
