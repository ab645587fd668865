package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// The seeds' access model (OVH, Cosmian): a client authenticates with a TLS
// client certificate and then uses kms/ under a policy that allows one key.
// Vault does it with its cert auth method on a TLS listener; the CA, the
// server's and the clients' certificates are made here. OpenBao has the
// same method, and the recipe must work there too.
func TestClientCertificateUsesOneKey(t *testing.T) {
	testClientCertificateUsesOneKey(t)
}

// TestClientCertificateUsesOneKeyOnOpenBao is the same recipe on OpenBao.
func TestClientCertificateUsesOneKeyOnOpenBao(t *testing.T) {
	onOpenBao(t)
	testClientCertificateUsesOneKey(t)
}

func testClientCertificateUsesOneKey(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "hsmkms e2e CA")
	serverCert, serverKey := ca.issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.issue(t, "app1-client", x509.ExtKeyUsageClientAuth)
	// A certificate from a CA that Vault does not trust must get no token.
	stranger := newTestCA(t, "stranger CA")
	strangerCert, strangerKey := stranger.issue(t, "app1-client", x509.ExtKeyUsageClientAuth)
	for name, body := range map[string]string{
		"ca.pem": ca.pem, "server.pem": serverCert, "server-key.pem": serverKey,
		"client.pem": clientCert, "client-key.pem": clientKey,
		"stranger.pem": strangerCert, "stranger-key.pem": strangerKey,
	} {
		writeFile(t, filepath.Join(dir, name), body)
	}

	tlsPort := freePort(t)
	v := startDevVaultWithTLS(t, dir, tlsPort)
	// The test on OpenBao must not be Vault passing a second time.
	wantVersion := map[flavour]string{vaultFlavour: "1.21.0", openBaoFlavour: "2.4.0"}[flavourFor(t)]
	if status, resp := v.raw("GET", "sys/seal-status", "", nil); status != http.StatusOK || resp["version"] != wantVersion {
		t.Fatalf("%s seal-status: %d %v, want version %s", v.name(), status, resp, wantVersion)
	}
	v.configure("kms")
	v.cli("write", "kms/keys/app1", "type=aes256-gcm96")
	v.cli("write", "kms/keys/app2", "type=aes256-gcm96")
	writeFile(t, filepath.Join(dir, "app1.hcl"), `
path "kms/encrypt/app1" { capabilities = ["update"] }
path "kms/decrypt/app1" { capabilities = ["update"] }
`)
	v.cli("policy", "write", "kms-app1", filepath.Join(dir, "app1.hcl"))
	v.cli("auth", "enable", "cert")
	v.cli("write", "auth/cert/certs/app1", "certificate=@"+filepath.Join(dir, "ca.pem"),
		"allowed_common_names=app1-client", "token_policies=kms-app1", "token_ttl=10m")

	tlsAddr := fmt.Sprintf("https://127.0.0.1:%d", tlsPort)
	app := certClient(t, tlsAddr, dir, "client.pem", "client-key.pem")
	login, err := app.Logical().Write("auth/cert/login", map[string]interface{}{"name": "app1"})
	if err != nil || login == nil || login.Auth == nil {
		t.Fatalf("cert login: %v %v", err, login)
	}
	if pols := fmt.Sprint(login.Auth.TokenPolicies); pols != "[default kms-app1]" {
		t.Fatalf("token policies %s, want [default kms-app1]", pols)
	}
	app.SetToken(login.Auth.ClientToken)

	secret, err := app.Logical().Write("kms/encrypt/app1", map[string]interface{}{"plaintext": b64("tenant secret")})
	if err != nil {
		t.Fatalf("encrypt with app1 as the certificate's token: %v", err)
	}
	ct := secret.Data["ciphertext"]
	secret, err = app.Logical().Write("kms/decrypt/app1", map[string]interface{}{"ciphertext": ct})
	if err != nil || secret.Data["plaintext"] != b64("tenant secret") {
		t.Fatalf("decrypt with app1: %v %v", err, secret)
	}

	ct2, err := v.client.Logical().Write("kms/encrypt/app2", map[string]interface{}{"plaintext": b64("other tenant")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		op, path string
		body     map[string]interface{}
	}{
		{"write", "kms/encrypt/app2", map[string]interface{}{"plaintext": b64("x")}},
		{"write", "kms/decrypt/app2", map[string]interface{}{"ciphertext": ct2.Data["ciphertext"]}},
		{"list", "kms/keys/", nil},
		{"read", "kms/keys/app1", nil},
		{"write", "kms/keys/app3", map[string]interface{}{"type": "aes256-gcm96"}},
		{"write", "kms/keys/app1/rotate", nil},
		{"read", "kms/config", nil},
	} {
		var err error
		switch tc.op {
		case "write":
			_, err = app.Logical().Write(tc.path, tc.body)
		case "list":
			_, err = app.Logical().List(tc.path)
		case "read":
			_, err = app.Logical().Read(tc.path)
		}
		if status := statusOf(err); status != http.StatusForbidden {
			t.Errorf("%s %s as app1: %d (%v), want 403", tc.op, tc.path, status, err)
		}
	}
	if status, _ := v.raw("GET", "kms/keys/app3", v.token, nil); status != http.StatusNotFound {
		t.Errorf("the refused create made app3 (%d)", status)
	}

	// The README recipe's commands: the server's CLI with the client's
	// certificate, over TLS. -no-store: ~/.vault-token may be shared with
	// other runs.
	cliToken := strings.TrimSpace(tlsCLI(t, v, tlsAddr, dir, "", "login", "-method=cert", "-no-store", "-token-only",
		"-client-cert="+filepath.Join(dir, "client.pem"), "-client-key="+filepath.Join(dir, "client-key.pem"), "name=app1"))
	ct3 := strings.TrimSpace(tlsCLI(t, v, tlsAddr, dir, cliToken, "write", "-field=ciphertext", "kms/encrypt/app1", "plaintext="+b64("from the CLI")))
	if pt := strings.TrimSpace(tlsCLI(t, v, tlsAddr, dir, cliToken, "write", "-field=plaintext", "kms/decrypt/app1", "ciphertext="+ct3)); pt != b64("from the CLI") {
		t.Errorf("CLI decrypt with app1: %q", pt)
	}
	if out, err := tlsCLIErr(v, tlsAddr, dir, cliToken, "write", "kms/encrypt/app2", "plaintext="+b64("x")); err == nil || !strings.Contains(out, "Code: 403") {
		t.Errorf("CLI encrypt with app2: %v\n%s\nwant a 403", err, out)
	}

	// The stranger's certificate (same common name, untrusted CA) and no
	// certificate at all get no token.
	for name, c := range map[string]*api.Client{
		"untrusted CA":   certClient(t, tlsAddr, dir, "stranger.pem", "stranger-key.pem"),
		"no certificate": certClient(t, tlsAddr, dir, "", ""),
	} {
		login, err := c.Logical().Write("auth/cert/login", map[string]interface{}{"name": "app1"})
		if err == nil || (login != nil && login.Auth != nil) {
			t.Errorf("login with %s: %v %v, want a refusal", name, login, err)
		}
		if status := statusOf(err); status < 400 || status >= 500 {
			t.Errorf("login with %s: status %d (%v), want a 4xx", name, status, err)
		}
	}
}

// startDevVaultWithTLS is startDevVault (Vault, or OpenBao under
// onOpenBao) plus a TLS listener on tlsPort with
// dir's server.pem and server-key.pem. The dev listener stays plain HTTP,
// so that the harness's helpers (cli, raw, configure) work unchanged.
func startDevVaultWithTLS(t *testing.T, dir string, tlsPort int) *vaultServer {
	t.Helper()
	v := &vaultServer{t: t, tok: softHSM(), flavour: flavourFor(t), port: freePort(t), token: "e2e-root"}
	cfg := filepath.Join(dir, "vault.hcl")
	writeFile(t, cfg, fmt.Sprintf(`
plugin_directory = %q
listener "tcp" {
  address       = "127.0.0.1:%d"
  tls_cert_file = %q
  tls_key_file  = %q
}
`, pluginDir, tlsPort, filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")))
	v.start(dir, "server", "-dev", "-dev-no-store-token", "-dev-root-token-id="+v.token,
		fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", v.port), "-config="+cfg)
	v.registerAndMount("kms")
	return v
}

// tlsCLI runs the server's CLI (vault or bao) against the TLS listener as a client would:
// trusting dir's ca.pem, presenting dir's client.pem, with token (none if
// ""); it fails the test on error.
func tlsCLI(t *testing.T, v *vaultServer, addr, dir, token string, args ...string) string {
	t.Helper()
	out, err := tlsCLIErr(v, addr, dir, token, args...)
	if err != nil {
		t.Fatalf("vault %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// tlsCLIErr is tlsCLI returning the error. The variables are set in both
// spellings: OpenBao's CLI prefers a BAO_ one from the tester's
// environment to a VAULT_ one.
func tlsCLIErr(v *vaultServer, addr, dir, token string, args ...string) (string, error) {
	cmd := exec.Command(v.bin(), args...)
	cmd.Env = os.Environ()
	for _, prefix := range []string{"VAULT_", "BAO_"} {
		cmd.Env = append(cmd.Env, prefix+"ADDR="+addr, prefix+"TOKEN="+token, prefix+"FORMAT=",
			prefix+"CACERT="+filepath.Join(dir, "ca.pem"),
			prefix+"CLIENT_CERT="+filepath.Join(dir, "client.pem"), prefix+"CLIENT_KEY="+filepath.Join(dir, "client-key.pem"))
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// certClient is a Go api client for the TLS listener that trusts dir's
// ca.pem and presents the named client certificate ("" for none).
func certClient(t *testing.T, addr, dir, cert, key string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.MaxRetries = 0
	tlsCfg := &api.TLSConfig{CACert: filepath.Join(dir, "ca.pem")}
	if cert != "" {
		tlsCfg.ClientCert, tlsCfg.ClientKey = filepath.Join(dir, cert), filepath.Join(dir, key)
	}
	if err := cfg.ConfigureTLS(tlsCfg); err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.ClearToken()
	return c
}

// statusOf is the HTTP status of an api client error, 0 if it has none.
func statusOf(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// issue makes a leaf certificate and its PKCS#8 key, both PEM. A name that
// is an IP address goes in the IP SANs (the server's), else it is the
// common name and a DNS SAN.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}
