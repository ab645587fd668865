package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// The real Transit clients: terraform-provider-vault 5.9.0 through OpenTofu,
// both built from the module proxy by scripts/build-tf-provider.sh and
// scripts/build-tofu.sh (cached like Vault). HSMKMS_TOFU_BIN and
// HSMKMS_TF_MIRROR name prebuilt ones, so that `make test` can build them
// before the clock of `go test` starts.
var (
	tfOnce   sync.Once
	tfTofu   string
	tfMirror string
	tfErr    error
)

func terraformTools(t *testing.T) (tofu, mirror string) {
	t.Helper()
	tfOnce.Do(func() {
		tfTofu, tfErr = tfBuilt("HSMKMS_TOFU_BIN", "../scripts/build-tofu.sh")
		if tfErr == nil {
			tfMirror, tfErr = tfBuilt("HSMKMS_TF_MIRROR", "../scripts/build-tf-provider.sh")
		}
	})
	if tfErr != nil {
		t.Fatal(tfErr)
	}
	return tfTofu, tfMirror
}

func tfBuilt(env, script string) (string, error) {
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	var stderr bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("no %s and %s failed: %w\n%s", env, script, err, tail(stderr.String(), 4000))
	}
	return strings.TrimSpace(string(out)), nil
}

// tfRun is one Terraform working directory: a copy of a configuration in
// testdata/terraform, run by tofu with the provider from the mirror only.
type tfRun struct {
	t    *testing.T
	tofu string
	dir  string
	env  []string
	vars []string // -var arguments of every plan, apply and destroy
	log  string   // TF_LOG_PATH
}

// newTFRun copies testdata/terraform/<config> into a fresh directory. The
// CLI configuration installs providers from the mirror and from nowhere
// else, and a proxy that refuses every connection (Vault, on 127.0.0.1, is
// exempt) makes any other network use fail loudly.
func newTFRun(t *testing.T, v *vaultServer, config string) *tfRun {
	t.Helper()
	tofu, mirror := terraformTools(t)
	dir := t.TempDir()
	src := filepath.Join("testdata", "terraform", config)
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, e.Name()), string(b))
	}
	cliConfig := filepath.Join(dir, "tofu.tfrc")
	writeFile(t, cliConfig, fmt.Sprintf(`provider_installation {
  filesystem_mirror {
    path = %q
  }
}
`, mirror))
	r := &tfRun{t: t, tofu: tofu, dir: dir, log: filepath.Join(dir, "tf.log")}
	r.env = append(os.Environ(),
		"TF_CLI_CONFIG_FILE="+cliConfig,
		"TF_IN_AUTOMATION=1",
		"TF_INPUT=0",
		"TF_LOG=DEBUG",
		"TF_LOG_PATH="+r.log,
		"CHECKPOINT_DISABLE=1",
		"HTTPS_PROXY=http://127.0.0.1:9",
		"HTTP_PROXY=http://127.0.0.1:9",
		"NO_PROXY=127.0.0.1",
		"VAULT_ADDR="+v.addr,
		"VAULT_TOKEN="+v.token,
	)
	r.must("init", "-no-color")
	return r
}

func (r *tfRun) run(args ...string) (string, int) {
	r.t.Helper()
	cmd := exec.Command(r.tofu, args...)
	cmd.Dir = r.dir
	cmd.Env = r.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &exit):
		return out.String(), exit.ExitCode()
	default:
		r.t.Fatalf("tofu %s: %v", strings.Join(args, " "), err)
		return "", -1
	}
}

// must runs tofu and ends the test unless it exits 0, printing its output
// and the end of its debug log (the provider's requests are there).
func (r *tfRun) must(args ...string) string {
	r.t.Helper()
	out, code := r.run(args...)
	if code != 0 {
		r.fail(fmt.Sprintf("tofu %s: exit %d", strings.Join(args, " "), code), out)
	}
	return out
}

func (r *tfRun) fail(what, out string) {
	r.t.Helper()
	// An apply's plan comes first and says nothing about the failure.
	if i := strings.Index(out, "\nError: "); i >= 0 && !strings.Contains(what, "plan") {
		out = out[i+1:]
	}
	log, _ := os.ReadFile(r.log)
	r.t.Fatalf("%s\n%s\n--- from TF_LOG (%s):\n%s", what, tail(out, 12000), r.log, tfLogProblems(string(log)))
}

// tfLogProblems keeps what the debug log says went wrong: each provider
// request that Vault answered with a 4xx or 5xx, and the provider's
// errors (a panic's stack included).
func tfLogProblems(log string) string {
	requests := map[string]string{} // request id -> "METHOD /v1/path"
	var keep []string
	pending, id := "", ""
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		l := sc.Text()
		msg := l
		if i := strings.Index(l, "provider.terraform-provider-vault"); i >= 0 {
			msg = strings.TrimPrefix(strings.TrimPrefix(l[i:], "provider.terraform-provider-vault_v5.9.0"), ": ")
		}
		switch {
		case strings.Contains(msg, "Vault API Request Details:") || strings.Contains(msg, "Vault API Response Details:"):
			if f := strings.Fields(msg); len(f) > 1 {
				id, pending = strings.Trim(f[1], "[]"), msg
			}
		case strings.HasPrefix(msg, "HTTP/1.1 ") && strings.Contains(pending, "Response"):
			if code := strings.Fields(msg)[1]; code[0] == '4' || code[0] == '5' {
				keep = append(keep, requests[id]+" -> "+msg)
			}
			pending = ""
		case strings.Contains(pending, "Request") && strings.HasSuffix(msg, " HTTP/1.1"):
			requests[id] = strings.TrimSuffix(msg, " HTTP/1.1")
			pending = ""
		case strings.Contains(l, "[ERROR]") && len(keep) < 60:
			keep = append(keep, msg)
		}
	}
	return strings.Join(keep, "\n")
}

func (r *tfRun) withVars(cmd ...string) []string {
	return append(append(cmd, "-no-color"), r.vars...)
}

func (r *tfRun) apply() { r.t.Helper(); r.must(r.withVars("apply", "-auto-approve")...) }

// refresh saves what the provider reads now, outputs included.
func (r *tfRun) refresh() {
	r.t.Helper()
	r.must(r.withVars("apply", "-refresh-only", "-auto-approve")...)
}

func (r *tfRun) destroy() { r.t.Helper(); r.must(r.withVars("destroy", "-auto-approve")...) }

// noChanges is the check that what the provider reads back equals what it
// wrote: a plan right after apply must find nothing to do (exit 0, not 2).
func (r *tfRun) noChanges() {
	r.t.Helper()
	out, code := r.run(r.withVars("plan", "-detailed-exitcode")...)
	if code != 0 {
		r.fail(fmt.Sprintf("plan after apply: exit %d, want 0 (no changes)", code), out)
	}
}

func (r *tfRun) setVars(kv ...string) {
	r.vars = nil
	for _, s := range kv {
		r.vars = append(r.vars, "-var", s)
	}
}

// outputs are the root module's outputs, sensitive ones included.
func (r *tfRun) outputs() map[string]interface{} {
	r.t.Helper()
	out := r.must("output", "-json")
	var raw map[string]struct {
		Value interface{} `json:"value"`
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		r.t.Fatalf("tofu output -json: %v\n%s", err, out)
	}
	got := map[string]interface{}{}
	for k, v := range raw {
		got[k] = v.Value
	}
	return got
}

// expect checks outputs against want, field by field.
func (r *tfRun) expect(outs map[string]interface{}, want map[string]interface{}) {
	r.t.Helper()
	for k, w := range want {
		if g, ok := outs[k]; !ok || !reflect.DeepEqual(g, w) {
			r.t.Errorf("output %s = %#v, want %#v", k, g, w)
		}
	}
}

func TestTerraformProviderAndOpenTofu(t *testing.T) {
	terraformTools(t) // a build failure ends the test before a Vault starts
	tok := softHSM()
	v := startDevVault(t, tok)
	// kms/ is compared with Transit, whose delete is immediate: here too
	// (deletion_window=0s), so that `destroy` is Transit's. The default
	// window's `destroy` is scheduled_deletion's, on a mount of its own.
	v.configure("kms", "deletion_window=0s")
	// Vault's own Transit, for the provider to compare against.
	v.cli("secrets", "enable", "transit")

	t.Run("mount_and_config", func(t *testing.T) {
		t.Parallel()
		testTFMountAndConfig(t, v.forTest(t), tok.Library, tok.Label, tok.PIN, tok.InitArgs)
	})
	t.Run("transit_keys", func(t *testing.T) {
		t.Parallel()
		testTFTransitKeys(t, v.forTest(t))
	})
	t.Run("data_sources", func(t *testing.T) {
		t.Parallel()
		testTFDataSources(t, v.forTest(t))
	})
	t.Run("generic_endpoint", func(t *testing.T) {
		t.Parallel()
		testTFGenericEndpoint(t, v.forTest(t))
	})
	t.Run("scheduled_deletion", func(t *testing.T) {
		t.Parallel()
		testTFScheduledDeletion(t, v.forTest(t))
	})
}

// testTFMountAndConfig registers the plugin under a name of its own,
// mounts and configures it from Terraform, and uses the mount.
func testTFMountAndConfig(t *testing.T, v *vaultServer, library, label, pin, initArgs string) {
	r := newTFRun(t, v, "mount")
	// From the environment, not a command line.
	r.env = append(r.env, "TF_VAR_pin="+pin)
	vars := func(description string, maxKeys int) {
		r.setVars("plugin_name=hsmkms-tf", "plugin_version="+pluginVersion, "plugin_sha256="+pluginSHA, "plugin_command="+pluginName,
			fmt.Sprintf("plugin_env=[%q]", "HSMKMS_LIBRARY_DIRS="+libraryDirs),
			"path=tfkms", "description="+description,
			"library="+library, "token_label="+label, "init_args="+initArgs,
			fmt.Sprintf("max_keys=%d", maxKeys))
	}
	vars("hsmkms from terraform", 20)
	r.apply()
	r.noChanges()
	r.expect(r.outputs(), map[string]interface{}{
		"mount_type": "hsmkms-tf", "mount_description": "hsmkms from terraform",
		"max_keys": float64(20), "key_type": "aes256-gcm96", "plaintext": "mounted by terraform",
	})

	vars("hsmkms from terraform, updated", 30)
	r.apply()
	r.noChanges()
	r.expect(r.outputs(), map[string]interface{}{
		"mount_description": "hsmkms from terraform, updated", "max_keys": float64(30),
		"plaintext": "mounted by terraform",
	})
	// What Terraform says must be what the plugin holds.
	status, body := v.raw("GET", "tfkms/config", v.token, nil)
	if status != 200 {
		t.Fatalf("GET tfkms/config: %d %v", status, body)
	}
	if got := fmt.Sprint(body["data"].(map[string]interface{})["max_keys"]); got != "30" {
		t.Errorf("tfkms/config max_keys = %s after the update, want 30", got)
	}

	r.destroy()
	mounts, err := v.client.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := mounts["tfkms/"]; ok {
		t.Errorf("tfkms/ is still mounted after destroy")
	}
	if status, body := v.raw("GET", "sys/plugins/catalog/secret/hsmkms-tf?version="+pluginVersion, v.token, nil); status != 404 {
		t.Errorf("plugin hsmkms-tf is still registered after destroy: %d %v", status, body)
	}
}

// tfKeyTypes are the key types of the acceptance: AES (both sizes), RSA,
// ECDSA and HMAC; the names are the types', shortened.
var tfKeyTypes = map[string]string{
	"tf-aes256":  "aes256-gcm96",
	"tf-aes128":  "aes128-gcm96",
	"tf-rsa2048": "rsa-2048",
	"tf-p256":    "ecdsa-p256",
	"tf-hmac":    "hmac",
}

// testTFTransitKeys runs vault_transit_secret_backend_key for every key
// type on kms/ and on Vault's Transit, rotates every key outside Terraform,
// raises min_decryption_version in the configuration, and compares what the
// provider sees on both backends.
func testTFTransitKeys(t *testing.T, v *vaultServer) {
	r := newTFRun(t, v, "keys")
	typesJSON, _ := json.Marshal(tfKeyTypes)
	vars := func(minDecryption int) {
		r.setVars(`backends=["kms","transit"]`, "types="+string(typesJSON), fmt.Sprintf("min_decryption_version=%d", minDecryption))
	}
	for _, minDecryption := range []int{1, 2} {
		if minDecryption == 2 {
			for name := range tfKeyTypes {
				for _, backend := range []string{"kms", "transit"} {
					v.cli("write", "-f", backend+"/keys/"+name+"/rotate")
				}
			}
		}
		vars(minDecryption)
		r.apply()
		applied := r.outputs()["keys"].(map[string]interface{})
		// The state apply saves keeps the versions list read before the
		// update (the provider's doing: Transit's own read right after the
		// config write lists only versions from min_decryption_version up):
		// refresh once before comparing with Transit.
		r.refresh()
		r.noChanges()
		keys := r.outputs()["keys"].(map[string]interface{})
		// At apply, both backends must look alike to the provider too.
		for name := range tfKeyTypes {
			if !reflect.DeepEqual(applied["kms/"+name], applied["transit/"+name]) {
				t.Errorf("%s at apply: kms/ %v, transit/ %v", name, applied["kms/"+name], applied["transit/"+name])
			}
		}
		checkTFKeys(t, keys, minDecryption, minDecryption)
	}

	r.destroy()
	for name := range tfKeyTypes {
		if status, body := v.raw("GET", "kms/keys/"+name, v.token, nil); status != 404 {
			t.Errorf("kms/keys/%s after destroy: %d %v, want 404", name, status, body)
		}
	}
}

// checkTFKeys compares each kms/ key with the Transit key of the same type
// as the provider reports them, and checks the versions.
func checkTFKeys(t *testing.T, keys map[string]interface{}, latest, minDecryption int) {
	t.Helper()
	if len(keys) != 2*len(tfKeyTypes) {
		t.Fatalf("%d keys in the output, want %d: %v", len(keys), 2*len(tfKeyTypes), keys)
	}
	for name, typ := range tfKeyTypes {
		kms := keys["kms/"+name].(map[string]interface{})
		transit := keys["transit/"+name].(map[string]interface{})
		if kms["type"] != typ || kms["latest_version"] != float64(latest) || kms["min_decryption_version"] != float64(minDecryption) {
			t.Errorf("kms/%s: type %v latest_version %v min_decryption_version %v, want %s %d %d",
				name, kms["type"], kms["latest_version"], kms["min_decryption_version"], typ, latest, minDecryption)
		}
		for _, f := range []string{"type", "latest_version", "min_available_version", "min_decryption_version",
			"min_encryption_version", "deletion_allowed", "exportable", "derived", "supports_encryption",
			"supports_decryption", "supports_signing", "key_size"} {
			if !reflect.DeepEqual(kms[f], transit[f]) {
				t.Errorf("%s (%s): %s is %v on kms/, %v on Transit", name, typ, f, kms[f], transit[f])
			}
		}
		// The provider keeps each version as a map of strings; the versions
		// listed and their fields must be Transit's (id for symmetric keys,
		// name, public_key, creation_time... for asymmetric ones).
		if !reflect.DeepEqual(kms["version_fields"], transit["version_fields"]) {
			t.Errorf("%s (%s): versions with fields %v on kms/, %v on Transit", name, typ, kms["version_fields"], transit["version_fields"])
		}
		if strings.HasPrefix(typ, "rsa") || strings.HasPrefix(typ, "ecdsa") {
			for _, pk := range kms["public_keys"].([]interface{}) {
				if pk != "-----BEGIN PUBLIC KEY-----" {
					t.Errorf("%s: a version's public_key starts %q, want a PEM public key", name, pk)
				}
			}
		}
	}
}

// testTFDataSources round-trips through the transit data sources.
func testTFDataSources(t *testing.T, v *vaultServer) {
	r := newTFRun(t, v, "datasources")
	for _, plaintext := range []string{"attack at dawn", "retreat at dusk"} {
		r.setVars("backend=kms", "plaintext="+plaintext)
		r.apply()
		r.noChanges()
		r.expect(r.outputs(), map[string]interface{}{
			"aes_plaintext": plaintext, "aes_ciphertext_prefix": "vault:v1:",
			"rsa_plaintext": plaintext, "rsa_ciphertext_prefix": "vault:v1:",
			"ec_signature_prefix": "vault:v1:", "ec_valid": true, "ec_other_input_valid": false,
			"rsa_valid": true, "hmac_prefix": "vault:v1:", "hmac_valid": true,
		})
	}
	r.destroy()
}

// testTFGenericEndpoint makes a key through vault_generic_endpoint on
// keys/:name, on kms/ and on Vault's Transit, raises its
// min_decryption_version after a rotation through keys/:name/config, and
// reads it with vault_generic_secret: both must read the same.
func testTFGenericEndpoint(t *testing.T, v *vaultServer) {
	r := newTFRun(t, v, "generic")
	for _, minDecryption := range []int{1, 2} {
		if minDecryption == 2 {
			for _, backend := range []string{"kms", "transit"} {
				v.cli("write", "-f", backend+"/keys/tf-generic/rotate")
			}
		}
		r.setVars(`backends=["kms","transit"]`, "name=tf-generic", fmt.Sprintf("min_decryption_version=%d", minDecryption))
		r.apply()
		r.noChanges()
		outs := r.outputs()
		keys, _ := outs["keys"].(map[string]interface{})
		want := map[string]interface{}{"type": "ecdsa-p256", "latest_version": float64(minDecryption),
			"min_decryption_version": float64(minDecryption), "deletion_allowed": true, "supports_signing": true}
		if !reflect.DeepEqual(keys["kms"], want) {
			t.Errorf("kms/keys/tf-generic reads %v, want %v", keys["kms"], want)
		}
		if !reflect.DeepEqual(keys["transit"], want) {
			t.Errorf("transit/keys/tf-generic reads %v, want %v (the test's expectation of Transit is wrong)", keys["transit"], want)
		}
		// The versions listed, and each one's fields, are Transit's.
		versions, _ := outs["versions"].(map[string]interface{})
		if !reflect.DeepEqual(versions["kms"], versions["transit"]) {
			t.Errorf("min_decryption_version=%d: keys of kms/keys/tf-generic are %v, Transit's %v", minDecryption, versions["kms"], versions["transit"])
		}
	}
	r.destroy()
	for _, backend := range []string{"kms", "transit"} {
		if status, body := v.raw("GET", backend+"/keys/tf-generic", v.token, nil); status != 404 {
			t.Errorf("%s/keys/tf-generic after destroy: %d %v, want 404", backend, status, body)
		}
	}
}

// testTFScheduledDeletion is `destroy` on a mount with the default deletion
// window (168h): the provider's DELETE schedules each key's deletion, the
// keys stay pending_deletion, and an apply of the same names fails with
// the plugin's reason: the key is scheduled for deletion, on which date,
// and how to cancel.
func testTFScheduledDeletion(t *testing.T, v *vaultServer) {
	v.cli("secrets", "enable", "-path=kmsw", "hsmkms")
	v.configure("kmsw")
	types := map[string]string{"tf-del-aes": "aes256-gcm96", "tf-del-ec": "ecdsa-p256"}
	typesJSON, _ := json.Marshal(types)
	r := newTFRun(t, v, "keys")
	r.setVars(`backends=["kmsw"]`, "types="+string(typesJSON))
	r.apply()
	r.noChanges()
	r.destroy()

	dates := map[string]string{}
	for name := range types {
		status, body := v.raw("GET", "kmsw/keys/"+name, v.token, nil)
		data, _ := body["data"].(map[string]interface{})
		if status != 200 || data["state"] != "pending_deletion" || data["deletion_date"] == nil {
			t.Fatalf("kmsw/keys/%s after destroy: %d %v, want the key pending_deletion with its deletion_date", name, status, body)
		}
		dates[name] = fmt.Sprint(data["deletion_date"])
	}

	out, code := r.run(r.withVars("apply", "-auto-approve")...)
	if code == 0 {
		r.fail("apply of the names of keys pending deletion succeeded", out)
	}
	// tofu draws its diagnostics in a box and wraps them: what they say is
	// read with the box and the line breaks taken out.
	said := strings.Join(strings.Fields(strings.ReplaceAll(out, "│", " ")), " ")
	if i := strings.Index(said, "Error: "); i >= 0 {
		t.Logf("the apply failed saying: %s", tail(said[i:], 1500))
	}
	for name, date := range dates {
		for _, want := range []string{
			fmt.Sprintf("key %q is scheduled for deletion on %s", name, date),
			"keys/" + name + "/cancel_deletion",
		} {
			if !strings.Contains(said, want) {
				t.Errorf("the failed apply does not say %q:\n%s", want, tail(out, 6000))
			}
		}
	}
	for name := range types {
		if status, body := v.raw("GET", "kmsw/keys/"+name, v.token, nil); status != 200 || body["data"].(map[string]interface{})["state"] != "pending_deletion" {
			t.Errorf("kmsw/keys/%s after the failed apply: %d %v, want it still pending_deletion", name, status, body)
		}
	}
}
