package wire

import (
	"bytes"
	"testing"
)

// The AAD is inside every stored ciphertext: these bytes are written out
// by hand, not by the code under test, so a change of encoding fails here
// (and in the compatibility fixtures at the root).
func TestAADBytesAreFixed(t *testing.T) {
	got := AAD(DomainAEAD, []byte("ctx"), []byte("ad"), map[string]string{"b": "2", "a": "1"})
	want := []byte("hsmkms.aead.v1" +
		"\x00\x00\x00\x03ctx" +
		"\x00\x00\x00\x02ad" +
		"\x00\x00\x00\x02" +
		"\x00\x00\x00\x01a\x00\x00\x00\x011" +
		"\x00\x00\x00\x01b\x00\x00\x00\x012")
	if !bytes.Equal(got, want) {
		t.Fatalf("AAD:\n got %q\nwant %q", got, want)
	}
	empty := AAD(DomainDataKey, nil, nil, nil)
	if want := []byte("hsmkms.datakey.v1" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"); !bytes.Equal(empty, want) {
		t.Fatalf("empty data key AAD: %q", empty)
	}
}

func TestAADIsUnambiguous(t *testing.T) {
	aad := func(context, ad []byte, ec map[string]string) []byte { return AAD(DomainAEAD, context, ad, ec) }
	if bytes.Equal(aad([]byte("ab"), []byte("c"), nil), aad([]byte("a"), []byte("bc"), nil)) {
		t.Fatal("moving a byte between context and associated data gives the same AAD")
	}
	if bytes.Equal(aad(nil, nil, map[string]string{"a": "b=c"}), aad(nil, nil, map[string]string{"a=b": "c"})) {
		t.Fatal("encryption context pairs collide")
	}
	if len(aad(nil, nil, nil)) == 0 {
		t.Fatal("empty AAD")
	}
	if !bytes.Equal(aad(nil, nil, map[string]string{"x": "1", "y": "2"}), aad(nil, nil, map[string]string{"y": "2", "x": "1"})) {
		t.Fatal("encryption context order matters")
	}
	if bytes.Equal(AAD(DomainAEAD, nil, nil, nil), AAD(DomainDataKey, nil, nil, nil)) {
		t.Fatal("a data key's AAD equals an ordinary ciphertext's")
	}
}
