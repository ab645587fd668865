package hsm

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// oneCall makes a single-part operation in one PKCS#11 call, with an
// output buffer of outCap bytes: the most the result can be, as the plugin
// knows it (the modulus, the curve, the tag, the hash). A length query
// first would cost a network HSM a second round trip on every request, and
// NSS answers it too small for AES-GCM encryption and ends the operation.
//
// Should the token still answer CKR_BUFFER_TOO_SMALL, the operation is
// active yet (PKCS#11 2.40, section 5.2): oneCall asks for the size and
// calls a third time. The size the token writes beside
// CKR_BUFFER_TOO_SMALL is not used: NSS softokn's C_Sign leaves it
// unset or writes garbage there. NSS ends an AES-GCM decryption given too
// small a buffer, so that one must be sized right the first time.
func oneCall(f func(outCap int) ([]byte, error), outCap int) ([]byte, error) {
	out, err := f(outCap)
	if code, ok := pkcs11Code(err); !ok || code != pkcs11.CKR_BUFFER_TOO_SMALL {
		return out, err
	}
	_, err = f(0)
	var size *ResultSizeError
	if !errors.As(err, &size) {
		return nil, fmt.Errorf("asking the result's size after a %d-byte buffer was too small: %w", outCap, err)
	}
	if size.Size <= outCap || size.Size > 2*outCap+1024 {
		return nil, fmt.Errorf("the token wants a %d-byte buffer for a result of at most %d bytes", size.Size, outCap)
	}
	return f(size.Size)
}
