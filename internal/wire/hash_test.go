package wire

import (
	"crypto"
	"strings"
	"testing"
)

// Every hash in the registry can be computed: a missing import would
// panic in hash.New on the first request that names it.
func TestEveryHashIsLinked(t *testing.T) {
	for _, e := range hashes {
		if !e.hash.Available() {
			t.Errorf("%s (%v) is not linked into the binary", e.name, e.hash)
		}
	}
}

// The lists are what messages and help name, in this order.
func TestHashNamesPerUse(t *testing.T) {
	for use, want := range map[Use]string{
		UseSign:     "sha2-224, sha2-256, sha2-384, sha2-512, sha3-224, sha3-256, sha3-384, sha3-512",
		UseVerify:   "sha1, sha2-224, sha2-256, sha2-384, sha2-512, sha3-224, sha3-256, sha3-384, sha3-512",
		UseHashPath: "sha2-224, sha2-256, sha2-384, sha2-512, sha3-224, sha3-256, sha3-384, sha3-512",
		UseHMAC:     "sha2-256, sha2-384, sha2-512",
		UseOAEP:     "SHA1, SHA224, SHA256, SHA384, SHA512",
	} {
		if got := strings.Join(HashNames(use), ", "); got != want {
			t.Errorf("use %b: %q, want %q", use, got, want)
		}
	}
}

func TestLookupHash(t *testing.T) {
	for _, tc := range []struct {
		name string
		use  Use
		want crypto.Hash // 0: refused
	}{
		{"sha2-256", UseSign, crypto.SHA256},
		{"SHA2-256", UseHMAC, crypto.SHA256},
		{"sha3-384", UseHashPath, crypto.SHA3_384},
		{"sha3-512", UseVerify, crypto.SHA3_512},
		{"sha1", UseVerify, crypto.SHA1},
		{"sha1", UseSign, 0}, // verifies old signatures only, as in Transit
		{"sha1", UseHashPath, 0},
		{"sha2-224", UseHMAC, 0},
		{"sha3-256", UseHMAC, 0},
		{"SHA256", UseOAEP, crypto.SHA256},
		{"sha256", UseOAEP, crypto.SHA256},
		{"SHA1", UseOAEP, crypto.SHA1},
		{"sha2-256", UseOAEP, 0}, // BYOK has its own spelling
		{"SHA256", UseSign, 0},
		{"sha3-256", UseOAEP, 0},
		{"", UseOAEP, 0},
		{"", UseSign, 0},
		{"md5", UseVerify, 0},
	} {
		got, ok := LookupHash(tc.name, tc.use)
		if ok != (tc.want != 0) || got != tc.want {
			t.Errorf("LookupHash(%q, %b): %v %v, want %v", tc.name, tc.use, got, ok, tc.want)
		}
	}
}

// HashName gives the name a request uses, for every hash in the registry:
// it once read a table of three SHA-2 hashes, and named sha3-256
// "SHA3-256" in the prehashed length message.
func TestHashNameIsTransitSpelling(t *testing.T) {
	for _, name := range HashNames(UseVerify) {
		h, _ := LookupHash(name, UseVerify)
		if got := HashName(h); got != name {
			t.Errorf("HashName(%v) = %q, want %q", h, got, name)
		}
	}
	if got := HashName(crypto.MD5); got != "MD5" {
		t.Errorf("HashName(MD5) = %q", got)
	}
}

func TestHashAllows(t *testing.T) {
	if HashAllows(crypto.SHA1, UseSign) || !HashAllows(crypto.SHA1, UseVerify) {
		t.Error("sha1 must verify and not sign")
	}
	if !HashAllows(crypto.SHA3_256, UseSign) || HashAllows(crypto.SHA3_256, UseHMAC) {
		t.Error("sha3-256 signs, and is not an HMAC hash here")
	}
	if HashAllows(crypto.MD5, UseVerify) {
		t.Error("md5 is not in the registry")
	}
}
