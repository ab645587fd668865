// Command hsmkms-bench measures the plugin through Vault's HTTP API against
// the raw HSM and Vault's Transit on the same server, in one run, and prints
// a table of figures and target ratios (and writes them as JSON).
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/loadbench"
)

type options struct {
	addr, token       string
	library, label    string
	pinFile           string
	concurrency       int
	duration          time.Duration
	soak              time.Duration
	pluginPID         int
	goBench, out      string
	kmsPath, transitP string
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", os.Getenv("VAULT_ADDR"), "Vault address")
	flag.StringVar(&o.token, "token", os.Getenv("VAULT_TOKEN"), "Vault token")
	flag.StringVar(&o.library, "library", "", "PKCS#11 module for the raw-HSM figures")
	flag.StringVar(&o.label, "token-label", "", "token label")
	flag.StringVar(&o.pinFile, "pin-file", "", "file holding the user PIN")
	flag.IntVar(&o.concurrency, "concurrency", 8, "concurrent clients (and raw-HSM sessions)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each scenario")
	flag.DurationVar(&o.soak, "soak", 0, "length of the mixed-load memory check (0: skip)")
	flag.IntVar(&o.pluginPID, "plugin-pid", 0, "plugin process to watch during the soak")
	flag.StringVar(&o.goBench, "gobench", "", "file with `go test -bench` output of the handler benchmarks")
	flag.StringVar(&o.out, "out", "bench-results/bench.json", "JSON output")
	flag.StringVar(&o.kmsPath, "kms", "kms", "hsmkms mount")
	flag.StringVar(&o.transitP, "transit", "transit", "Transit mount (enabled if missing)")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "hsmkms-bench:", err)
		os.Exit(1)
	}
}

type report struct {
	Machine string                `json:"machine"`
	When    time.Time             `json:"when"`
	Results []loadbench.Result    `json:"results"`
	Ratios  []loadbench.Ratio     `json:"ratios"`
	Soak    *loadbench.SoakReport `json:"soak,omitempty"`
}

func run(ctx context.Context, o options) error {
	pin, err := os.ReadFile(o.pinFile)
	if err != nil {
		return fmt.Errorf("reading the PIN file: %w", err)
	}
	client := loadbench.NewHTTPClient(o.addr, o.token, o.concurrency*2)
	fx, err := setup(ctx, client, o)
	if err != nil {
		return err
	}
	rep := report{Machine: loadbench.MachineDescription(), When: time.Now().UTC()}
	results := map[string]loadbench.Result{}
	measure := func(name string, conc, items int, op loadbench.Worker) {
		r := loadbench.Run(ctx, name, conc, o.duration, items, op)
		results[name] = r
		rep.Results = append(rep.Results, r)
		fmt.Fprintf(os.Stderr, "%-44s %10.0f items/s  errors %d %s\n", name, r.ItemsPerSec, r.Errors, r.FirstError)
	}

	n := o.concurrency
	// For reference: the same token with session keys, which SoftHSM's
	// file store serves faster than the token keys a KMS must use.
	sessionKeys, err := loadbench.OpenRawHSM(o.library, o.label, strings.TrimSpace(string(pin)), 1, false)
	if err != nil {
		return fmt.Errorf("raw HSM: %w", err)
	}
	measure("raw HSM AES-256-GCM encrypt 64 B, 1 session, session key", 1, 1, sessionKeys.EncryptAESGCM64)
	measure("raw HSM RSA-2048 PKCS#1 v1.5 sign, 1 session, session key", 1, 1, sessionKeys.SignRSA2048)
	sessionKeys.Close()

	raw, err := loadbench.OpenRawHSM(o.library, o.label, strings.TrimSpace(string(pin)), n, true)
	if err != nil {
		return fmt.Errorf("raw HSM: %w", err)
	}
	measure("raw HSM AES-256-GCM encrypt 64 B, 1 session", 1, 1, raw.EncryptAESGCM64)
	measure(fmt.Sprintf("raw HSM AES-256-GCM encrypt 64 B, %d sessions", n), n, 1, raw.EncryptAESGCM64)
	measure("raw HSM RSA-2048 PKCS#1 v1.5 sign, 1 session", 1, 1, raw.SignRSA2048)
	measure(fmt.Sprintf("raw HSM RSA-2048 PKCS#1 v1.5 sign, %d sessions", n), n, 1, raw.SignRSA2048)
	measure("raw HSM ECDSA P-256 sign, 1 session", 1, 1, raw.SignECDSAP256)
	measure(fmt.Sprintf("raw HSM ECDSA P-256 sign, %d sessions", n), n, 1, raw.SignECDSAP256)
	raw.Close()

	for _, mount := range []string{o.kmsPath, o.transitP} {
		who := "hsmkms"
		if mount == o.transitP {
			who = "Transit"
		}
		post := func(path string, body []byte) loadbench.Worker {
			return func(ctx context.Context, _ int) error { return client.Post(ctx, mount+"/"+path, body) }
		}
		measure(who+" key read (no HSM)", n, 1, func(ctx context.Context, _ int) error {
			return client.Get(ctx, mount+"/keys/bench-aes")
		})
		measure(who+" encrypt 64 B", n, 1, post("encrypt/bench-aes", fx.encrypt))
		measure(who+" encrypt batch of 100", n, 100, post("encrypt/bench-aes", fx.batch))
		measure(who+" decrypt 64 B", n, 1, post("decrypt/bench-aes", fx.decrypt[mount]))
		measure(who+" sign rsa-2048", n, 1, post("sign/bench-rsa", fx.signRSA))
		measure(who+" sign ecdsa-p256", n, 1, post("sign/bench-ec", fx.signEC))
		measure(who+" datakey/wrapped", n, 1, post("datakey/wrapped/bench-aes", []byte(`{"bits":256}`)))
	}

	ceiling := results["hsmkms key read (no HSM)"]
	rep.Ratios = []loadbench.Ratio{
		loadbench.ComputeRatio("encrypt / plugin no-HSM ceiling", results["hsmkms encrypt 64 B"], ceiling, 0.85),
		loadbench.ComputeRatio("batch encrypt items/s / raw AES-GCM at 1 session", results["hsmkms encrypt batch of 100"], results["raw HSM AES-256-GCM encrypt 64 B, 1 session"], 0.7),
		loadbench.ComputeRatio(fmt.Sprintf("rsa-2048 sign / raw RSA-2048 at %d sessions", n), results["hsmkms sign rsa-2048"], results[fmt.Sprintf("raw HSM RSA-2048 PKCS#1 v1.5 sign, %d sessions", n)], 0.75),
		loadbench.ComputeRatio("rsa-2048 sign / Transit rsa-2048 sign", results["hsmkms sign rsa-2048"], results["Transit sign rsa-2048"], 1.2),
		loadbench.ComputeRatio("ecdsa-p256 sign / plugin no-HSM ceiling", results["hsmkms sign ecdsa-p256"], ceiling, 0.85),
	}
	if o.goBench != "" {
		text, err := os.ReadFile(o.goBench)
		if err != nil {
			return err
		}
		ns := loadbench.ParseGoBench(string(text))
		rep.Ratios = append(rep.Ratios,
			loadbench.ComputeCostRatio("in-process rsa-2048 sign: handler / bare hsm call", "HandlerSignRSA2048", "HSMSignRSA2048", ns["HandlerSignRSA2048"], ns["HSMSignRSA2048"], 1.15),
			loadbench.ComputeCostRatio("in-process AES-GCM 64 B encrypt: handler / bare hsm call", "HandlerEncryptAES64", "HSMEncryptAES64", ns["HandlerEncryptAES64"], ns["HSMEncryptAES64"], 1.5),
		)
	}
	if o.soak > 0 {
		soak, err := loadbench.Soak(ctx, client, o.kmsPath, o.pluginPID, o.concurrency, o.soak, fx.mixed(o.kmsPath))
		if err != nil {
			return err
		}
		rep.Soak = &soak
		rep.Ratios = append(rep.Ratios, soak.Ratios()...)
	}

	fmt.Println(loadbench.Table(rep.Results, rep.Ratios))
	if rep.Soak != nil {
		fmt.Println(rep.Soak.Summary())
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(o.out, data, 0o644)
}

// fixture holds the request bodies every scenario sends.
type fixture struct {
	encrypt, batch, signRSA, signEC []byte
	decrypt                         map[string][]byte
}

func (f *fixture) mixed(mount string) []loadbench.Request {
	return []loadbench.Request{
		{Path: mount + "/encrypt/bench-aes", Body: f.encrypt},
		{Path: mount + "/decrypt/bench-aes", Body: f.decrypt[mount]},
		{Path: mount + "/sign/bench-ec", Body: f.signEC},
		{Path: mount + "/sign/bench-rsa", Body: f.signRSA},
		{Path: mount + "/datakey/wrapped/bench-aes", Body: []byte(`{}`)},
		{Path: mount + "/encrypt/bench-aes", Body: f.batch},
		{Path: mount + "/keys/bench-aes"},
	}
}

func setup(ctx context.Context, c *loadbench.HTTPClient, o options) (*fixture, error) {
	if _, err := c.PostJSON(ctx, "sys/mounts/"+o.transitP, []byte(`{"type":"transit"}`)); err != nil && !strings.Contains(err.Error(), "path is already in use") {
		return nil, fmt.Errorf("enabling Transit: %w", err)
	}
	plaintext := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("p", 64)))
	f := &fixture{decrypt: map[string][]byte{}}
	f.encrypt = []byte(fmt.Sprintf(`{"plaintext":%q}`, plaintext))
	items := make([]string, 100)
	for i := range items {
		items[i] = fmt.Sprintf(`{"plaintext":%q}`, plaintext)
	}
	f.batch = []byte(`{"batch_input":[` + strings.Join(items, ",") + `]}`)
	input := base64.StdEncoding.EncodeToString([]byte("hsmkms bench input"))
	f.signRSA = []byte(fmt.Sprintf(`{"input":%q,"hash_algorithm":"sha2-256","signature_algorithm":"pkcs1v15"}`, input))
	f.signEC = []byte(fmt.Sprintf(`{"input":%q,"hash_algorithm":"sha2-256"}`, input))
	for _, mount := range []string{o.kmsPath, o.transitP} {
		for name, typ := range map[string]string{"bench-aes": "aes256-gcm96", "bench-rsa": "rsa-2048", "bench-ec": "ecdsa-p256"} {
			if _, err := c.PostJSON(ctx, mount+"/keys/"+name, []byte(fmt.Sprintf(`{"type":%q}`, typ))); err != nil {
				return nil, err
			}
		}
		out, err := c.PostJSON(ctx, mount+"/encrypt/bench-aes", f.encrypt)
		if err != nil {
			return nil, err
		}
		var resp struct {
			Data struct {
				Ciphertext string `json:"ciphertext"`
			} `json:"data"`
		}
		if err := json.Unmarshal(out, &resp); err != nil {
			return nil, err
		}
		f.decrypt[mount] = []byte(fmt.Sprintf(`{"ciphertext":%q}`, resp.Data.Ciphertext))
	}
	return f, nil
}
