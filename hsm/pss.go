package hsm

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
)

// encodePSS is EMSA-PSS-ENCODE (RFC 8017, section 9.1.1) with MGF1 over
// the same hash, for tokens whose CKM_RSA_PKCS_PSS lacks the hash: the
// result is signed with CKM_RSA_X_509. Only public values and a random
// salt go into it; the caller verifies the signature before returning it.
func encodePSS(pub *rsa.PublicKey, hash crypto.Hash, digest []byte, saltLen int) ([]byte, error) {
	h := hash.New()
	hLen := h.Size()
	emBits := pub.N.BitLen() - 1
	emLen := (emBits + 7) / 8
	if len(digest) != hLen || emLen < hLen+saltLen+2 {
		return nil, inputErrorf("PSS with a %d-byte salt does not fit this key and hash", saltLen)
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("drawing a PSS salt: %w", err)
	}
	h.Write(make([]byte, 8))
	h.Write(digest)
	h.Write(salt)
	mPrime := h.Sum(nil)

	em := make([]byte, emLen)
	db := em[:emLen-hLen-1]
	db[emLen-saltLen-hLen-2] = 0x01
	copy(db[emLen-saltLen-hLen-1:], salt)
	mgf1XOR(db, hash.New(), mPrime)
	db[0] &= 0xff >> (8*emLen - emBits)
	copy(em[emLen-hLen-1:], mPrime)
	em[emLen-1] = 0xbc
	if k := pub.Size(); emLen < k {
		em = append(make([]byte, k-emLen), em...)
	}
	return em, nil
}
