package keyring

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzKeyName(f *testing.F) {
	for _, s := range []string{"app1", "a", "a..b", "../x", "a/b", "-lead", ".hidden", "ünïcödé", strings.Repeat("k", 129), "a b", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if CheckName(name) != nil {
			return
		}
		// An accepted name is safe as a storage path and a label part.
		if name == "" || len(name) > maxKeyNameLen || strings.Contains(name, "..") || strings.ContainsAny(name, "/\\ \x00:") ||
			!utf8.ValidString(name) || name[0] == '.' || name[0] == '-' {
			t.Fatalf("accepted key name %q", name)
		}
	})
}
