package hsmkms

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// Tags and description are set at creation and by keys/:name/config,
// bounded, shown on read and in LIST's key_info, and LIST filters by tag
// and state.
func TestTagsAndDescription(t *testing.T) {
	m := configuredMount(t, map[string]interface{}{"max_keys": 0})
	m.mustOK(logical.UpdateOperation, "keys/prod", map[string]interface{}{"tags": map[string]interface{}{"env": "prod", "team": "payments"}, "description": "card data"})
	m.mustOK(logical.UpdateOperation, "keys/dev", map[string]interface{}{"tags": "env=dev"})
	read := m.mustOK(logical.ReadOperation, "keys/prod", nil)
	if fmt.Sprint(read.Data["tags"]) != "map[env:prod team:payments]" || read.Data["description"] != "card data" {
		t.Fatalf("read: tags %v description %v", read.Data["tags"], read.Data["description"])
	}
	for filter, want := range map[string]string{"env=prod": "[prod]", "env": "[dev prod]", "team=payments": "[prod]", "env=test": "[]"} {
		list := m.mustOK(logical.ListOperation, "keys/", map[string]interface{}{"tag": filter})
		if got := fmt.Sprint(list.Data["keys"]); got != want && !(want == "[]" && list.Data["keys"] == nil) {
			t.Errorf("LIST tag=%s: %s, want %s", filter, got, want)
		}
	}
	list := m.mustOK(logical.ListOperation, "keys/", map[string]interface{}{"state": "active"})
	info := list.Data["key_info"].(map[string]interface{})["prod"].(map[string]interface{})
	if info["description"] != "card data" || fmt.Sprint(info["tags"]) != "map[env:prod team:payments]" || info["type"] != "aes256-gcm96" {
		t.Fatalf("key_info: %v", info)
	}
	m.mustOK(logical.UpdateOperation, "keys/prod/config", map[string]interface{}{"tags": map[string]interface{}{"env": "prod"}, "description": "cards"})
	if read := m.mustOK(logical.ReadOperation, "keys/prod", nil); fmt.Sprint(read.Data["tags"]) != "map[env:prod]" || read.Data["description"] != "cards" {
		t.Fatalf("after config: %v %v", read.Data["tags"], read.Data["description"])
	}

	many := map[string]interface{}{}
	for i := range 51 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	for name, tc := range map[string]struct {
		data map[string]interface{}
		want string
	}{
		"51 tags":         {map[string]interface{}{"tags": many}, "at most 50"},
		"bad key":         {map[string]interface{}{"tags": map[string]interface{}{"-x": "v"}}, `tag key "-x"`},
		"long value":      {map[string]interface{}{"tags": map[string]interface{}{"k": strings.Repeat("v", 257)}}, "at most 256"},
		"control char":    {map[string]interface{}{"tags": map[string]interface{}{"k": "a\x01b"}}, "printable"},
		"long desc":       {map[string]interface{}{"description": strings.Repeat("d", 4097)}, "at most 4096"},
		"bad state":       {nil, ""},
		"not a tag value": {map[string]interface{}{"tags": map[string]interface{}{"k": []interface{}{1}}}, "tags"},
	} {
		if tc.data == nil {
			continue
		}
		m.mustFail(logical.UpdateOperation, "keys/bad", tc.data, tc.want)
		m.mustFail(logical.UpdateOperation, "keys/prod/config", tc.data, tc.want)
		_ = name
	}
	m.mustFail(logical.ListOperation, "keys/", map[string]interface{}{"state": "gone"}, "state")
}
