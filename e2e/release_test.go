package e2e

import (
	"bufio"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// releaseVersion is the version the release test builds: one no other
// build reports, so that seeing it proves the -ldflags of the release.
const releaseVersion = "v9.9.9-test"

// releasePlatforms are the platforms make release builds, with the ELF
// machine each binary must be for.
var releasePlatforms = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// TestRelease checks make release's output as an operator receives it:
// scripts/release.sh (what make release runs) writes the plugin for each
// platform, its build info and SHA256SUMS; the checksums match the files,
// the build info names the version, and the binary for this machine,
// registered in a real Vault under that version, reports it and works.
func TestRelease(t *testing.T) {
	dist := t.TempDir()
	cmd := exec.Command("bash", "../scripts/release.sh", dist)
	cmd.Env = append(os.Environ(), "VERSION="+releaseVersion, "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/release.sh: %v\n%s", err, tail(string(out), 4000))
	}

	listed := checkSHA256SUMS(t, dist)
	for arch, machine := range releasePlatforms {
		bin := pluginName + "_" + releaseVersion + "_linux_" + arch
		for _, f := range []string{bin, bin + ".buildinfo"} {
			if !listed[f] {
				t.Errorf("SHA256SUMS does not list %s", f)
			}
		}
		checkBuildInfo(t, filepath.Join(dist, bin), arch)
		f, err := elf.Open(filepath.Join(dist, bin))
		if err != nil {
			t.Errorf("%s: %v", bin, err)
			continue
		}
		if f.Machine != machine {
			t.Errorf("%s is for %v, want %v", bin, f.Machine, machine)
		}
		f.Close()
	}
	if t.Failed() {
		return
	}
	checkReleaseInVault(t, filepath.Join(dist, pluginName+"_"+releaseVersion+"_linux_"+runtime.GOARCH))
}

// checkSHA256SUMS: every line's digest is its file's, and every file the
// release wrote is listed. Returns the names listed.
func checkSHA256SUMS(t *testing.T, dist string) map[string]bool {
	t.Helper()
	sums, err := os.Open(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer sums.Close()
	listed := map[string]bool{}
	sc := bufio.NewScanner(sums)
	for sc.Scan() {
		// sha256sum's format: the digest, two spaces, the name.
		digest, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not sha256sum's format", sc.Text())
		}
		listed[name] = true
		f, err := os.Open(filepath.Join(dist, name))
		if err != nil {
			t.Errorf("SHA256SUMS lists %s: %v", name, err)
			continue
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != digest {
			t.Errorf("%s: sha256 %s, SHA256SUMS says %s", name, got, digest)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "SHA256SUMS" && !listed[e.Name()] {
			t.Errorf("%s is in the release but not in SHA256SUMS", e.Name())
		}
	}
	return listed
}

// checkBuildInfo: the .buildinfo file beside the binary is `go version -m`
// of it, and says the version was set by -ldflags, for arch, with cgo.
func checkBuildInfo(t *testing.T, bin, arch string) {
	t.Helper()
	cmd := exec.Command("go", "version", "-m", filepath.Base(bin))
	cmd.Dir = filepath.Dir(bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m %s: %v\n%s", bin, err, out)
	}
	saved, err := os.ReadFile(bin + ".buildinfo")
	if err != nil {
		t.Fatal(err)
	}
	if string(saved) != string(out) {
		t.Errorf("%s.buildinfo is not go version -m's output:\n%s\nwant:\n%s", filepath.Base(bin), saved, out)
	}
	info := string(out)
	for _, want := range []string{
		"build\t-ldflags=\"-s -w -X github.com/hsmkms/vault-plugin-secrets-hsmkms.version=" + releaseVersion + "\"\n",
		"build\tGOARCH=" + arch + "\n",
		"build\tGOOS=linux\n",
		"build\tCGO_ENABLED=1\n",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("go version -m %s lacks %q:\n%s", filepath.Base(bin), want, info)
		}
	}
}

// checkReleaseInVault registers bin in a real Vault's catalog under
// releaseVersion, beside the tests' own build of the plugin: Vault asks the
// binary its version at registration and refuses a registration that names
// another one, then shows it on the mount; the mount encrypts and decrypts.
func checkReleaseInVault(t *testing.T, bin string) {
	v := startDevVault(t, softHSM())
	// The tests' own plugin (a plain go build) reports the default version.
	checkRunningVersion(t, v, "kms/", "v0.0.0-dev")

	name := filepath.Base(bin)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pluginDir, name), b, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(filepath.Join(pluginDir, name)) })
	sum := sha256.Sum256(b)
	entry := map[string]interface{}{
		"sha256":  hex.EncodeToString(sum[:]),
		"command": name,
		"env":     []string{"HSMKMS_LIBRARY_DIRS=" + libraryDirs},
	}

	entry["version"] = "v9.9.8"
	status, resp := v.raw("PUT", "sys/plugins/catalog/secret/hsmkms", v.token, entry)
	if status < 400 || !strings.Contains(errorsOf(resp), "did not match") {
		t.Errorf("registering the %s binary as v9.9.8: %d %v, want Vault's version mismatch", releaseVersion, status, resp)
	}
	entry["version"] = releaseVersion
	if status, resp := v.raw("PUT", "sys/plugins/catalog/secret/hsmkms", v.token, entry); status != http.StatusNoContent {
		t.Fatalf("registering the release as %s: %d %v", releaseVersion, status, resp)
	}
	info := v.cli("plugin", "info", "-format=json", "-version="+releaseVersion, "secret", "hsmkms")
	var catalog struct {
		Version string `json:"version"`
		Command string `json:"command"`
	}
	if err := json.Unmarshal([]byte(info), &catalog); err != nil {
		t.Fatalf("plugin info: %v: %s", err, info)
	}
	if catalog.Version != releaseVersion || catalog.Command != name {
		t.Errorf("plugin info: version %q command %q, want %s and %s: %s", catalog.Version, catalog.Command, releaseVersion, name, info)
	}

	v.cli("secrets", "enable", "-path=kms-release", "-plugin-version="+releaseVersion, "hsmkms")
	checkRunningVersion(t, v, "kms-release/", releaseVersion)
	v.configure("kms-release")
	v.cli("write", "kms-release/keys/k", "type=aes256-gcm96")
	ct := strings.TrimSpace(v.cli("write", "-field=ciphertext", "kms-release/encrypt/k", "plaintext="+b64("released")))
	if pt := strings.TrimSpace(v.cli("write", "-field=plaintext", "kms-release/decrypt/k", "ciphertext="+ct)); pt != b64("released") {
		t.Errorf("the release's mount decrypted %q, want %q", pt, b64("released"))
	}
}

// checkRunningVersion: `vault secrets list -detailed` (sys/mounts) shows
// the version the mount's plugin process reported.
func checkRunningVersion(t *testing.T, v *vaultServer, mount, want string) {
	t.Helper()
	out := v.cli("secrets", "list", "-detailed", "-format=json")
	var mounts map[string]struct {
		Type           string `json:"type"`
		RunningVersion string `json:"running_plugin_version"`
	}
	if err := json.Unmarshal([]byte(out), &mounts); err != nil {
		t.Fatalf("secrets list: %v: %s", err, out)
	}
	m, ok := mounts[mount]
	if !ok || m.Type != "hsmkms" || m.RunningVersion != want {
		t.Errorf("secrets list -detailed: %s is %+v (present %v), want hsmkms running %s", mount, m, ok, want)
	}
}

// errorsOf is the errors of a Vault error response, joined.
func errorsOf(resp map[string]interface{}) string {
	errs, _ := resp["errors"].([]interface{})
	var s []string
	for _, e := range errs {
		if m, ok := e.(string); ok {
			s = append(s, m)
		}
	}
	return strings.Join(s, "; ")
}
