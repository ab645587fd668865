package hsmkms

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"maps"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
)

// Native fuzz targets for the parsers that see untrusted input first. Their
// seed corpora (f.Add and testdata/fuzz/) run in every `go test`; fuzz one
// with: go test -run '^$' -fuzz FuzzParseCiphertext -fuzztime 5m .

func FuzzParseCiphertext(f *testing.F) {
	for _, s := range []string{"vault:v1:AAAA", "vault:v0:AAAA", "vault:v-1:AAAA", "vault:v01:AAAA", "vault:v1:", "vault:v1:AAA",
		"vault:v99999999999999999999:AAAA", "vault::", "vault:v1:AAAA:extra", ":v1:AAAA", "vault:v2147483647:AA==", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		version, blob, msg := parseCiphertext(s)
		if msg != "" {
			if version != 0 || blob != nil {
				t.Fatalf("refused %q but returned %d, %x", s, version, blob)
			}
			return
		}
		if version < 1 || len(blob) == 0 {
			t.Fatalf("accepted %q as version %d, %d bytes", s, version, len(blob))
		}
		// What is accepted is what formatCiphertext writes (the base64
		// decoder skips line breaks, as Go's and Transit's do).
		if again := formatCiphertext(version, blob); again != stripLineBreaks(s) {
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
		version, sig, msg := parseSignature(s, jws)
		if msg != "" {
			return
		}
		if version < 1 || len(sig) == 0 {
			t.Fatalf("accepted %q (jws %v) as version %d, %d bytes", s, jws, version, len(sig))
		}
		if again := formatSignature(version, sig, jws); again != stripLineBreaks(s) {
			t.Fatalf("accepted %q, which formats back as %q", s, again)
		}
	})
}

// decodeAAD reads buildDomainAAD's output back; the canonical form is
// unambiguous when this recovers exactly what went in.
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
		for _, domain := range []string{aadDomain, dataKeyAADDomain} {
			aad := buildDomainAAD(domain, context, ad, ec)
			gotCtx, gotAD, gotEC := decodeAAD(t, domain, aad)
			if !bytes.Equal(gotCtx, context) || !bytes.Equal(gotAD, ad) || !maps.Equal(gotEC, ec) {
				t.Fatalf("AAD does not decode to its input: %q %q %v -> %q %q %v", context, ad, ec, gotCtx, gotAD, gotEC)
			}
		}
		if bytes.Equal(buildDomainAAD(aadDomain, context, ad, ec), buildDomainAAD(dataKeyAADDomain, context, ad, ec)) {
			t.Fatal("a data key's AAD equals an ordinary ciphertext's")
		}
	})
}

// FuzzBatchInput feeds arbitrary JSON as a request body to the batch
// reader: it must never panic, and what it accepts is within bounds.
func FuzzBatchInput(f *testing.F) {
	for _, s := range []string{
		`{"batch_input":[{"plaintext":"aGk="}]}`,
		`{"batch_input":[{"plaintext":["x"]}]}`,
		`{"batch_input":"nope"}`,
		`{"batch_input":[[{"plaintext":"aGk="}]]}`,
		`{"batch_input":[{"key_version":1e300,"encryption_context":{"a":1}}]}`,
		`{"batch_input":[]}`,
		`{"plaintext":"aGk=","key_version":-1,"encryption_context":{"k":"v"}}`,
		`{"batch_input":[{"reference":{"x":1},"ciphertext":"vault:v1:AA=="}]}`,
	} {
		f.Add([]byte(s))
	}
	schema := (&backend{}).pathEncrypt().Fields
	f.Fuzz(func(t *testing.T, body []byte) {
		var raw map[string]interface{}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&raw); err != nil || raw == nil {
			return
		}
		if checkFieldTypes(schema, raw) != "" {
			return // refused before the reader, as HandleRequest does
		}
		items, _, msg := readItems(&framework.FieldData{Raw: raw, Schema: schema}, encryptFields)
		if msg != "" {
			return
		}
		if len(items) == 0 || len(items) > maxBatchItems {
			t.Fatalf("accepted %d items", len(items))
		}
	})
}

func stripLineBreaks(s string) string { return strings.NewReplacer("\r", "", "\n", "").Replace(s) }
