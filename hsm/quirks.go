package hsm

import (
	"strings"
	"sync"
)

// Quirk is one way a token departs from the PKCS#11 specification, or from
// what other tokens do, and what this package does about it.
type Quirk struct {
	Name     string `json:"name"`
	Handling string `json:"handling"`
}

// The quirks of the token implementations hsmkms is tested on, known by the
// manufacturer the token reports. Handlings that cost nothing elsewhere
// (one-call C_Encrypt, chunked C_GenerateRandom, pairwise-consistent
// key-pair templates, recovery whatever error comes first) apply to every
// token; the list says which token they are for.
var knownQuirks = map[string][]Quirk{
	"SoftHSM": {
		{"gcm_tag_mismatch_general_error", "a GCM tag that does not verify is answered with CKR_GENERAL_ERROR; taken as a bad ciphertext only on this token and only while the session still answers"},
		{"lenient_gcm_parameters", "empty IVs, short tags and 16-byte IVs are accepted; the plugin makes every IV (96 bits), fixes the tag at 128 bits and checks every length itself"},
		{"concurrent_key_creation", "races when keys are created concurrently; object creation is serialised per token"},
	},
	"Mozilla Foundation": {
		{"gcm_encrypt_size_query", "answers C_Encrypt's size query for AES-GCM too small and then ends the operation; the plugin calls C_Encrypt once with room for the tag"},
		{"random_64k_per_call", "C_GenerateRandom gives at most 64 KiB a call; larger requests are drawn in chunks"},
		{"pairwise_consistency", "refuses a key pair whose public half cannot verify (or encrypt) what the private half signs (or decrypts); public halves carry the matching usage, and the plugin enforces each key's operations itself"},
		{"finalize_error_order", "after C_Finalize behind the client's back answers CKR_SESSION_HANDLE_INVALID, then CKR_SLOT_ID_INVALID; either leads to one re-initialisation and one retry"},
		{"key_wrap_pad_constant", "its 0x210A mechanism is not RFC 5649 key wrap with padding"},
	},
}

// GCM IV behaviours observed on a token.
const (
	gcmIVCaller   = "caller"   // the token used the IV it was given
	gcmIVWritten  = "written"  // the token wrote its own IV into CK_GCM_PARAMS (AWS CloudHSM)
	gcmIVAppended = "appended" // the token appended its own IV to the output (Luna, ProtectServer in FIPS mode)
)

// tokenQuirks are what one token was found to do: by its identity, by the
// RSA-OAEP probe and by what its AES-GCM did.
type tokenQuirks struct {
	mu           sync.Mutex
	manufacturer string
	known        []Quirk
	gcmIV        string   // "" until an encryption was seen
	oaep         OAEPMode // "" until a probe succeeded
}

// identify records the token's known quirks from its manufacturer, once.
func (q *tokenQuirks) identify(c *Client) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.manufacturer != "" {
		return nil
	}
	info, err := c.TokenInfo()
	if err != nil {
		return err
	}
	q.manufacturer = info.Manufacturer
	for prefix, quirks := range knownQuirks {
		if strings.HasPrefix(info.Manufacturer, prefix) {
			q.known = quirks
		}
	}
	return nil
}

func (q *tokenQuirks) has(name string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, k := range q.known {
		if k.Name == name {
			return true
		}
	}
	return false
}

func (q *tokenQuirks) noteGCMIV(mode string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.gcmIV == "" || mode != gcmIVCaller {
		q.gcmIV = mode
	}
}

// Quirks lists the quirks in force for the client's token: those known for
// its implementation and those observed (the GCM IV behaviour, the RSA-OAEP
// probe's result).
func (c *Client) Quirks() []Quirk {
	q := &c.token.quirks
	q.mu.Lock()
	defer q.mu.Unlock()
	out := append([]Quirk(nil), q.known...)
	if q.oaep == OAEPRawUnpad {
		out = append(out, Quirk{"oaep_sha256_unavailable", "CKM_RSA_PKCS_OAEP does not take SHA-256 (SoftHSM 2.6 has SHA-1 only); RSA-OAEP-SHA-256 is decrypted with CKM_RSA_X_509 and the padding removed by the plugin in constant time"})
	}
	switch q.gcmIV {
	case gcmIVWritten:
		out = append(out, Quirk{"gcm_token_iv", "writes its own AES-GCM IV into CK_GCM_PARAMS; the IV it used is read back and put in the ciphertext"})
	case gcmIVAppended:
		out = append(out, Quirk{"gcm_appended_iv", "appends its own AES-GCM IV to the output; it is taken from there and put in the ciphertext"})
	}
	return out
}
