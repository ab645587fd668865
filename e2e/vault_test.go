// Package e2e runs hsmkms inside a real Vault server, built by
// scripts/build-vault.sh, on real tokens of both implementations the project
// is tested on (SoftHSM2 and NSS softokn), and talks to it over HTTP with the
// vault CLI and the Go api client. The crypto suite also runs inside OpenBao,
// built by scripts/build-openbao.sh, with OpenBao's own CLI.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

const pluginName = "vault-plugin-secrets-hsmkms"

// pluginVersion is the version the tests' build of the plugin reports (a
// plain go build: version.go's default). Vault files a registration that
// names no version under the version the plugin reports, so reading the
// catalog entry back names it.
const pluginVersion = "v0.0.0-dev"

var (
	vaultBin string
	// baoBin is OpenBao's binary, found by the first test that needs it
	// (see onOpenBao), so that the tests on Vault alone need not wait for
	// OpenBao to be built.
	baoBin     string
	baoBinOnce sync.Once
	baoBinErr  error
	pluginDir  string
	pluginSHA  string
	// tokens holds two tokens of each kind, labelled "e2e" and "e2e-b"
	// (with tokentest.P11KitLabelSuffix for p11kit), made by one
	// tokentest.New call per kind so that they can be used together by one
	// plugin process (NSS's pair shares one InitArgs).
	tokens map[tokentest.Kind][]*tokentest.Token
	// libraryDirs is HSMKMS_LIBRARY_DIRS for the plugin: the directories of
	// every kind's module, as named and with symlinks resolved (for p11kit,
	// p11-kit-proxy.so's: the proxy loads SoftHSM2 itself).
	libraryDirs string
)

// eachToken runs f as a subtest on every token implementation, named after
// it ("softhsm2", "nss"), with that implementation's first token. The
// subtests run in parallel with each other (each has its own Vault and
// token), not with other tests: much of a Vault's start is waiting.
func eachToken(t *testing.T, f func(t *testing.T, tok *tokentest.Token)) {
	for _, kind := range tokentest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			f(t, tokens[kind][0])
		})
	}
}

// eachCryptoToken is eachToken on every kind of tokentest.KindsWithP11Kit:
// the crypto suite also runs on SoftHSM2 loaded by p11-kit-proxy.so, as a
// module registered system-wide is loaded ("p11kit").
func eachCryptoToken(t *testing.T, f func(t *testing.T, tok *tokentest.Token)) {
	for _, kind := range tokentest.KindsWithP11Kit {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			f(t, tokens[kind][0])
		})
	}
}

// softHSM is the SoftHSM2 token of the tests that run on one token only.
func softHSM() *tokentest.Token { return tokens[tokentest.SoftHSM2][0] }

// e2eEnv asks for the end-to-end tests. Without it they skip: they need a
// Vault and an OpenBao built from source (10-15 minutes each, once), which a
// plain `go test ./...` on a fresh clone must not start. `make test` and
// `make e2e` set it.
const e2eEnv = "HSMKMS_E2E"

func TestMain(m *testing.M) {
	if os.Getenv(e2eEnv) != "1" {
		// Only TestEndToEndSetUp runs, and it skips saying why, so that the
		// report counts a skip rather than a pass.
		flag.Parse()
		if err := flag.Set("test.run", "^TestEndToEndSetUp$"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		_ = flag.Set("test.skip", "")
		os.Exit(m.Run())
	}
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// TestEndToEndSetUp stands for every e2e test when HSMKMS_E2E is not set,
// and skips with the reason. When it is set, it checks what TestMain set up
// for the others: both servers' binaries, the plugin, tokens of each kind.
func TestEndToEndSetUp(t *testing.T) {
	if os.Getenv(e2eEnv) != "1" {
		t.Skipf("the e2e tests run only with %s=1 (make test and make e2e set it): they start a real Vault and "+
			"OpenBao, built from source by scripts/build-vault.sh and build-openbao.sh", e2eEnv)
	}
	if fi, err := os.Stat(vaultBin); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("Vault's binary %q: %v (mode %v)", vaultBin, err, fi)
	}
	bin, err := os.ReadFile(filepath.Join(pluginDir, pluginName))
	if sum := sha256.Sum256(bin); err != nil || hex.EncodeToString(sum[:]) != pluginSHA {
		t.Errorf("plugin %s: %v, or its SHA-256 is not %s", pluginName, err, pluginSHA)
	}
	for _, kind := range tokentest.Kinds {
		if len(tokens[kind]) != 2 {
			t.Errorf("%s: %d tokens, want 2", kind, len(tokens[kind]))
		}
	}
}

func setup(m *testing.M) (int, error) {
	vaultBin = os.Getenv("HSMKMS_VAULT_BIN")
	if vaultBin == "" {
		out, err := exec.Command("bash", "../scripts/build-vault.sh").Output()
		if err != nil {
			return 1, fmt.Errorf("no HSMKMS_VAULT_BIN and scripts/build-vault.sh failed: %w", err)
		}
		vaultBin = strings.TrimSpace(string(out))
	}
	work, err := os.MkdirTemp("", "hsmkms-e2e-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(work)

	pluginDir = filepath.Join(work, "plugins")
	build := exec.Command("go", "build", "-o", filepath.Join(pluginDir, pluginName), "../cmd/"+pluginName)
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		return 1, fmt.Errorf("building the plugin: %w: %s", err, out)
	}
	bin, err := os.ReadFile(filepath.Join(pluginDir, pluginName))
	if err != nil {
		return 1, err
	}
	sum := sha256.Sum256(bin)
	pluginSHA = hex.EncodeToString(sum[:])

	tokens = map[tokentest.Kind][]*tokentest.Token{}
	var dirs []string
	for _, kind := range tokentest.KindsWithP11Kit {
		made, err := tokentest.New(kind, tokentest.Dir(work, kind),
			tokentest.Spec{Label: "e2e", PIN: "e2e-pin-2468"}, tokentest.Spec{Label: "e2e-b", PIN: "e2e-pin-1357"})
		if err != nil {
			return 1, fmt.Errorf("making %s tokens: %w", kind, err)
		}
		tokens[kind] = made
		real, err := filepath.EvalSymlinks(made[0].Library)
		if err != nil {
			return 1, err
		}
		for _, d := range []string{filepath.Dir(real), filepath.Dir(made[0].Library)} {
			if !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		}
	}
	libraryDirs = strings.Join(dirs, ":")
	return m.Run(), nil
}

// flavour is the server a vaultServer runs: Vault, or OpenBao, the fork
// that the plugin must run in unchanged.
type flavour string

const (
	vaultFlavour   flavour = "vault"
	openBaoFlavour flavour = "openbao"
)

var (
	openBaoTestsMu sync.Mutex
	// openBaoTests are the names of the tests whose servers, and their
	// subtests' servers, are OpenBao (see onOpenBao).
	openBaoTests []string
)

// openBaoSuffix ends the name of every test that runs OpenBao, and only
// theirs: make test runs them as a part of their own once OpenBao is
// built, and the other e2e tests while it is still being built.
const openBaoSuffix = "OnOpenBao"

// onOpenBao makes the servers that startDevVault and startPersistentVault
// start for t and its subtests OpenBao dev servers, so that test bodies
// written for Vault run unchanged on OpenBao. It finds OpenBao's binary
// (HSMKMS_OPENBAO_BIN, or scripts/build-openbao.sh, which waits for a build
// in progress) the first time a test asks.
func onOpenBao(t *testing.T) {
	t.Helper()
	if top, _, _ := strings.Cut(t.Name(), "/"); !strings.HasSuffix(top, openBaoSuffix) {
		t.Fatalf("%s runs OpenBao, so its name must end in %q (scripts/test.sh picks OpenBao's tests by it)", top, openBaoSuffix)
	}
	baoBinOnce.Do(func() {
		if baoBin = os.Getenv("HSMKMS_OPENBAO_BIN"); baoBin != "" {
			return
		}
		out, err := exec.Command("bash", "../scripts/build-openbao.sh").Output()
		if err != nil {
			baoBinErr = fmt.Errorf("no HSMKMS_OPENBAO_BIN and scripts/build-openbao.sh failed: %w", err)
			return
		}
		baoBin = strings.TrimSpace(string(out))
	})
	if baoBinErr != nil {
		t.Fatal(baoBinErr)
	}
	openBaoTestsMu.Lock()
	defer openBaoTestsMu.Unlock()
	openBaoTests = append(openBaoTests, t.Name())
	t.Cleanup(func() {
		openBaoTestsMu.Lock()
		defer openBaoTestsMu.Unlock()
		openBaoTests = slices.DeleteFunc(openBaoTests, func(n string) bool { return n == t.Name() })
	})
}

// flavourFor is the server t runs on: OpenBao under a test marked with
// onOpenBao, else Vault.
func flavourFor(t *testing.T) flavour {
	openBaoTestsMu.Lock()
	defer openBaoTestsMu.Unlock()
	for _, n := range openBaoTests {
		if t.Name() == n || strings.HasPrefix(t.Name(), n+"/") {
			return openBaoFlavour
		}
	}
	return vaultFlavour
}

// vaultServer is one running Vault (or OpenBao) process.
type vaultServer struct {
	t       *testing.T
	flavour flavour          // "" is Vault, for servers made as struct literals
	tok     *tokentest.Token // the token configure uses
	addr    string
	cmd     *exec.Cmd
	logPath string
	token   string
	client  *api.Client
	dataDir string // persistent storage, "" in dev mode
	port    int
}

// givenPorts are the ports freePort handed out, and the ones above them
// that Vault's cluster listener takes: a port is free when asked for, not
// when the server binds it, so parallel tests must never be given the same
// one (a server would then answer for another's test).
var (
	givenPortsMu sync.Mutex
	givenPorts   = map[int]bool{}
)

func freePort(t *testing.T) int {
	t.Helper()
	givenPortsMu.Lock()
	defer givenPortsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// Vault's cluster listener takes the next port up.
		if !givenPorts[port] && !givenPorts[port+1] && !givenPorts[port-1] {
			givenPorts[port], givenPorts[port+1] = true, true
			return port
		}
	}
	t.Fatal("no port that was not handed out already")
	return 0
}

// startDevVault starts `vault server -dev` (`bao server -dev` under
// onOpenBao) with the plugin directory set, registers the plugin by SHA-256
// and mounts it at kms/; configure then points kms/ at tok.
func startDevVault(t *testing.T, tok *tokentest.Token) *vaultServer {
	t.Helper()
	return startDevServer(t, tok, flavourFor(t))
}

// startDevServer is startDevVault on the server of flavour f.
func startDevServer(t *testing.T, tok *tokentest.Token, f flavour) *vaultServer {
	t.Helper()
	v := &vaultServer{t: t, tok: tok, flavour: f, port: freePort(t), token: "e2e-root"}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vault.hcl")
	writeFile(t, cfg, fmt.Sprintf("plugin_directory = %q\n", pluginDir))
	// -dev-no-store-token: dev Vaults started at once (the token kinds'
	// subtests run in parallel, other runs may share HOME) would race on
	// ~/.vault-token; the tests pass the token explicitly anyway.
	v.start(dir, "server", "-dev", "-dev-no-store-token", "-dev-root-token-id="+v.token,
		fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", v.port), "-config="+cfg)
	v.registerAndMount("kms")
	return v
}

// startPersistentVault starts a Vault with file storage in dataDir,
// initialising it on first use, and unseals it.
func startPersistentVault(t *testing.T, tok *tokentest.Token, dataDir string, port int, unsealKey, rootToken string) (*vaultServer, string, string) {
	t.Helper()
	v := &vaultServer{t: t, tok: tok, flavour: flavourFor(t), port: port, dataDir: dataDir}
	cfg := filepath.Join(dataDir, "vault.hcl")
	writeFile(t, cfg, fmt.Sprintf(`
plugin_directory = %q
disable_mlock = true
api_addr = "http://127.0.0.1:%d"
storage "file" { path = %q }
listener "tcp" {
  address = "127.0.0.1:%d"
  tls_disable = true
}
`, pluginDir, port, filepath.Join(dataDir, "storage"), port))
	v.start(dataDir, "server", "-config="+cfg)
	if unsealKey == "" {
		out := v.cli("operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
		var init struct {
			Keys      []string `json:"unseal_keys_b64"`
			RootToken string   `json:"root_token"`
		}
		if err := json.Unmarshal([]byte(out), &init); err != nil {
			t.Fatalf("operator init: %v: %s", err, out)
		}
		unsealKey, rootToken = init.Keys[0], init.RootToken
	}
	v.cli("operator", "unseal", unsealKey)
	v.token = rootToken
	v.client.SetToken(rootToken)
	v.waitActive()
	return v, unsealKey, rootToken
}

// forTest is v as seen by t, a subtest of the test that started v: CLI and
// request failures end t. The process still belongs to the starter.
func (v *vaultServer) forTest(t *testing.T) *vaultServer {
	w := *v
	w.t = t
	return &w
}

func (v *vaultServer) start(dir string, args ...string) {
	t := v.t
	v.addr = fmt.Sprintf("http://127.0.0.1:%d", v.port)
	v.logPath = filepath.Join(dir, fmt.Sprintf("%s-%d.log", v.name(), time.Now().UnixNano()))
	logFile, err := os.Create(v.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(v.bin(), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// SoftHSM2 reads its configuration from the environment; NSS needs
	// nothing there (init_args in the mount's config is all of it).
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+v.softHSMConf(), "VAULT_ADDR="+v.addr)
	if v.flavour == openBaoFlavour {
		cmd.Env = append(cmd.Env, "BAO_ADDR="+v.addr)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v.cmd = cmd
	t.Cleanup(func() {
		v.stop()
		logFile.Close()
		if t.Failed() {
			log, _ := os.ReadFile(v.logPath)
			t.Logf("%s log (%s):\n%s", v.name(), v.logPath, tail(string(log), 6000))
		}
	})
	cfg := api.DefaultConfig()
	cfg.Address = v.addr
	cfg.MaxRetries = 0
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(v.token)
	v.client = client
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(v.addr + "/v1/sys/seal-status")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	log, _ := os.ReadFile(v.logPath)
	t.Fatalf("%s did not come up at %s:\n%s", v.name(), v.addr, tail(string(log), 4000))
}

// name is the server's kind as its logs and messages say it.
func (v *vaultServer) name() string {
	if v.flavour == openBaoFlavour {
		return "openbao"
	}
	return "vault"
}

// bin is the server's binary, which is also its CLI.
func (v *vaultServer) bin() string {
	if v.flavour == openBaoFlavour {
		return baoBin
	}
	return vaultBin
}

// clientEnv points the server's CLI at it. OpenBao's CLI reads BAO_*
// first and VAULT_* only when the BAO_ one is absent, so both are set: a
// BAO_ADDR in the tester's environment must not win. The format is set
// empty so that a VAULT_FORMAT or BAO_FORMAT there does not change output.
func (v *vaultServer) clientEnv() []string {
	env := []string{"VAULT_ADDR=" + v.addr, "VAULT_TOKEN=" + v.token, "VAULT_FORMAT="}
	if v.flavour == openBaoFlavour {
		env = append(env, "BAO_ADDR="+v.addr, "BAO_TOKEN="+v.token, "BAO_FORMAT=")
	}
	return env
}

// softHSMConf is the SOFTHSM2_CONF of the server and its plugin: its
// token's own (a private token from newPrivateSoftHSM), else the one every
// SoftHSM2 token of the package shares.
func (v *vaultServer) softHSMConf() string {
	if v.tok != nil && v.tok.Implementation() == tokentest.SoftHSM2 && v.tok.Conf != "" {
		return v.tok.Conf
	}
	return softHSM().Conf
}

// newPrivateSoftHSM makes a SoftHSM2 token of its own, in its own token
// directory and SOFTHSM2_CONF, for tests that take the token away or share
// it between Vault servers: no other test sees it. Unlike
// tokentest.NewSoftHSM it leaves this process's environment alone.
func newPrivateSoftHSM(t *testing.T, label, pin string) *tokentest.Token {
	t.Helper()
	dir := t.TempDir()
	tokensDir := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokensDir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	writeFile(t, conf, fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokensDir))
	tok := &tokentest.Token{Kind: tokentest.SoftHSM2, Dir: dir, Conf: conf, Library: softHSM().Library,
		Label: label, PIN: pin, SOPIN: pin + "-so"}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", tok.SOPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return tok
}

func (v *vaultServer) waitActive() {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := v.client.Sys().ListMounts(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	v.t.Fatalf("%s did not become active", v.name())
}

// stop ends the Vault process (and, through its process group, its plugins).
func (v *vaultServer) stop() {
	if v.cmd == nil || v.cmd.Process == nil {
		return
	}
	_ = v.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = v.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL) // stray plugin processes
	v.cmd = nil
}

// registerAndMount registers the plugin through the catalog API, which
// Vault and OpenBao share (OpenBao's `plugin register` has no -env flag),
// and mounts it at path.
func (v *vaultServer) registerAndMount(path string) {
	v.t.Helper()
	status, resp := v.raw("PUT", "sys/plugins/catalog/secret/hsmkms", v.token, map[string]interface{}{
		"sha256":  pluginSHA,
		"command": pluginName,
		"env":     []string{"HSMKMS_LIBRARY_DIRS=" + libraryDirs},
	})
	if status != http.StatusNoContent && status != http.StatusOK {
		v.t.Fatalf("registering the plugin in %s's catalog: %d %v", v.name(), status, resp)
	}
	v.cli("secrets", "enable", "-path="+path, "hsmkms")
}

// configure writes the mount's config for the server's token with its PIN,
// read by the CLI from a file so that it is not on a command line.
func (v *vaultServer) configure(mount string, extra ...string) {
	v.t.Helper()
	v.cli(v.configArgs(mount, v.tok, extra...)...)
}

// configArgs are the vault CLI arguments that write mount's config for tok:
// library, init_args (NSS: one argv element, spaces and quotes included),
// label and the PIN from a file.
func (v *vaultServer) configArgs(mount string, tok *tokentest.Token, extra ...string) []string {
	v.t.Helper()
	pinFile := filepath.Join(v.t.TempDir(), "pin")
	writeFile(v.t, pinFile, tok.PIN)
	args := []string{"write", mount + "/config", "library=" + tok.Library, "token_label=" + tok.Label, "pin=@" + pinFile}
	if tok.InitArgs != "" {
		args = append(args, "init_args="+tok.InitArgs)
	}
	return append(args, extra...)
}

// cli runs the server's CLI (vault or bao) against it and fails the test
// on error.
func (v *vaultServer) cli(args ...string) string {
	v.t.Helper()
	out, err := v.cliErr(args...)
	if err != nil {
		v.t.Fatalf("%s %s: %v\n%s", filepath.Base(v.bin()), strings.Join(args, " "), err, out)
	}
	return out
}

func (v *vaultServer) cliErr(args ...string) (string, error) {
	cmd := exec.Command(v.bin(), args...)
	cmd.Env = append(os.Environ(), v.clientEnv()...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// raw sends one HTTP request with a token and returns the status and the
// decoded body, so tests can see 4xx bodies that the api client hides.
func (v *vaultServer) raw(method, path, tok string, body interface{}) (int, map[string]interface{}) {
	v.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			v.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, v.addr+"/v1/"+path, rd)
	if err != nil {
		v.t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		v.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var decoded map[string]interface{}
	if len(raw) > 0 {
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if err := d.Decode(&decoded); err != nil {
			decoded = map[string]interface{}{"raw": string(raw)}
		}
	}
	return resp.StatusCode, decoded
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
