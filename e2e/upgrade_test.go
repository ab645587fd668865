package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// The versions the upgrade test builds the plugin as: two builds of this
// tree that differ only in the version they report, as a release and the
// next one do when the stored format did not change between them.
const (
	upgradeOld = "v1.0.0"
	upgradeNew = "v1.1.0"
)

// upgradeClients is how many clients use the mount while it is switched
// (issue 21).
const upgradeClients = 32

// upgradeVersionEnv marks a plugin process with the version its catalog
// entry was registered as, so that the test can find the process of each.
const upgradeVersionEnv = "HSMKMS_E2E_VERSION="

// TestUpgradeUnderLoad does what the README's upgrade runbook says, on a
// mount in use: both versions registered in the versioned catalog with
// their SHA-256, the mount switched to the new one (secrets tune
// -plugin-version, plugin reload) and back, while 32 clients encrypt,
// decrypt, sign, verify and make data keys with AES, RSA, EC and wrapped
// keys. Every answer is checked: no wrong plaintext or signature ever; a
// 5xx only inside a reload window (from the reload call until the first
// success of a request sent after it returned), no 4xx, no request left
// unanswered; after each switch the mount runs the version asked for and
// everything made before the first switch still decrypts and verifies;
// at the end the old version opens what both versions made under load.
// On Vault with each token, and on OpenBao (SoftHSM2), whose CLI registers
// differently (the catalog API: its `plugin register` has no -env).
func TestUpgradeUnderLoad(t *testing.T) {
	old := buildPluginVersion(t, upgradeOld)
	next := buildPluginVersion(t, upgradeNew)
	eachToken(t, func(t *testing.T, tok *tokentest.Token) { testUpgradeUnderLoad(t, tok, old, next) })
}

// TestUpgradeUnderLoadOnOpenBao is the same on OpenBao (SoftHSM2).
func TestUpgradeUnderLoadOnOpenBao(t *testing.T) {
	onOpenBao(t)
	testUpgradeUnderLoad(t, softHSM(), buildPluginVersion(t, upgradeOld), buildPluginVersion(t, upgradeNew))
}

func testUpgradeUnderLoad(t *testing.T, tok *tokentest.Token, old, next pluginBuild) {
	v := startDevVault(t, tok)
	// startDevVault mounts kms/ on the tests' unversioned build; an
	// upgrade starts from a mount of a release.
	v.cli("secrets", "disable", "kms/")
	old.register(v)
	next.register(v)
	v.cli("secrets", "enable", "-path=kms", "-plugin-version="+old.version, "hsmkms")
	checkRunningVersion(t, v, "kms/", old.version)
	v.configure("kms")
	c := newUpgradeCorpus(t, v)
	t.Logf("made before any switch: %s", c.summary())

	l := startUpgradeLoad(t, v, c)
	// Every client is at work before the first switch.
	l.waitSuccesses(t, time.Time{}, 4*upgradeClients, "the load's first requests to succeed")
	up := switchVersion(t, v, l, old, next, reloadCommands(v)[0])
	c.check(t, v)
	l.waitSuccesses(t, up.returned, 4*upgradeClients, "the load to go on under "+next.version)
	down := switchVersion(t, v, l, next, old, reloadCommands(v)[1])
	c.check(t, v)
	l.waitSuccesses(t, down.returned, 4*upgradeClients, "the load to go on under "+old.version)
	samples := l.finish()

	judgeUpgradeLoad(t, samples, []*reloadWindow{up, down})
	// What the new version made under load, the old one opens.
	made := l.madeCorpus()
	made.check(t, v)
	t.Logf("after the roll back to %s: %s made under load (by both versions) decrypt and verify", old.version, made.summary())
}

// pluginBuild is a build of the plugin in the plugin directory, to be
// registered as the version it reports.
type pluginBuild struct{ version, command, sha string }

// buildPluginVersion builds the plugin reporting version, with the
// linker flag make plugin and make release set it with, into the plugin
// directory under the name make release gives it.
func buildPluginVersion(t *testing.T, version string) pluginBuild {
	t.Helper()
	out, err := exec.Command("bash", "-c", "source ../scripts/lib.sh && version_var").Output()
	if err != nil {
		t.Fatalf("scripts/lib.sh version_var: %v", err)
	}
	b := pluginBuild{version: version, command: pluginName + "_" + version}
	path := filepath.Join(pluginDir, b.command)
	build := exec.Command("go", "build", "-ldflags", "-X "+strings.TrimSpace(string(out))+"="+version, "-o", path, "../cmd/"+pluginName)
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the plugin as %s: %v: %s", version, err, msg)
	}
	t.Cleanup(func() { os.Remove(path) })
	if b.sha, err = fileSHA256(path); err != nil {
		t.Fatal(err)
	}
	return b
}

// register files b in v's catalog as the secret plugin hsmkms at its
// version, as the README's runbook does: `vault plugin register` on Vault,
// the catalog API on OpenBao, whose `plugin register` has no -env.
func (b pluginBuild) register(v *vaultServer) {
	v.t.Helper()
	env := []string{"HSMKMS_LIBRARY_DIRS=" + libraryDirs, entryEnv + "hsmkms", upgradeVersionEnv + b.version}
	var args []string
	if v.flavour == openBaoFlavour {
		args = []string{"write", "sys/plugins/catalog/secret/hsmkms", "sha256=" + b.sha, "version=" + b.version, "command=" + b.command}
		for _, e := range env {
			args = append(args, "env="+e)
		}
	} else {
		args = []string{"plugin", "register", "-sha256=" + b.sha, "-version=" + b.version, "-command=" + b.command}
		for _, e := range env {
			args = append(args, "-env="+e)
		}
		args = append(args, "secret", "hsmkms")
	}
	v.cli(args...)
}

// reloadWindow is one switch of the mount's version: when the tune and
// the reload were asked, when the reload call returned, and (once the
// load is over) the end of the window in which 5xx are allowed.
type reloadWindow struct {
	from, to               pluginBuild
	tuned, start, returned time.Time
	end                    time.Time // the first success of a request sent after returned
	fivexx                 int       // 5xx answers of requests in the window
}

// holds says whether s was under way in the window: answered after the
// reload call and sent before the window's first success.
func (w *reloadWindow) holds(s sample) bool {
	return !s.end.Before(w.start) && !s.start.After(w.end)
}

// reloadCommands are the two ways the README's runbook reloads kms/ on v's
// server, one for each switch. Vault 1.21.0's `vault plugin reload
// -mounts=kms/` fails in the root namespace (its CLI sends the root-wide
// reload, sys/plugins/reload/unknown, and gets a 404), so on Vault the
// plugin is reloaded by name, or the mount through the API; OpenBao's CLI
// does both.
func reloadCommands(v *vaultServer) [2][]string {
	if v.flavour == openBaoFlavour {
		return [2][]string{{"plugin", "reload", "-plugin=hsmkms"}, {"plugin", "reload", "-mounts=kms/"}}
	}
	return [2][]string{{"plugin", "reload", "-type=secret", "-plugin=hsmkms"}, {"write", "sys/plugins/reload/backend", "mounts=kms/"}}
}

// switchVersion switches kms/ from one build to the other under the load:
// tune, then reload with the server's CLI args, then wait for a request
// sent after the reload to succeed; the mount must then run the new
// version, in a process of its catalog entry.
func switchVersion(t *testing.T, v *vaultServer, l *upgradeLoad, from, to pluginBuild, reload []string) *reloadWindow {
	t.Helper()
	w := &reloadWindow{from: from, to: to, tuned: time.Now()}
	v.cli("secrets", "tune", "-plugin-version="+to.version, "kms/")
	// The tune only names the version; the running one serves until the
	// reload.
	checkRunningVersion(t, v, "kms/", from.version)
	w.start = time.Now()
	v.cli(reload...)
	w.returned = time.Now()
	l.waitSuccesses(t, w.returned, 1, "a request sent after the reload to "+to.version+" to succeed")
	checkRunningVersion(t, v, "kms/", to.version)
	pid := entryPID(t, v, "hsmkms", upgradeVersionEnv+to.version)
	t.Logf("switched kms/ from %s to %s with `%s %s`: the reload call took %v; %s runs as pid %d",
		from.version, to.version, v.name(), strings.Join(reload, " "), w.returned.Sub(w.start).Round(time.Millisecond), to.version, pid)
	return w
}

// judgeUpgradeLoad checks every answer of the load: a wrong one, a 4xx, a
// request left unanswered or a 5xx outside the reload windows fails the
// test. It reports each window's 5xx and length.
func judgeUpgradeLoad(t *testing.T, samples []sample, windows []*reloadWindow) {
	t.Helper()
	for _, w := range windows {
		w.end = firstSuccessSentAfter(samples, w.returned)
		if w.end.IsZero() {
			t.Fatalf("no request sent after the reload to %s succeeded", w.to.version)
		}
	}
	inWindow := func(s sample) *reloadWindow {
		for _, w := range windows {
			if w.holds(s) {
				return w
			}
		}
		return nil
	}
	wrong, refused := 0, 0
	for _, s := range samples {
		w := inWindow(s)
		switch {
		case s.wrong != "":
			wrong++
			t.Errorf("%s at %s: wrong answer: %s", s.op, s.start.Format("15:04:05.000"), s.wrong)
		case s.status == http.StatusOK:
		case s.status >= 500 && w != nil:
			w.fivexx++
		default:
			refused++
			t.Errorf("%s sent at %s (%s): %d %s; only a 5xx inside a reload window may fail",
				s.op, s.start.Format("15:04:05.000"), whenInSwitches(s.start, windows), s.status, s.msg)
		}
	}
	var outside []sample
	for _, s := range samples {
		if inWindow(s) == nil {
			outside = append(outside, s)
		}
	}
	t.Logf("load: %d requests by %d clients, %s; wrong answers %d; failures outside the reload windows %d; "+
		"outside the windows: median %v, p99 %v, longest %v",
		len(samples), upgradeClients, statusCounts(samples), wrong, refused,
		percentile(outside, 50), percentile(outside, 99), longest(outside).Round(time.Millisecond))
	for _, op := range opCounts(samples) {
		t.Logf("  %s", op)
	}
	byPhase := map[string][]sample{}
	var phases []string
	for _, s := range outside {
		p := whenInSwitches(s.start, windows)
		if byPhase[p] == nil {
			phases = append(phases, p)
		}
		byPhase[p] = append(byPhase[p], s)
	}
	for _, p := range phases {
		t.Logf("  sent %s: %d requests, median %v, p99 %v, longest %v", p, len(byPhase[p]),
			percentile(byPhase[p], 50), percentile(byPhase[p], 99), longest(byPhase[p]).Round(time.Millisecond))
	}
	for _, w := range windows {
		var inside []sample
		for _, s := range samples {
			if w.holds(s) {
				inside = append(inside, s)
			}
		}
		t.Logf("reload window %s → %s: %v (reload call %v, then %v to the first success sent after it); tune to reload %v; "+
			"%d requests in it, %s; 5xx: %d; median %v, p99 %v, longest %v",
			w.from.version, w.to.version, w.end.Sub(w.start).Round(time.Millisecond),
			w.returned.Sub(w.start).Round(time.Millisecond), w.end.Sub(w.returned).Round(time.Millisecond),
			w.start.Sub(w.tuned).Round(time.Millisecond), len(inside), statusCounts(inside), w.fivexx,
			percentile(inside, 50), percentile(inside, 99), longest(inside).Round(time.Millisecond))
		for _, m := range distinctMessages(inside) {
			t.Logf("  in the window: %s", m)
		}
	}
}

// firstSuccessSentAfter is the end of the first successful request sent
// after t0.
func firstSuccessSentAfter(samples []sample, t0 time.Time) time.Time {
	var first time.Time
	for _, s := range samples {
		if s.status == http.StatusOK && s.wrong == "" && !s.start.Before(t0) && (first.IsZero() || s.end.Before(first)) {
			first = s.end
		}
	}
	return first
}

// percentile is the p-th percentile of the samples' durations.
func percentile(samples []sample, p int) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	d := make([]time.Duration, len(samples))
	for i, s := range samples {
		d[i] = s.end.Sub(s.start)
	}
	slices.Sort(d)
	return d[(len(d)-1)*p/100].Round(time.Millisecond)
}

// whenInSwitches says where t lies against the switches, for messages.
func whenInSwitches(t time.Time, windows []*reloadWindow) string {
	where := "before the first tune"
	for _, w := range windows {
		switch {
		case !t.Before(w.end):
			where = "after the window of the switch to " + w.to.version
		case !t.Before(w.start):
			return "in the window of the switch to " + w.to.version
		case !t.Before(w.tuned):
			return "between the tune and the reload to " + w.to.version
		}
	}
	return where
}

// opCounts says, per operation, how many requests and their statuses.
func opCounts(samples []sample) []string {
	byOp := map[string][]sample{}
	var ops []string
	for _, s := range samples {
		if byOp[s.op] == nil {
			ops = append(ops, s.op)
		}
		byOp[s.op] = append(byOp[s.op], s)
	}
	slices.Sort(ops)
	var out []string
	for _, op := range ops {
		out = append(out, fmt.Sprintf("%s: %d (%s)", op, len(byOp[op]), statusCounts(byOp[op])))
	}
	return out
}
