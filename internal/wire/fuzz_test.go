package wire

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// Native fuzz targets for the parsers that see untrusted input first. Their
// seed corpora (f.Add and testdata/fuzz/) run in every `go test`; fuzz one
// with: go test -run '^$' -fuzz FuzzParseCiphertext -fuzztime 5m ./internal/wire

func FuzzParseCiphertext(f *testing.F) {
	for _, s := range []string{"vault:v1:AAAA", "vault:v0:AAAA", "vault:v-1:AAAA", "vault:v01:AAAA", "vault:v1:", "vault:v1:AAA",
		"vault:v99999999999999999999:AAAA", "vault::", "vault:v1:AAAA:extra", ":v1:AAAA", "vault:v2147483647:AA==", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		version, blob, err := Parse(NounCiphertext, s)
		// An HMAC is read by the same rules; only the noun differs.
		hv, hblob, herr := Parse(NounHMAC, s)
		if hv != version || !bytes.Equal(hblob, blob) || (err == nil) != (herr == nil) {
			t.Fatalf("%q: ciphertext %d %x %v, hmac %d %x %v", s, version, blob, err, hv, hblob, herr)
		}
		if err != nil {
			if version != 0 || blob != nil {
				t.Fatalf("refused %q but returned %d, %x", s, version, blob)
			}
			if strings.Replace(err.Error(), NounCiphertext, NounHMAC, 1) != herr.Error() {
				t.Fatalf("%q: messages %q and %q differ beyond the noun", s, err, herr)
			}
			return
		}
		if version < 1 || len(blob) == 0 {
			t.Fatalf("accepted %q as version %d, %d bytes", s, version, len(blob))
		}
		// What is accepted is what Format writes (the base64 decoder skips
		// line breaks, as Go's and Transit's do).
		if again := Format(version, blob); again != stripLineBreaks(s) {
			t.Fatalf("accepted %q, which formats back as %q", s, again)
		}
	})
}

func FuzzParseSignature(f *testing.F) {
	for _, s := range []string{"vault:v1:MEUCIQ==", "vault:v1:abc-_w", "vault:v3:", "vault:v1:!!!", "x:v1:AA", "vault:v1:AA==:"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, jws bool) {
		version, sig, err := ParseSignature(s, jws)
		if err != nil {
			return
		}
		if version < 1 || len(sig) == 0 {
			t.Fatalf("accepted %q (jws %v) as version %d, %d bytes", s, jws, version, len(sig))
		}
		if again := FormatSignature(version, sig, jws); again != stripLineBreaks(s) {
			t.Fatalf("accepted %q, which formats back as %q", s, again)
		}
	})
}

// decodeAAD reads AAD's output back; the canonical form is unambiguous
// when this recovers exactly what went in.
func decodeAAD(t *testing.T, domain string, aad []byte) (context, ad []byte, ec map[string]string) {
	t.Helper()
	rest, ok := bytes.CutPrefix(aad, []byte(domain))
	if !ok {
		t.Fatalf("AAD does not start with %q", domain)
	}
	part := func() []byte {
		if len(rest) < 4 {
			t.Fatalf("AAD truncated")
		}
		n := binary.BigEndian.Uint32(rest)
		if uint32(len(rest)-4) < n {
			t.Fatalf("AAD part of %d bytes overruns", n)
		}
		p := rest[4 : 4+n]
		rest = rest[4+n:]
		return p
	}
	context, ad = part(), part()
	if len(rest) < 4 {
		t.Fatal("AAD has no context count")
	}
	count := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	ec = map[string]string{}
	prev := ""
	for i := uint32(0); i < count; i++ {
		k, v := string(part()), string(part())
		if i > 0 && k <= prev {
			t.Fatalf("encryption context keys not strictly sorted: %q after %q", k, prev)
		}
		prev = k
		ec[k] = v
	}
	if len(rest) != 0 {
		t.Fatalf("%d bytes after the AAD", len(rest))
	}
	return context, ad, ec
}

func FuzzEncryptionContextCanonicalForm(f *testing.F) {
	f.Add([]byte("ctx"), []byte("ad"), "tenant", "acme", "bucket", "b1")
	f.Add([]byte(""), []byte(""), "a", "b=c", "a=b", "c")
	f.Add([]byte("ab"), []byte("c"), "", "", "x", "")
	f.Fuzz(func(t *testing.T, context, ad []byte, k1, v1, k2, v2 string) {
		ec := map[string]string{k1: v1, k2: v2}
		for _, domain := range []string{DomainAEAD, DomainDataKey} {
			aad := AAD(domain, context, ad, ec)
			gotCtx, gotAD, gotEC := decodeAAD(t, domain, aad)
			if !bytes.Equal(gotCtx, context) || !bytes.Equal(gotAD, ad) || !maps.Equal(gotEC, ec) {
				t.Fatalf("AAD does not decode to its input: %q %q %v -> %q %q %v", context, ad, ec, gotCtx, gotAD, gotEC)
			}
		}
		if bytes.Equal(AAD(DomainAEAD, context, ad, ec), AAD(DomainDataKey, context, ad, ec)) {
			t.Fatal("a data key's AAD equals an ordinary ciphertext's")
		}
	})
}

// FuzzParseJWK: a JWK is untrusted key material. The parser must never
// panic, and a key it accepts is one the rules take, whose private part
// (PKCS#8, as the token receives it) belongs to its public part.
func FuzzParseJWK(f *testing.F) {
	for _, s := range []string{
		`{"kty":"oct","k":"AAECAwQFBgcICQoLDA0ODw"}`,
		`{"kty":"oct","alg":"HS256","k":""}`,
		`{"kty":"EC","crv":"P-256"}`,
		`{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`,
		`{"kty":"OKP","crv":"Ed25519","x":"AA","d":"AA"}`,
		`{"kty":"RSA","n":"AQAB","e":"AQAB"}`,
		`{"kty":5}`, `[]`, `{`,
	} {
		f.Add([]byte(s))
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, key := range []interface{}{rsaKey, &rsaKey.PublicKey, ecKey, &ecKey.PublicKey, edKey, edKey.Public()} {
		b, err := jose.JSONWebKey{Key: key}.MarshalJSON()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	rules := KeyRules{Kinds: []Kind{KindOct, KindRSA, KindEC, KindOKP}, RSABits: []int{2048, 3072, 4096}}
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseJWK(data, rules)
		if err != nil {
			return
		}
		if !slices.Contains(rules.Kinds, k.Kind) || k.Field != "jwk" {
			t.Fatalf("accepted a key of kind %q from %q", k.Kind, k.Field)
		}
		if k.Kind == KindOct {
			if k.Bits != len(k.Secret)*8 || k.Private != nil || k.Public != nil {
				t.Fatalf("oct key: %d bits, %d bytes, private %v, public %T", k.Bits, len(k.Secret), k.Private != nil, k.Public)
			}
			return
		}
		if k.Kind == KindRSA && !slices.Contains(rules.RSABits, k.Bits) {
			t.Fatalf("accepted an RSA key of %d bits", k.Bits)
		}
		if k.Private == nil {
			return
		}
		priv, err := x509.ParsePKCS8PrivateKey(k.Private)
		if err != nil {
			t.Fatalf("accepted %s key's PKCS#8 does not parse: %v", k.Kind, err)
		}
		type publicKey interface{ Equal(crypto.PublicKey) bool }
		if !priv.(interface{ Public() crypto.PublicKey }).Public().(publicKey).Equal(k.Public) {
			t.Fatalf("accepted %s key's private part does not belong to its public part", k.Kind)
		}
	})
}

func stripLineBreaks(s string) string { return strings.NewReplacer("\r", "", "\n", "").Replace(s) }
