package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
)

// conformanceTable is the table this test checks, relative to the e2e
// package directory in which go test runs.
// conformanceTable is the README; the table lies between the
// transit-conformance markers.
const conformanceTable = "../README.md"

// The Transit conformance table against Transit's and the plugin's own
// OpenAPI, read from one Vault that mounts both: every Transit path and
// field has a row; a row claiming support (supported, partial) is in the
// plugin's OpenAPI, a row saying "not supported" is not, and every row
// that is not plain "supported" says why.
func TestTransitConformanceTable(t *testing.T) {
	v := startDevVault(t, softHSM())
	v.configure("kms")
	v.cli("secrets", "enable", "transit")
	spec := parseOpenAPI(t, v.rootBody("GET", "sys/internal/specs/openapi", nil))
	transit, plugin := spec.mount(t, "transit"), spec.mount(t, "kms")
	// A spec that lost a mount's paths (a changed generic_mount_paths
	// default, say) would otherwise pass with nothing to compare.
	if len(transit) < 30 || len(plugin) < 30 {
		t.Fatalf("OpenAPI has %d transit/ and %d kms/ paths; want Transit's and the plugin's full sets", len(transit), len(plugin))
	}

	rows := readConformanceTable(t)
	var missing []string
	for _, p := range specKeys(transit) {
		if _, ok := rows[p]["—"]; !ok {
			missing = append(missing, suggestRow(p, "—", plugin[p] != nil))
		}
		for _, f := range specKeys(transit[p].fields) {
			if _, ok := rows[p][f]; !ok {
				missing = append(missing, suggestRow(p, f, plugin[p] != nil && plugin[p].fields[f]))
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("Transit has %d paths and fields that %s does not list; add these rows (check the status, give a reason):\n%s",
			len(missing), conformanceTable, strings.Join(missing, "\n"))
	}

	counts := map[string]int{}
	for _, p := range specKeys(rows) {
		for _, f := range specKeys(rows[p]) {
			status := rows[p][f]
			kind, reason, _ := strings.Cut(status, ":")
			reason = strings.TrimSpace(reason)
			what := p
			if f != "—" {
				what = p + " " + f
			}
			tp := transit[p]
			switch {
			case tp == nil:
				t.Errorf("row %s: Transit has no path %s", what, p)
				continue
			case f != "—" && !tp.fields[f]:
				t.Errorf("row %s: Transit's %s has no field %s", what, p, f)
				continue
			}
			pp := plugin[p]
			inPlugin := pp != nil && (f == "—" || pp.fields[f])
			switch kind {
			case "supported":
				if reason != "" || strings.Contains(status, ":") {
					t.Errorf("row %s: %q; a supported row has no reason (use partial: <reason>)", what, status)
				}
				fallthrough
			case "partial":
				if kind == "partial" && reason == "" {
					t.Errorf("row %s: partial without a reason", what)
				}
				if !inPlugin {
					t.Errorf("row %s says %s, but the plugin's OpenAPI has no %s", what, kind, what)
					continue
				}
				if f == "—" {
					for _, m := range tp.methods {
						if !slices.Contains(pp.methods, m) {
							t.Errorf("row %s says %s, but the plugin's %s has no %s operation (Transit's has %v)", what, kind, p, m, tp.methods)
						}
					}
				}
			case "not supported":
				if reason == "" {
					t.Errorf("row %s: not supported without a reason", what)
				}
				if inPlugin {
					t.Errorf("row %s says not supported, but the plugin's OpenAPI has it: update the table", what)
				}
			default:
				t.Errorf("row %s: status %q; want supported, partial: <reason> or not supported: <reason>", what, status)
			}
			counts[kind]++
		}
	}
	t.Logf("Transit: %d paths; table: %d supported, %d partial, %d not supported rows",
		len(transit), counts["supported"], counts["partial"], counts["not supported"])
}

// openAPIDoc is the part of Vault's OpenAPI document the test reads.
type openAPIDoc struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"schemas"`
	} `json:"components"`
}

type openAPIOperation struct {
	OperationID string `json:"operationId"`
	RequestBody *struct {
		Content map[string]struct {
			Schema struct {
				Ref string `json:"$ref"`
			} `json:"schema"`
		} `json:"content"`
	} `json:"requestBody"`
}

// openAPIPath is one path of a mount: its operations (get, post, delete)
// and the fields of its request bodies. Path parameters are part of the
// path, and the list flag of a LIST is its operation, so neither is a
// field here.
type openAPIPath struct {
	methods []string
	fields  map[string]bool
}

func parseOpenAPI(t *testing.T, body []byte) *openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("sys/internal/specs/openapi: %v", err)
	}
	return &doc
}

// mount is the paths under /mount/, relative to it.
func (doc *openAPIDoc) mount(t *testing.T, mount string) map[string]*openAPIPath {
	t.Helper()
	out := map[string]*openAPIPath{}
	for full, item := range doc.Paths {
		rel, ok := strings.CutPrefix(full, "/"+mount+"/")
		if !ok {
			continue
		}
		p := &openAPIPath{fields: map[string]bool{}}
		for _, m := range []string{"get", "post", "delete"} {
			raw, ok := item[m]
			if !ok {
				continue
			}
			p.methods = append(p.methods, m)
			var op openAPIOperation
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", m, full, err)
			}
			if op.RequestBody == nil {
				continue
			}
			for _, f := range doc.requestFields(t, full, m, op) {
				p.fields[f] = true
			}
		}
		out[rel] = p
	}
	return out
}

// requestFields are the properties of an operation's request body schema.
// Transit's operations name it with $ref; an external plugin's come
// through Vault with an empty schema (the $ref is lost on the way), but
// the schema is there under the name Vault gives it, its operationId in
// CamelCase plus "Request".
func (doc *openAPIDoc) requestFields(t *testing.T, path, method string, op openAPIOperation) []string {
	t.Helper()
	name := ""
	if c, ok := op.RequestBody.Content["application/json"]; ok && c.Schema.Ref != "" {
		name = c.Schema.Ref[strings.LastIndex(c.Schema.Ref, "/")+1:]
	} else {
		for _, w := range strings.Split(op.OperationID, "-") {
			if w != "" {
				name += strings.ToUpper(w[:1]) + w[1:]
			}
		}
		name += "Request"
	}
	schema, ok := doc.Components.Schemas[name]
	if !ok {
		t.Fatalf("%s %s: request body schema %q (operationId %q) is not in components.schemas", method, path, name, op.OperationID)
	}
	return specKeys(schema.Properties)
}

// readConformanceTable is the table's rows: path → field ("—" for the path
// itself) → status.
func readConformanceTable(t *testing.T) map[string]map[string]string {
	t.Helper()
	body, err := os.ReadFile(conformanceTable)
	if err != nil {
		t.Fatal(err)
	}
	text := string(body)
	begin, end := strings.Index(text, "<!-- transit-conformance:begin -->"), strings.Index(text, "<!-- transit-conformance:end -->")
	if begin < 0 || end < begin {
		t.Fatalf("%s has no transit-conformance:begin/end markers around the table", conformanceTable)
	}
	offset := strings.Count(text[:begin], "\n")
	rows := map[string]map[string]string{}
	n := 0
	for i, line := range strings.Split(text[begin:end], "\n") {
		i += offset
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 3 {
			t.Errorf("%s:%d: want 3 cells (path, field, status): %q", conformanceTable, i+1, line)
			continue
		}
		p, f, status := strings.Trim(cells[0], "`"), strings.Trim(cells[1], "`"), strings.TrimSpace(cells[2])
		if rows[p] == nil {
			rows[p] = map[string]string{}
		}
		if _, dup := rows[p][f]; dup {
			t.Errorf("%s:%d: %s %s is listed twice", conformanceTable, i+1, p, f)
		}
		rows[p][f] = status
		n++
	}
	if n == 0 {
		t.Fatalf("%s has no rows", conformanceTable)
	}
	return rows
}

// suggestRow is a table row for what Transit has and the table lacks,
// with the status the plugin's OpenAPI suggests; a person writes the
// reason.
func suggestRow(path, field string, inPlugin bool) string {
	status := "not supported: REASON"
	if inPlugin {
		status = "supported"
	}
	if field != "—" {
		field = "`" + field + "`"
	}
	return fmt.Sprintf("| `%s` | %s | %s |", path, field, status)
}

func specKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
