package hsmkms

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func tidyObjectIDs(resp *logical.Response, field string) map[string]bool {
	out := map[string]bool{}
	switch list := resp.Data[field].(type) {
	case []tidyObject:
		for _, o := range list {
			out[o.ObjectID] = true
		}
	case []string:
		for _, id := range list {
			out[id] = true
		}
	}
	return out
}

// tidy reports and destroys the objects an unmounted mount left on the
// token and this mount's own orphans; a live mount's objects and objects
// the plugin did not make are never touched.
func TestTidyFindsOrphansAndLeavesTheRestAlone(t *testing.T) {
	ctx := context.Background()
	gone := configuredMount(t, nil)
	gone.mustOK(logical.UpdateOperation, "keys/old-aes", nil)
	gone.mustOK(logical.UpdateOperation, "keys/old-ec", map[string]interface{}{"type": "ecdsa-p256"})
	goneIDs := []string{hexID(gone.objectID("old-aes", 1)), hexID(gone.objectID("old-ec", 1)), hexID(gone.objectID("default", 1))}
	goneUUID := gone.b.owner
	gone.b.clean(ctx) // unmounted

	live := configuredMount(t, map[string]interface{}{"default_key": "live-default"})
	live.mustOK(logical.UpdateOperation, "keys/live-aes", nil)
	liveID := hexID(live.objectID("live-aes", 1))

	m := configuredMount(t, map[string]interface{}{"default_key": "tidy-default"})
	m.mustOK(logical.UpdateOperation, "keys/mine", nil)
	m.mustOK(logical.UpdateOperation, "keys/lost", nil)
	client, _, err := m.b.hsmClient(ctx, m.storage)
	if err != nil {
		t.Fatal(err)
	}
	// An object of this mount that no key uses (a creation that failed),
	// one of another application, and a key whose object went away.
	orphan, _ := client.NewObjectID(ctx)
	if err := client.GenerateAESKey(ctx, orphan, keyring.ObjectLabel(m.b.owner, "ghost", 1), 256, hsm.Usage{Encrypt: true}); err != nil {
		t.Fatal(err)
	}
	foreign, _ := client.NewObjectID(ctx)
	if err := client.GenerateAESKey(ctx, foreign, "another application's key", 256, hsm.Usage{Encrypt: true}); err != nil {
		t.Fatal(err)
	}
	if err := client.DestroyObjects(ctx, m.objectID("lost", 1), anyLabel); err != nil {
		t.Fatal(err)
	}

	dry := m.mustOK(logical.UpdateOperation, "tidy", nil)
	if got := tidyObjectIDs(dry, "orphan_objects"); len(got) != 1 || !got[hexID(orphan)] {
		t.Fatalf("orphans: %v, want only %s", dry.Data["orphan_objects"], hexID(orphan))
	}
	missing := dry.Data["keys_missing_objects"].([]missingObject)
	if len(missing) != 1 || missing[0].Key != "lost" || missing[0].Version != 1 {
		t.Fatalf("keys missing objects: %+v", missing)
	}
	others := dry.Data["other_mounts"].(map[string]map[string]interface{})
	if others[goneUUID]["alive_in_this_process"] != false || others[live.b.owner]["alive_in_this_process"] != true {
		t.Fatalf("other mounts: %v", others)
	}
	if ok, _ := client.ObjectExists(ctx, orphan); !ok {
		t.Fatal("the dry run destroyed something")
	}

	m.mustFail(logical.UpdateOperation, "tidy", map[string]interface{}{"destroy": true, "destroy_mounts": live.b.owner}, "alive in this plugin process")
	m.mustFail(logical.UpdateOperation, "tidy", map[string]interface{}{"destroy_mounts": goneUUID}, "needs destroy=true")
	m.mustFail(logical.UpdateOperation, "tidy", map[string]interface{}{"destroy": true, "destroy_mounts": goneUUID}, "needs vault_token")

	// Not being alive in this process proves nothing: sys/mounts decides.
	// While it lists the mount's accessor (a mount another plugin process
	// serves), its objects stay.
	mounted := map[string]string{"kms-gone/": gone.accessor(), "kms-live/": live.accessor()}
	sysMounts := fakeSysMounts(t, func() map[string]string { return mounted })
	proof := map[string]interface{}{"destroy": true, "destroy_mounts": goneUUID, "vault_token": "s.test", "vault_addr": sysMounts}
	m.mustFail(logical.UpdateOperation, "tidy", proof, "kms-gone/ (accessor "+gone.accessor()+"), mounted on this Vault")
	if ok, _ := client.ObjectExists(ctx, gone.objectID("old-aes", 1)); !ok {
		t.Fatal("a refused tidy destroyed something")
	}
	delete(mounted, "kms-gone/")
	done := m.mustOK(logical.UpdateOperation, "tidy", proof)
	destroyed := tidyObjectIDs(done, "destroyed_object_ids")
	for _, id := range append(goneIDs, hexID(orphan)) {
		if !destroyed[id] {
			t.Errorf("%s not destroyed: %v", id, destroyed)
		}
	}
	for _, id := range [][]byte{orphan} {
		if ok, _ := client.ObjectExists(ctx, id); ok {
			t.Errorf("orphan %x still on the token", id)
		}
	}
	if ok, _ := client.ObjectExists(ctx, foreign); !ok {
		t.Fatal("tidy destroyed an object the plugin did not make")
	}
	if destroyed[liveID] {
		t.Fatal("tidy destroyed a live mount's object")
	}
	if decrypt(t, live, "live-aes", encrypt(t, live, "live-aes", "alive", nil), nil) != "alive" {
		t.Fatal("the live mount's key no longer works")
	}
	if decrypt(t, m, "mine", encrypt(t, m, "mine", "mine", nil), nil) != "mine" {
		t.Fatal("this mount's key no longer works")
	}
}

func hexID(id []byte) string { return hex.EncodeToString(id) }

// A mount with no marker on the token, or one of another Vault cluster,
// cannot be proven gone: tidy refuses to destroy its objects.
func TestTidyRefusesMountsItCannotProveGone(t *testing.T) {
	ctx := context.Background()
	other := configuredMount(t, map[string]interface{}{"default_key": "other-cluster-default"})
	other.b.System().(*logical.StaticSystemView).ClusterUUID = "another-cluster"
	other.b.markerDone.Store(false)
	client, _, err := other.b.hsmClient(ctx, other.storage)
	if err != nil {
		t.Fatal(err)
	}
	other.b.ensureMountMarker(ctx, client, other.accessor())
	otherUUID := other.b.owner
	other.b.clean(ctx)

	unmarked := newMount(t)
	unmarked.b.markerDone.Store(true) // as a release before markers
	unmarked.mustOK(logical.UpdateOperation, "config", map[string]interface{}{
		"library": testToken.Library, "token_label": testToken.Label, "pin": testToken.PIN, "default_key": "unmarked-default",
	})
	unmarkedUUID := unmarked.b.owner
	unmarked.b.clean(ctx)

	m := configuredMount(t, map[string]interface{}{"default_key": "prover-default"})
	sysMounts := fakeSysMounts(t, func() map[string]string { return map[string]string{} })
	for uuid, want := range map[string]string{
		otherUUID:    fmt.Sprintf(`destroy_mounts: mount %s belongs to Vault cluster "another-cluster", not this one (%q): its mounts cannot be seen from here; nothing was destroyed`, otherUUID, testClusterID),
		unmarkedUUID: fmt.Sprintf("destroy_mounts: mount %s left no marker on the token (a release before markers made it, or it never served a request), so nothing shows it is gone; if you are sure, destroy its objects with the HSM's tools; nothing was destroyed", unmarkedUUID),
	} {
		m.mustFailWith(logical.UpdateOperation, "tidy", map[string]interface{}{
			"destroy": true, "destroy_mounts": uuid, "vault_token": "s.test", "vault_addr": sysMounts,
		}, want)
	}
}

// fakeSysMounts answers GET /v1/sys/mounts as Vault does, with the mounts
// (path -> accessor) mounts returns at that moment.
func fakeSysMounts(t *testing.T, mounts func() map[string]string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/sys/mounts" || r.Header.Get("X-Vault-Token") != "s.test" {
			http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
			return
		}
		data := map[string]interface{}{}
		for path, accessor := range mounts() {
			data[path] = map[string]interface{}{"accessor": accessor, "type": "hsmkms"}
		}
		_ = json.NewEncoder(w).Encode(map[string]interface{}{"data": data})
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
