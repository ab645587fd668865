package hsmkms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// testToken and otherToken are SoftHSM2 tokens; nssToken is an NSS softokn
// token, for the tests that show the backend on a second implementation.
var testToken, otherToken, nssToken *tokentest.Token

func TestMain(m *testing.M) {
	os.Exit(tokentest.RunWithTokens(m, func(t map[tokentest.Kind][]*tokentest.Token) {
		testToken, otherToken = t[tokentest.SoftHSM2][0], t[tokentest.SoftHSM2][1]
		nssToken = t[tokentest.NSS][0]
	},
		tokentest.Spec{Label: "backend-a", PIN: "4321"}, tokentest.Spec{Label: "backend-b", PIN: "8765"}))
}

// testMount is one mount of the backend with its own in-memory storage.
type testMount struct {
	t       *testing.T
	b       *backend
	storage logical.Storage
}

func newMount(t *testing.T) *testMount {
	t.Helper()
	allowed, err := libraryAllowList()
	if err != nil {
		t.Fatal(err)
	}
	return newMountWithAllowList(t, allowed)
}

func newMountWithAllowList(t *testing.T, allowed []string) *testMount {
	t.Helper()
	return newMountOn(t, allowed, &logical.InmemStorage{}, "")
}

// restart is the mount after Vault restarted the plugin: a new backend on
// the same storage and mount uuid, with empty caches; the old one is
// cleaned up as Vault does.
func (m *testMount) restart(t *testing.T) *testMount {
	t.Helper()
	m.b.clean(context.Background())
	allowed, err := libraryAllowList()
	if err != nil {
		t.Fatal(err)
	}
	return newMountOn(t, allowed, m.storage, m.b.owner)
}

func newMountOn(t *testing.T, allowed []string, storage logical.Storage, uuid string) *testMount {
	t.Helper()
	conf := logical.TestBackendConfig()
	conf.StorageView = storage
	conf.BackendUUID = uuid
	system := logical.TestSystemView()
	system.ClusterUUID = testClusterID
	conf.System = system
	b := newBackend(allowed)
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.clean(context.Background()) })
	return &testMount{t: t, b: b, storage: conf.StorageView}
}

// configuredMount is a mount configured on testToken with a fresh default
// key name, so tests do not share keys.
func configuredMount(t *testing.T, extra map[string]interface{}) *testMount {
	t.Helper()
	m := newMount(t)
	data := map[string]interface{}{
		"library":     testToken.Library,
		"token_label": testToken.Label,
		"pin":         testToken.PIN,
	}
	for k, v := range extra {
		data[k] = v
	}
	m.mustOK(logical.UpdateOperation, "config", data)
	return m
}

func (m *testMount) do(op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	m.t.Helper()
	req := &logical.Request{
		Operation:     op,
		Path:          path,
		Data:          data,
		Storage:       m.storage,
		MountPoint:    "kms/",
		MountAccessor: m.accessor(),
	}
	return m.b.HandleRequest(context.Background(), req)
}

// testClusterID is the Vault cluster every test mount belongs to.
const testClusterID = "test-cluster"

// accessor is the mount's accessor as Vault would give it.
func (m *testMount) accessor() string { return "hsmkms_" + m.b.owner[:8] }

func (m *testMount) mustOK(op logical.Operation, path string, data map[string]interface{}) *logical.Response {
	m.t.Helper()
	resp, err := m.do(op, path, data)
	if err != nil || (resp != nil && resp.IsError()) {
		m.t.Fatalf("%s %s: err=%v resp=%v", op, path, err, respError(resp))
	}
	return resp
}

// mustFail asserts a 400 whose message contains want.
func (m *testMount) mustFail(op logical.Operation, path string, data map[string]interface{}, want string) {
	m.t.Helper()
	resp, err := m.do(op, path, data)
	if !errors.Is(err, logical.ErrInvalidRequest) {
		m.t.Fatalf("%s %s: err=%v (resp %v), want ErrInvalidRequest", op, path, err, respError(resp))
	}
	if resp == nil || !resp.IsError() {
		m.t.Fatalf("%s %s: no error response", op, path)
	}
	if msg := respError(resp); !strings.Contains(msg, want) {
		m.t.Fatalf("%s %s: message %q does not contain %q", op, path, msg, want)
	}
}

func respError(resp *logical.Response) string {
	if resp == nil {
		return "<nil>"
	}
	if e, ok := resp.Data["error"].(string); ok {
		return e
	}
	return fmt.Sprint(resp.Data)
}

func dump(v interface{}) string { return fmt.Sprintf("%v", v) }

func jsonUnmarshal(b []byte, v interface{}) error { return json.Unmarshal(b, v) }

// anyLabel lets a test destroy an object behind the plugin's back, whatever
// its label.
func anyLabel(string) bool { return true }
