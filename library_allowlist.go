package hsmkms

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// LibraryDirsEnv names the environment variable, set when the plugin is
// registered (the catalog's env, sys/plugins/catalog/secret/NAME), that lists the directories a
// PKCS#11 module may be loaded from, separated by colons.
const LibraryDirsEnv = "HSMKMS_LIBRARY_DIRS"

// defaultLibraryDirs are the usual system PKCS#11 module directories.
var defaultLibraryDirs = []string{
	"/usr/lib/softhsm",
	"/usr/lib/x86_64-linux-gnu/softhsm",
	"/usr/lib/aarch64-linux-gnu/softhsm",
	"/usr/lib/pkcs11",
	"/usr/lib/x86_64-linux-gnu/pkcs11",
	"/usr/lib/aarch64-linux-gnu/pkcs11",
	"/usr/lib64/pkcs11",
	"/usr/local/lib/softhsm",
	"/usr/local/lib/pkcs11",
}

// libraryAllowList reads the allow-list once, at plugin start. Every
// directory is resolved, so a symlinked directory cannot widen it later.
func libraryAllowList() ([]string, error) {
	dirs := defaultLibraryDirs
	if v := strings.TrimSpace(os.Getenv(LibraryDirsEnv)); v != "" {
		dirs = filepath.SplitList(v)
	}
	var out []string
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("%s: %q is not an absolute path", LibraryDirsEnv, d)
		}
		if resolved, err := filepath.EvalSymlinks(d); err == nil {
			d = resolved
		}
		out = append(out, filepath.Clean(d))
	}
	return out, nil
}

// checkLibraryPath returns the resolved path of library when it is an
// absolute path to a regular file that, after resolving symlinks, lies
// directly or below one of the allowed directories. The error is written
// for the operator.
func checkLibraryPath(library string, allowed []string) (string, error) {
	if library == "" {
		return "", fmt.Errorf("library is required: the absolute path of the PKCS#11 module")
	}
	if !filepath.IsAbs(library) {
		return "", fmt.Errorf("library %q is not an absolute path", library)
	}
	resolved, err := filepath.EvalSymlinks(library)
	if err != nil {
		return "", fmt.Errorf("library %q does not exist or cannot be resolved", library)
	}
	info, err := os.Stat(resolved)
	if err != nil || !info.Mode().IsRegular() {
		return "", fmt.Errorf("library %q is not a regular file", library)
	}
	for _, dir := range allowed {
		rel, err := filepath.Rel(dir, resolved)
		if err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel) {
			return resolved, nil
		}
	}
	return "", fmt.Errorf("library %q resolves to %q, outside the directories this plugin may load modules from (%s); the list is set by %s when the plugin is registered",
		library, resolved, strings.Join(allowed, ", "), LibraryDirsEnv)
}
