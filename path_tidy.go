package hsmkms

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/hsm"
	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/keyring"
)

func (b *backend) pathTidy() *framework.Path {
	return &framework.Path{
		Pattern:      "tidy",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix, OperationVerb: "tidy"},
		Fields: map[string]*framework.FieldSchema{
			"destroy": {
				Type: framework.TypeBool,
				Description: "Destroy what the report lists as orphans. Default false: a dry run that only reports. " +
					"Destroying a key object cannot be undone: every ciphertext under it is lost.",
			},
			"destroy_mounts": {
				Type: framework.TypeCommaStringSlice,
				Description: "With destroy=true, also destroy the objects of these other mounts (by the uuid the dry run " +
					"shows), for mounts that were unmounted. Each must be proven gone: its marker on the token names a " +
					"mount of this Vault cluster whose accessor sys/mounts (read with vault_token) no longer lists.",
			},
			"vault_token": {
				Type:         framework.TypeString,
				Description:  "With destroy_mounts: a Vault token that may read sys/mounts, used once to see that the mounts are gone; never stored or logged.",
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
			"vault_addr": {
				Type:        framework.TypeString,
				Description: "With destroy_mounts: the address of this Vault's API as the plugin reaches it; default the plugin's VAULT_ADDR, else https://127.0.0.1:8200.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathTidyWrite,
				Summary:  "Report (and on request destroy) HSM objects without a key, and keys without an HSM object.",
			},
		},
		HelpSynopsis:    pathTidyHelpSyn,
		HelpDescription: pathTidyHelpDesc,
	}
}

type tidyObject struct {
	ObjectID string `json:"object_id"`
	Label    string `json:"label"`
	Class    string `json:"class"`
}

func describeObject(o hsm.ObjectInfo) tidyObject {
	class := map[uint]string{2: "public_key", 3: "private_key", 4: "secret_key"}[o.Class]
	if class == "" {
		class = fmt.Sprintf("class_%d", o.Class)
	}
	return tidyObject{ObjectID: hex.EncodeToString(o.ID), Label: o.Label, Class: class}
}

func (b *backend) pathTidyWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	destroy := d.Get("destroy").(bool)
	destroyMounts := map[string]bool{}
	for _, m := range d.Get("destroy_mounts").([]string) {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		if m == b.owner {
			return logical.ErrorResponse("destroy_mounts names this mount (%s); its orphans are destroyed with destroy=true alone", m), logical.ErrInvalidRequest
		}
		if hsm.OwnerAlive(m) {
			return logical.ErrorResponse("destroy_mounts names %s, a mount alive in this plugin process; its objects are in use", m), logical.ErrInvalidRequest
		}
		destroyMounts[m] = true
	}
	if len(destroyMounts) > 0 && !destroy {
		return logical.ErrorResponse("destroy_mounts needs destroy=true"), logical.ErrInvalidRequest
	}
	if len(destroyMounts) > 0 && d.Get("vault_token").(string) == "" {
		return logical.ErrorResponse("destroy_mounts needs vault_token: a token that may read sys/mounts, so that the plugin can see the mounts are gone"), logical.ErrInvalidRequest
	}
	client, _, err := b.hsmClient(ctx, req.Storage)
	if err != nil {
		return respondError("tidy", err)
	}

	// No key is created while the report is made and acted on: an object
	// whose key is being stored would look like an orphan.
	b.ring.Lock()
	defer b.ring.Unlock()
	objects, err := client.ListObjects(ctx, keyring.ObjectLabelPrefix)
	if err != nil {
		return respondError("tidy", err)
	}
	used, missing, err := b.keyObjectUse(ctx, req.Storage, objects)
	if err != nil {
		return nil, err
	}

	var orphans []tidyObject
	var orphanObjects []hsm.ObjectInfo
	others := map[string]map[string]interface{}{}
	markers := map[string]keyring.MountMarker{}
	for _, o := range objects {
		owner, ok := keyring.LabelOwner(o.Label)
		if !ok {
			continue
		}
		if markerOwner, marker, isMarker := keyring.ParseMarker(o.Label); isMarker {
			markers[markerOwner] = marker
			if markerOwner == b.owner {
				continue // this mount's own record
			}
		}
		if recordOwner, _, isRecord := keyring.ParseKEKRecord(o.Label); isRecord && recordOwner == b.owner {
			continue // this mount's record of the KEK it found
		}
		switch {
		case owner == b.owner:
			if !used[hex.EncodeToString(o.ID)] {
				orphans = append(orphans, describeObject(o))
				orphanObjects = append(orphanObjects, o)
			}
		default:
			entry, ok := others[owner]
			if !ok {
				entry = map[string]interface{}{"alive_in_this_process": hsm.OwnerAlive(owner), "objects": []tidyObject{}}
				others[owner] = entry
			}
			entry["objects"] = append(entry["objects"].([]tidyObject), describeObject(o))
			if destroyMounts[owner] && !used[hex.EncodeToString(o.ID)] {
				orphanObjects = append(orphanObjects, o)
			}
		}
	}

	for owner, entry := range others {
		if marker, ok := markers[owner]; ok {
			entry["cluster_id"], entry["accessor"] = marker.ClusterID, marker.Accessor
		}
	}
	if len(destroyMounts) > 0 {
		if err := b.provenGone(ctx, destroyMounts, markers, d); err != nil {
			return respondError("tidy", err)
		}
	}

	var destroyed []string
	if destroy {
		seen := map[string]bool{}
		for _, o := range orphanObjects {
			h := hex.EncodeToString(o.ID)
			if seen[h] {
				continue // both halves of a key pair go at once
			}
			seen[h] = true
			if err := client.DestroyObjects(ctx, o.ID, hsm.ExactLabel(o.Label)); err != nil {
				return respondError("tidy", err)
			}
			destroyed = append(destroyed, h)
		}
		b.Logger().Info("tidy destroyed HSM objects", "count", len(destroyed), "other_mounts", len(destroyMounts))
	}
	sort.Strings(destroyed)
	return &logical.Response{Data: map[string]interface{}{
		"dry_run":                  !destroy,
		"mount_uuid":               b.owner,
		"orphan_objects":           nonNil(orphans),
		"keys_missing_objects":     nonNil(missing),
		"other_mounts":             others,
		"destroyed_object_ids":     nonNil(destroyed),
		"objects_of_this_mount_ok": len(used),
	}}, nil
}

// provenGone refuses, saying why, when one of the mounts named is not
// proven gone.
// A mount is gone when its marker ties it to this Vault cluster and
// sys/mounts, read with the caller's token, no longer lists its accessor.
// Not being alive in this process proves nothing: another catalog entry
// runs another plugin process.
func (b *backend) provenGone(ctx context.Context, mounts map[string]bool, markers map[string]keyring.MountMarker, d *framework.FieldData) error {
	refuse := func(format string, args ...interface{}) error {
		return keyring.FieldErrorf("destroy_mounts", format+"; nothing was destroyed", args...)
	}
	clusterID := ""
	if sys := b.System(); sys != nil {
		clusterID, _ = sys.ClusterID(ctx)
	}
	var accessors map[string]string
	for uuid := range mounts {
		marker, ok := markers[uuid]
		switch {
		case !ok:
			return refuse("mount %s left no marker on the token (a release before markers made it, or it never served a request), so nothing shows it is gone; if you are sure, destroy its objects with the HSM's tools", uuid)
		case clusterID == "" || marker.ClusterID != clusterID:
			return refuse("mount %s belongs to Vault cluster %q, not this one (%q): its mounts cannot be seen from here", uuid, marker.ClusterID, clusterID)
		}
		if accessors == nil {
			var err error
			if accessors, err = mountedAccessors(d.Get("vault_addr").(string), d.Get("vault_token").(string)); err != nil {
				return refuse("could not read sys/mounts to see the mounts are gone: %v", err)
			}
		}
		if path, mounted := accessors[marker.Accessor]; mounted {
			return refuse("mount %s is %s (accessor %s), mounted on this Vault: its objects are in use", uuid, path, marker.Accessor)
		}
	}
	return nil
}

type missingObject struct {
	Key      string `json:"key"`
	Version  int    `json:"version"`
	ObjectID string `json:"object_id"`
}

// keyObjectUse returns the object ids this mount's keys use, and the key
// versions whose objects are not on the token. Callers hold keysMu.
func (b *backend) keyObjectUse(ctx context.Context, s logical.Storage, objects []hsm.ObjectInfo) (map[string]bool, []missingObject, error) {
	names, err := s.List(ctx, keyring.KeyStoragePrefix)
	if err != nil {
		return nil, nil, fmt.Errorf("listing keys: %w", err)
	}
	used := map[string]bool{}
	if w, err := keyring.LoadWrappingKey(ctx, s); err != nil {
		return nil, nil, err
	} else if w != nil {
		used[hex.EncodeToString(w.ObjectID)] = true
	}
	var missing []missingObject
	for _, name := range names {
		k, err := keyring.Load(ctx, s, name)
		if err != nil {
			return nil, nil, err
		}
		if k == nil {
			continue
		}
		for v, kv := range k.Versions {
			if kv == nil || len(kv.ObjectID) == 0 || kv.Wrapped() {
				continue // no token object of its own
			}
			id := hex.EncodeToString(kv.ObjectID)
			used[id] = true
			if kv.HMACObjectID != nil {
				used[hex.EncodeToString(kv.HMACObjectID)] = true
			}
			// Adopted objects keep their own labels, so the list by
			// this plugin's label prefix never holds them.
			if kv.OriginName() != keyring.OriginAdopted && !containsObject(objects, kv.ObjectID) {
				missing = append(missing, missingObject{Key: name, Version: v, ObjectID: id})
			}
		}
	}
	sort.Slice(missing, func(i, j int) bool {
		if missing[i].Key != missing[j].Key {
			return missing[i].Key < missing[j].Key
		}
		return missing[i].Version < missing[j].Version
	})
	return used, missing, nil
}

func containsObject(objects []hsm.ObjectInfo, id []byte) bool {
	for _, o := range objects {
		if bytes.Equal(o.ID, id) {
			return true
		}
	}
	return false
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

const pathTidyHelpSyn = `Find HSM objects without a key, and keys without an HSM object.`

const pathTidyHelpDesc = `
Unmounting leaves the mount's key objects on the token (as Vault leaves any
engine's data): the plugin cannot tell an unmount from a shutdown. Every
object the plugin makes is labelled hsmkms/<mount uuid>/<key>/v<version>.

tidy lists, without changing anything:
  - orphan_objects: objects of this mount that no key uses (a creation that
    failed, say);
  - keys_missing_objects: key versions of this mount whose object is not on
    the token;
  - other_mounts: objects of other mounts, by mount uuid, and whether that
    mount is alive in this plugin process.

With destroy=true it destroys this mount's orphans; destroy_mounts=<uuid,...>
adds the objects of mounts you know were unmounted. Objects of mounts alive in
this process, and objects the plugin did not make, are never touched. A mount
of another Vault cluster sharing the token is invisible from here: never name
a uuid you are not sure is gone.

    $ vault write kms/tidy                       # dry run
    $ vault write kms/tidy destroy=true destroy_mounts=<uuid of an old mount>
`
