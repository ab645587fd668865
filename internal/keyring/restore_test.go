package keyring

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"testing"
)

// A backed-up version's public key must be of the key's type, and a secret
// key has none: each refusal is the caller's, and says which version.
func TestRestoredEntryChecksEachPublicKey(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der := func(pub interface{}) []byte {
		b, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		typ, op string
		public  []byte
		want    string
	}{
		{"rsa-2048", OpSign, der(&rsaKey.PublicKey), ""},
		{"rsa-2048", OpSign, der(&ecKey.PublicKey), "version 1: its public key is not a rsa-2048 key"},
		{"rsa-2048", OpSign, []byte("not DER"), "version 1: its public key does not parse"},
		{"ecdsa-p256", OpSign, der(&ecKey.PublicKey), ""},
		{"aes256-gcm96", OpEncrypt, der(&ecKey.PublicKey), "version 1: a secret key with a public key"},
	} {
		in := &Entry{
			Type: tc.typ, Residency: ResidencyWrapped, State: StateActive, Operations: []string{tc.op},
			LatestVersion: 1, MinDecryptionVersion: 1,
			Versions: map[int]*Version{1: {Blob: []byte{1}, PublicKey: tc.public}},
		}
		_, err := RestoredEntry("k", in)
		var ue *UserError
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.typ, err)
		case tc.want != "" && (!errors.As(err, &ue) || err.Error() != tc.want):
			t.Errorf("%s: %v, want the user error %q", tc.typ, err, tc.want)
		}
	}
}
