package hsm

import (
	"crypto/subtle"
	"hash"
)

// UnpadOAEP removes EME-OAEP padding (RFC 8017, section 7.1.2, step 3) from
// em, the k-byte result of a raw RSA decryption, with MGF1 over h and the
// given label. Every check runs in constant time and all failures look the
// same, so the caller learns nothing that would help a padding oracle.
func UnpadOAEP(h hash.Hash, em, label []byte) ([]byte, error) {
	hLen := h.Size()
	k := len(em)
	if k < 2*hLen+2 {
		return nil, errOAEP
	}
	h.Reset()
	h.Write(label)
	lHash := h.Sum(nil)

	work := append([]byte(nil), em...)
	firstByteZero := subtle.ConstantTimeByteEq(work[0], 0)
	seed := work[1 : 1+hLen]
	db := work[1+hLen:]
	mgf1XOR(seed, h, db)
	mgf1XOR(db, h, seed)

	lHashOK := subtle.ConstantTimeCompare(lHash, db[:hLen])

	// After lHash: zero or more 0x00, one 0x01, then the message.
	rest := db[hLen:]
	searching := 1
	separator := 0
	bad := 0
	for i, b := range rest {
		isZero := subtle.ConstantTimeByteEq(b, 0)
		isOne := subtle.ConstantTimeByteEq(b, 1)
		separator = subtle.ConstantTimeSelect(searching&isOne, i, separator)
		searching = subtle.ConstantTimeSelect(isOne, 0, searching)
		bad = subtle.ConstantTimeSelect(searching&^isZero, 1, bad)
	}
	if firstByteZero&lHashOK&^bad&^searching != 1 {
		return nil, errOAEP
	}
	return append([]byte(nil), rest[separator+1:]...), nil
}

// mgf1XOR XORs out with MGF1(seed) over h.
func mgf1XOR(out []byte, h hash.Hash, seed []byte) {
	var counter [4]byte
	var block []byte
	done := 0
	for done < len(out) {
		h.Reset()
		h.Write(seed)
		h.Write(counter[:])
		block = h.Sum(block[:0])
		for i := 0; i < len(block) && done < len(out); i++ {
			out[done] ^= block[i]
			done++
		}
		for i := 3; i >= 0; i-- {
			counter[i]++
			if counter[i] != 0 {
				break
			}
		}
	}
}
