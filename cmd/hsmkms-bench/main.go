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
	"slices"
	"strings"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/loadbench"
)

// token is one token the plugin is measured on: its raw figures come from
// the module directly, its plugin figures from the mount configured on it.
type token struct {
	kind         string // tokentest kind: "softhsm2", "nss"
	library      string
	initArgsFile string
	label        string
	pinFile      string
	mount        string

	raw loadbench.RawToken // filled from the files by run
}

type options struct {
	addr, token  string
	softhsm, nss token
	concurrency  int
	duration     time.Duration
	soak         time.Duration
	pluginPID    int
	goBench, out string
	transitP     string
	scale        scaleOptions
	phases       phaseList
	countOps     int // operations the PKCS#11 calls are counted over
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "rtts" {
		if err := printRTTs(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "hsmkms-bench:", err)
			os.Exit(2)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "make-nss-token" {
		if err := makeNSSToken(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "hsmkms-bench:", err)
			os.Exit(1)
		}
		return
	}
	o := options{softhsm: token{kind: "softhsm2"}, nss: token{kind: "nss"}}
	flag.StringVar(&o.addr, "addr", os.Getenv("VAULT_ADDR"), "Vault address")
	flag.StringVar(&o.token, "token", os.Getenv("VAULT_TOKEN"), "Vault token")
	flag.StringVar(&o.softhsm.library, "library", "", "SoftHSM2's PKCS#11 module, for the raw-HSM figures")
	flag.StringVar(&o.softhsm.label, "token-label", "", "SoftHSM2 token label")
	flag.StringVar(&o.softhsm.pinFile, "pin-file", "", "file holding the SoftHSM2 token's user PIN")
	flag.StringVar(&o.softhsm.mount, "kms", "kms", "hsmkms mount on the SoftHSM2 token")
	flag.StringVar(&o.nss.library, "nss-library", "", "NSS softokn's PKCS#11 module (empty: no NSS figures)")
	flag.StringVar(&o.nss.initArgsFile, "nss-init-args-file", "", "file holding NSS's C_Initialize parameter string")
	flag.StringVar(&o.nss.label, "nss-token-label", "", "NSS token label")
	flag.StringVar(&o.nss.pinFile, "nss-pin-file", "", "file holding the NSS token's user PIN")
	flag.StringVar(&o.nss.mount, "nss-kms", "kms-nss", "hsmkms mount on the NSS token")
	flag.IntVar(&o.concurrency, "concurrency", 8, "concurrent clients (and raw-HSM sessions)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each scenario")
	flag.DurationVar(&o.soak, "soak", 0, "length of the mixed-load memory check on the SoftHSM2 mount (0: skip)")
	flag.IntVar(&o.pluginPID, "plugin-pid", 0, "plugin process to watch during the soak")
	flag.StringVar(&o.goBench, "gobench", "", "file with `go test -bench` output of the handler and seam benchmarks")
	flag.StringVar(&o.out, "out", "bench-results/bench.json", "JSON output")
	flag.StringVar(&o.transitP, "transit", "transit", "Transit mount (enabled if missing)")
	flag.IntVar(&o.scale.keys, "scale-keys", 0, "wrapped keys of the scale scenario, on the SoftHSM2 token (0: skip it)")
	flag.StringVar(&o.scale.mount, "scale-kms", "kms-scale", "hsmkms mount the scale scenario makes for its many wrapped keys")
	flag.StringVar(&o.scale.smallMount, "small-kms", "kms-small", "hsmkms mount the scale scenario makes for its few keys")
	flag.DurationVar(&o.scale.warmUpMax, "scale-warmup-max", 5*time.Minute, "bound on the scale scenario's warm-up pass over every key (0: none)")
	flag.DurationVar(&o.scale.duration, "scale-duration", 0, "measured encrypt phase of the scale scenario, both sides together (0: three times -duration)")
	flag.Var(&o.phases, "phase", "a simulated network HSM round trip to run the scenarios at, with the mounts whose plugin process has it "+
		"and the socket of that process's call counters, e.g. rtt=2ms,kms=kms-rtt1,nss-kms=kms-nss-rtt1,seam=/tmp/seam.sock; repeatable "+
		"(none: the -kms and -nss-kms mounts, at whatever round trip their plugin has, calls not counted)")
	flag.IntVar(&o.countOps, "count-ops", 10, "requests made one after another to count each scenario's PKCS#11 calls")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "hsmkms-bench:", err)
		os.Exit(1)
	}
}

type report struct {
	Machine string             `json:"machine"`
	When    time.Time          `json:"when"`
	Tokens  []string           `json:"tokens"`
	Results []loadbench.Result `json:"results"`
	// SideBySide is Results that ran on a token, one row per scenario with
	// every token's figures.
	SideBySide []loadbench.Row       `json:"side_by_side"`
	Ratios     []loadbench.Ratio     `json:"ratios"`
	Phases     []phaseRecord         `json:"phases"`
	Soak       *loadbench.SoakReport `json:"soak,omitempty"`
	Scale      *scaleReport          `json:"scale,omitempty"`
}

// readToken reads the token's PIN and init args from their files.
func readToken(t *token) error {
	pin, err := os.ReadFile(t.pinFile)
	if err != nil {
		return fmt.Errorf("reading the %s PIN file: %w", t.kind, err)
	}
	t.raw = loadbench.RawToken{Library: t.library, Label: t.label, PIN: strings.TrimSpace(string(pin))}
	if t.initArgsFile != "" {
		args, err := os.ReadFile(t.initArgsFile)
		if err != nil {
			return fmt.Errorf("reading the %s init args file: %w", t.kind, err)
		}
		t.raw.InitArgs = strings.TrimSpace(string(args))
	}
	return nil
}

func run(ctx context.Context, o options) error {
	tokens := []*token{&o.softhsm}
	if o.nss.library != "" {
		tokens = append(tokens, &o.nss)
	}
	if len(o.phases) == 0 {
		// No simulated network in the plugin: its calls are not counted.
		p := phase{mounts: map[string]string{}}
		for _, t := range tokens {
			p.mounts[t.kind] = t.mount
		}
		o.phases = phaseList{p}
	}
	var mounts []string
	for _, t := range tokens {
		if err := readToken(t); err != nil {
			return err
		}
		for _, p := range o.phases {
			m, ok := p.mounts[t.kind]
			if !ok {
				return fmt.Errorf("the phase at %v names no %s mount", p.rtt, loadbench.TokenTitle(t.kind))
			}
			mounts = append(mounts, m)
		}
	}
	client := loadbench.NewHTTPClient(o.addr, o.token, o.concurrency*2)
	fx, err := setup(ctx, client, o.transitP, mounts)
	if err != nil {
		return err
	}
	rep := report{Machine: loadbench.MachineDescription(), When: time.Now().UTC()}
	for _, t := range tokens {
		rep.Tokens = append(rep.Tokens, t.kind)
	}
	b := &bench{o: o, client: client, fx: fx, tokens: tokens, rep: &rep, results: map[string]loadbench.Result{}}
	for _, p := range o.phases {
		if err := b.runPhase(ctx, p); err != nil {
			return err
		}
	}
	if o.goBench != "" {
		text, err := os.ReadFile(o.goBench)
		if err != nil {
			return err
		}
		rep.Ratios = append(rep.Ratios, goBenchRatios(string(text))...)
	}
	if o.soak > 0 {
		mount := o.softhsm.mount
		soak, err := loadbench.Soak(ctx, client, mount, o.pluginPID, o.concurrency, o.soak, fx.mixed(mount))
		if err != nil {
			return err
		}
		rep.Soak = &soak
		rep.Ratios = append(rep.Ratios, soak.Ratios()...)
	}
	// Last: its session objects, in the plugin's process, would weigh on
	// every scenario after it.
	if o.scale.keys > 0 {
		scale, results, ratios, err := runScale(ctx, client, o, o.scale, fx.encrypt)
		if err != nil {
			return fmt.Errorf("scale scenario: %w", err)
		}
		rep.Scale = scale
		rep.Results = append(rep.Results, results...)
		rep.Ratios = append(rep.Ratios, ratios...)
	}

	rep.SideBySide, _ = loadbench.SideBySide(rep.Results)
	fmt.Println(loadbench.Table(rep.Results, rep.Ratios))
	for _, p := range rep.Phases {
		fmt.Printf("phase %v: %s, load average %.1f at its start, %.1f at its end\n", p.RTT, p.Elapsed.Round(time.Second), p.LoadStart, p.LoadEnd)
	}
	if rep.Soak != nil {
		fmt.Println(rep.Soak.Summary())
	}
	if rep.Scale != nil {
		fmt.Println(rep.Scale.Summary())
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(o.out, data, 0o644)
}

// seamTarget bounds what the hsm.PKCS11 interface may add to the calls of
// one operation made on the concrete binding.
const seamTarget = 1.02

// goBenchRatios are the targets measured in process by `go test -bench`:
// the handler against the bare hsm call (root package, SoftHSM2), and the
// PKCS11 seam on every token (hsm's BenchmarkSeam: interface / concrete
// over interleaved pairs of calls timed by the thread's CPU clock). A
// benchmark missing from the output is a MISSED target.
func goBenchRatios(text string) []loadbench.Ratio {
	metrics := loadbench.ParseGoBenchMetrics(text)
	// cost divides benchmark num's metric numUnit by den's denUnit.
	cost := func(name, num, numUnit, den, denUnit string, bound float64) loadbench.Ratio {
		numV, numOK := metrics[num][numUnit]
		denV, denOK := metrics[den][denUnit]
		r := loadbench.ComputeCostRatio(name, num+" "+numUnit, den+" "+denUnit, numV, denV, bound)
		if !numOK || !denOK {
			r.Met, r.Note = false, "(not measured)"
		}
		return r
	}
	ratios := []loadbench.Ratio{
		cost("SoftHSM2: in-process rsa-2048 sign: handler / bare hsm call", "HandlerSignRSA2048", "ns/op", "HSMSignRSA2048", "ns/op", 1.15),
		cost("SoftHSM2: in-process AES-GCM 64 B encrypt: handler / bare hsm call", "HandlerEncryptAES64", "ns/op", "HSMEncryptAES64", "ns/op", 1.5),
	}
	for _, kind := range []string{"softhsm2", "nss"} {
		for _, op := range []struct{ bench, title string }{
			{"EncryptAESGCM64", "AES-GCM 64 B encrypt"},
			{"SignRSA2048PKCS1", "RSA-2048 PKCS#1 v1.5 sign"},
		} {
			b := "Seam/" + kind + "/" + op.bench
			name := fmt.Sprintf("%s: PKCS11 seam, %s: interface / concrete", loadbench.TokenTitle(kind), op.title)
			v, ok := metrics[b]["iface/direct"]
			r := loadbench.ComputeCostRatio(name, b+" through hsm.PKCS11", b+" on *miekgBinding", v, 1, seamTarget)
			if !ok {
				r.Met, r.Note = false, "(not measured)"
			}
			ratios = append(ratios, r)
		}
	}
	return ratios
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

// setup enables Transit if needed, makes the bench keys on the hsmkms mounts
// and Transit, and the request bodies.
func setup(ctx context.Context, c *loadbench.HTTPClient, transit string, kmsMounts []string) (*fixture, error) {
	if _, err := c.PostJSON(ctx, "sys/mounts/"+transit, []byte(`{"type":"transit"}`)); err != nil && !strings.Contains(err.Error(), "path is already in use") {
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
	for _, mount := range append(slices.Clone(kmsMounts), transit) {
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
