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
// (one-call C_Encrypt and C_Decrypt, chunked C_GenerateRandom,
// pairwise-consistent key-pair templates, recovery whatever error comes
// first) apply to every token; the list says which token they are for.
var knownQuirks = map[string][]Quirk{
	"SoftHSM": {
		{"gcm_tag_mismatch_general_error", "a GCM tag that does not verify is answered with CKR_GENERAL_ERROR; taken as a bad ciphertext only on this token and only while the session still answers"},
		{"lenient_gcm_parameters", "empty IVs, short tags and 16-byte IVs are accepted; the plugin makes every IV (96 bits), fixes the tag at 128 bits and checks every length itself"},
		{"concurrent_key_creation", "races when keys are created concurrently; object creation is serialised per token"},
		{"unwrap_parse_failure_function_failed", "answers wrapped bytes that do not parse as the key type asked for with CKR_FUNCTION_FAILED; taken as the caller's input (a 400) on this token and only while the session still answers"},
	},
	"Mozilla Foundation": {
		{"gcm_encrypt_size_query", "answers C_Encrypt's size query for AES-GCM too small and then ends the operation, and ends an AES-GCM C_Decrypt given too small a buffer; the plugin calls each once, C_Encrypt with room for the tag, C_Decrypt with the ciphertext's size"},
		{"random_64k_per_call", "C_GenerateRandom gives at most 64 KiB a call; larger requests are drawn in chunks"},
		{"pairwise_consistency", "refuses a key pair whose public half cannot verify (or encrypt) what the private half signs (or decrypts); public halves carry the matching usage, and the plugin enforces each key's operations itself"},
		{"finalize_error_order", "after C_Finalize behind the client's back answers CKR_SESSION_HANDLE_INVALID, then CKR_SLOT_ID_INVALID; either leads to one re-initialisation and one retry"},
		{"key_wrap_pad_constant", "its 0x210A mechanism is not RFC 5649 key wrap with padding"},
		{"ec_unwrap_needs_public_value", "refuses to unwrap an EC private key into the token without its vendor attribute CKA_NSS_DB; the plugin gives the public point when it has it, otherwise a stand-in (the plugin finds keys by CKA_ID)"},
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
	kwp          uint     // the RFC 5649 mechanism; 0 until a probe found it
	seen         []Quirk  // departures observed at run time
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

var observableQuirks = map[string]string{
	"unwrap_attributes_read_only": "answers CKR_ATTRIBUTE_READ_ONLY to CKA_MODIFIABLE and CKA_VALUE_LEN in C_UnwrapKey (SoftHSM 2.6.1 takes them at generation only); imported keys are unwrapped without them and stay unmodifiable in what matters: PKCS#11 never lets CKA_SENSITIVE be cleared or CKA_EXTRACTABLE be set",
	"unwrap_value_len_unset":      "leaves CKA_VALUE_LEN at 0 on an unwrapped secret key, so the length of a key imported by BYOK cannot be checked in the token; a JWK's length is checked by the plugin before import",
}

// observe records a quirk seen at run time, once.
func (q *tokenQuirks) observe(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range q.seen {
		if s.Name == name {
			return
		}
	}
	q.seen = append(q.seen, Quirk{name, observableQuirks[name]})
}

func (q *tokenQuirks) observed(name string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range q.seen {
		if s.Name == name {
			return true
		}
	}
	return false
}

// Quirks lists the quirks in force for the client's token: those known for
// its implementation and those observed (the GCM IV behaviour, the RSA-OAEP
// probe's result).
func (c *Client) Quirks() []Quirk {
	q := &c.token.quirks
	q.mu.Lock()
	defer q.mu.Unlock()
	out := append(append([]Quirk(nil), q.known...), q.seen...)
	if q.oaep == OAEPRawUnpad {
		out = append(out, Quirk{"oaep_sha256_unavailable", "CKM_RSA_PKCS_OAEP does not take SHA-256 (SoftHSM 2.6 has SHA-1 only); RSA-OAEP-SHA-256 is decrypted with CKM_RSA_X_509 and the padding removed by the plugin in constant time"})
	}
	if q.kwp == ckmAESKeyWrapKWP {
		out = append(out, Quirk{"key_wrap_kwp", "RFC 5649 key wrap is CKM_AES_KEY_WRAP_KWP (0x210B), found by unwrapping the RFC's test vector; imports use it"})
	} else if q.kwp == ckmAESKeyWrapPad {
		out = append(out, Quirk{"key_wrap_pad_is_rfc5649", "RFC 5649 key wrap is CKM_AES_KEY_WRAP_PAD (0x210A), found by unwrapping the RFC's test vector; imports use it"})
	}
	switch q.gcmIV {
	case gcmIVWritten:
		out = append(out, Quirk{"gcm_token_iv", "writes its own AES-GCM IV into CK_GCM_PARAMS; the IV it used is read back and put in the ciphertext"})
	case gcmIVAppended:
		out = append(out, Quirk{"gcm_appended_iv", "appends its own AES-GCM IV to the output; it is taken from there and put in the ciphertext"})
	}
	return out
}
