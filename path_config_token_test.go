package hsmkms

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/faulttoken"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// nssMount is a mount allowed to load NSS softokn, configured on nssToken.
func nssMount(t *testing.T) *testMount {
	t.Helper()
	real, err := filepath.EvalSymlinks(nssToken.Library)
	if err != nil {
		t.Fatal(err)
	}
	m := newMountWithAllowList(t, []string{filepath.Dir(real), filepath.Dir(nssToken.Library)})
	m.mustOK(logical.UpdateOperation, "config", nssConfig(nssToken.InitArgs))
	return m
}

func nssConfig(initArgs string) map[string]interface{} {
	return map[string]interface{}{
		"library": nssToken.Library, "init_args": initArgs, "token_label": nssToken.Label, "pin": nssToken.PIN,
	}
}

func quirkNames(t *testing.T, resp *logical.Response) []string {
	t.Helper()
	quirks, ok := resp.Data["quirks"].([]hsm.Quirk)
	if !ok {
		t.Fatalf("config read has no quirks: %#v", resp.Data["quirks"])
	}
	var names []string
	for _, q := range quirks {
		names = append(names, q.Name)
	}
	return names
}

// GET config lists the quirks in force for each token implementation, and
// the way RSA-OAEP is done there.
func TestConfigShowsTheTokensQuirks(t *testing.T) {
	for _, tc := range []struct {
		kind   tokentest.Kind
		mount  func(t *testing.T) *testMount
		quirks []string
		oaep   hsm.OAEPMode
	}{
		{tokentest.SoftHSM2, func(t *testing.T) *testMount { return configuredMount(t, nil) },
			[]string{"gcm_tag_mismatch_general_error", "oaep_sha256_unavailable"}, hsm.OAEPRawUnpad},
		{tokentest.NSS, nssMount, []string{"gcm_encrypt_size_query", "random_64k_per_call", "pairwise_consistency"}, hsm.OAEPInToken},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			m := tc.mount(t)
			resp := m.mustOK(logical.ReadOperation, "config", nil)
			names := strings.Join(quirkNames(t, resp), ",")
			for _, q := range tc.quirks {
				if !strings.Contains(names, q) {
					t.Errorf("quirk %s missing from %s", q, names)
				}
			}
			if got := resp.Data["mechanisms"].(map[string]string)["rsa_decrypt_oaep"]; got != string(tc.oaep) {
				t.Errorf("rsa_decrypt_oaep %q, want %q", got, tc.oaep)
			}
		})
	}
}

// The whole key life on NSS through the backend: every key type, and the
// operations that differ from SoftHSM (in-token OAEP, GCM in one call,
// random of 1 MiB).
func TestBackendOnNSS(t *testing.T) {
	m := nssMount(t)
	for _, typ := range []string{"aes128-gcm96", "aes256-gcm96", "rsa-2048", "ecdsa-p256", "hmac"} {
		m.mustOK(logical.UpdateOperation, "keys/nss-"+typ, map[string]interface{}{"type": typ})
	}
	ct := m.mustOK(logical.UpdateOperation, "encrypt/nss-aes256-gcm96", map[string]interface{}{"plaintext": "aGVsbG8="}).Data["ciphertext"]
	pt := m.mustOK(logical.UpdateOperation, "decrypt/nss-aes256-gcm96", map[string]interface{}{"ciphertext": ct}).Data["plaintext"]
	if pt != "aGVsbG8=" {
		t.Fatalf("AES round trip on NSS: %v", pt)
	}
	sig := m.mustOK(logical.UpdateOperation, "sign/nss-ecdsa-p256", map[string]interface{}{"input": "aGVsbG8="}).Data["signature"]
	valid := m.mustOK(logical.UpdateOperation, "verify/nss-ecdsa-p256", map[string]interface{}{"input": "aGVsbG8=", "signature": sig}).Data["valid"]
	if valid != true {
		t.Fatalf("ECDSA on NSS: valid=%v", valid)
	}
	random := m.mustOK(logical.UpdateOperation, "random/1048576", map[string]interface{}{"format": "hex"}).Data["random_bytes"].(string)
	if len(random) != 2<<20 {
		t.Fatalf("random/1048576 gave %d hex characters", len(random))
	}
}

// A token whose AES-GCM fails the self-test (here one that uses an IV of
// its own and reports none) is refused with a 400, and the previous config
// stays in force.
func TestConfigRefusesATokenWhoseGCMFailsTheSelfTest(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"pool_size": 3})
	ct := m.mustOK(logical.UpdateOperation, "encrypt/default", map[string]interface{}{"plaintext": "aGVsbG8="}).Data["ciphertext"]

	ft := faulttoken.New(nil)
	ft.SetIVMode(faulttoken.IVIgnored)
	m.b.intercept = ft.Intercept
	m.mustFail(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN, "pool_size": 5,
	}, "AES-GCM")
	if ft.Calls("C_Encrypt") == 0 {
		t.Fatal("the self-test never reached the faulty token")
	}
	m.b.intercept = nil

	if got := m.mustOK(logical.ReadOperation, "config", nil).Data["pool_size"]; got != 3 {
		t.Fatalf("pool_size after the refused write: %v, want the previous 3", got)
	}
	pt := m.mustOK(logical.UpdateOperation, "decrypt/default", map[string]interface{}{"ciphertext": ct}).Data["plaintext"]
	if pt != "aGVsbG8=" {
		t.Fatalf("decrypt after the refused write: %v", pt)
	}
}

// One plugin process loads a module once: a second mount naming the same
// library with other init_args is refused with a 400 that says why.
func TestSecondMountWithOtherInitArgsIsRefused(t *testing.T) {
	first := nssMount(t)
	first.mustOK(logical.ReadOperation, "config", nil)
	second := newMountWithAllowList(t, first.b.allowedLibraryDirs)
	second.mustFail(logical.UpdateOperation, "config", nssConfig(nssToken.InitArgs+" "), "init_args")
	second.mustOK(logical.UpdateOperation, "config", nssConfig(nssToken.InitArgs))
}
