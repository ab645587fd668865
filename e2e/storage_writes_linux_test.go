//go:build linux

package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/hsmkms/vault-plugin-secrets-hsmkms/internal/tokentest"
)

// storageWatch counts the entries Vault's file storage writes under one
// directory tree, with inotify. The file backend writes an entry as a
// temporary file renamed onto "_<name>" (sdk/physical/file, PutInternal),
// so each IN_MOVED_TO of a "_" name is exactly one storage write.
type storageWatch struct {
	t       *testing.T
	fd      int
	root    string
	markDir string           // the test's own watched directory: see writes
	dirs    map[int32]string // watch descriptor → directory
	marks   int
	carry   map[string]int // writes read after the last mark, for the next call
	buf     []byte
}

func watchStorage(t *testing.T, root string) *storageWatch {
	t.Helper()
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC)
	if err != nil {
		t.Fatalf("inotify_init1: %v", err)
	}
	w := &storageWatch{t: t, fd: fd, root: root, markDir: t.TempDir(), dirs: map[int32]string{},
		carry: map[string]int{}, buf: make([]byte, 1<<20)}
	t.Cleanup(func() { syscall.Close(fd) })
	w.addTree(root, nil)
	w.add(w.markDir)
	return w
}

// add watches dir. The file backend removes a directory as soon as its
// last entry goes (a WAL entry's, say): one already gone is not watched.
func (w *storageWatch) add(dir string) {
	w.t.Helper()
	wd, err := syscall.InotifyAddWatch(w.fd, dir, syscall.IN_MOVED_TO|syscall.IN_CREATE|syscall.IN_ONLYDIR)
	if errors.Is(err, syscall.ENOENT) {
		return
	}
	if err != nil {
		w.t.Fatalf("inotify_add_watch %s: %v", dir, err)
	}
	w.dirs[int32(wd)] = dir
}

// addTree watches dir and the directories under it. A directory made
// while watched may have been written to before its watch was added: each
// entry found in it then counts as written once into into.
func (w *storageWatch) addTree(dir string, into map[string]int) {
	w.t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // made and removed again before this walk
		}
		if err != nil {
			return err
		}
		if d.IsDir() {
			w.add(path)
		} else if into != nil && strings.HasPrefix(d.Name(), "_") {
			into[w.entry(filepath.Dir(path), d.Name())]++
		}
		return nil
	})
	if err != nil {
		w.t.Fatalf("watching %s: %v", dir, err)
	}
}

// entry is the storage key of the file name in dir.
func (w *storageWatch) entry(dir, name string) string {
	rel, _ := filepath.Rel(w.root, filepath.Join(dir, strings.TrimPrefix(name, "_")))
	return filepath.ToSlash(rel)
}

// writes returns the storage entries written since the last call, with how
// many times each. It makes a mark in its own watched directory and reads
// events up to it: inotify queues one instance's events in the order they
// happened, so every write Vault finished before the mark is in.
func (w *storageWatch) writes() map[string]int {
	w.t.Helper()
	w.marks++
	mark := fmt.Sprint("mark-", w.marks)
	if err := os.WriteFile(filepath.Join(w.markDir, mark), nil, 0o600); err != nil {
		w.t.Fatal(err)
	}
	got := w.carry
	w.carry = map[string]int{}
	for seen := false; !seen; {
		n, err := syscall.Read(w.fd, w.buf)
		if err != nil {
			w.t.Fatalf("reading inotify events: %v", err)
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&w.buf[off]))
			raw := w.buf[off+syscall.SizeofInotifyEvent : off+syscall.SizeofInotifyEvent+int(ev.Len)]
			name := string(bytes.TrimRight(raw, "\x00"))
			off += syscall.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&syscall.IN_Q_OVERFLOW != 0 {
				w.t.Fatal("the inotify queue overflowed: far more storage writes than expected")
			}
			dir, into := w.dirs[ev.Wd], got
			if seen {
				into = w.carry
			}
			switch {
			case dir == w.markDir:
				seen = seen || name == mark
			case ev.Mask&syscall.IN_CREATE != 0 && ev.Mask&syscall.IN_ISDIR != 0:
				w.addTree(filepath.Join(dir, name), into)
			case ev.Mask&syscall.IN_MOVED_TO != 0 && strings.HasPrefix(name, "_"):
				into[w.entry(dir, name)]++
			}
		}
	}
	return got
}

// 1,000 encrypts on two keys write no key entry, and each key's usage at
// most once per flush interval (a minute: at most one write per periodic
// call, which Vault makes once a minute), as Vault's file storage shows
// it, counted with inotify. What was counted since the last flush is
// written once per key at a clean reload, and the counts add up.
func TestUsageIsNotAStorageWritePerRequest(t *testing.T) {
	eachToken(t, testUsageIsNotAStorageWritePerRequest)
}

func testUsageIsNotAStorageWritePerRequest(t *testing.T, tok *tokentest.Token) {
	dataDir := t.TempDir()
	v, _, _ := startPersistentVault(t, tok, dataDir, freePort(t), "", "")
	v.registerAndMount("kms")
	v.configure("kms")
	uuid := fmt.Sprint(trustOK(t, v, "GET", "sys/mounts/kms", nil)["uuid"])
	root := filepath.Join(dataDir, "storage", "logical", uuid)
	if fi, err := os.Stat(filepath.Join(root, "keys")); err != nil || !fi.IsDir() {
		t.Fatalf("the mount's storage is not at %s: %v", root, err)
	}
	for _, key := range []string{"a", "b"} {
		trustOK(t, v, "POST", "kms/keys/"+key, map[string]interface{}{"type": "aes256-gcm96"})
		usagePost(t, v, "encrypt/"+key, map[string]interface{}{"plaintext": b64("first")})
	}
	// The clean shutdown of a reload writes usage/a and usage/b: their
	// directory is there before the count starts.
	reloadPlugin(t, v)

	w := watchStorage(t, root)
	trustOK(t, v, "POST", "kms/keys/c", map[string]interface{}{"type": "aes256-gcm96"})
	if got := w.writes(); got["keys/c"] == 0 {
		t.Fatalf("creating kms/keys/c wrote %v; the watch does not see the mount's storage writes", got)
	}

	start := time.Now()
	for i := range 1000 {
		usagePost(t, v, "encrypt/"+[]string{"a", "b"}[i%2], map[string]interface{}{"plaintext": b64(fmt.Sprint(i))})
	}
	elapsed := time.Since(start)
	got := w.writes()
	bound := int(elapsed/time.Minute) + 1
	t.Logf("1,000 encrypts in %v wrote %v (at most %d per entry: one per periodic call)", elapsed.Round(time.Millisecond), got, bound)
	for entry, n := range got {
		if strings.HasPrefix(entry, "keys/") {
			t.Errorf("encrypts wrote the key entry %s %d time(s)", entry, n)
		}
		if n > bound {
			t.Errorf("%s was written %d times during 1,000 encrypts in %v; at most %d", entry, n, elapsed.Round(time.Millisecond), bound)
		}
	}

	// One more use of each, then a clean reload: each key's usage is
	// written exactly once, by a periodic flush or at the shutdown.
	for _, key := range []string{"a", "b"} {
		usagePost(t, v, "encrypt/"+key, map[string]interface{}{"plaintext": b64("last")})
	}
	reloadPlugin(t, v)
	got = w.writes()
	t.Logf("the last uses and a clean reload wrote %v", got)
	if got["usage/a"] != 1 || got["usage/b"] != 1 {
		t.Errorf("the uses since the last flush and a clean reload wrote %v; want usage/a and usage/b once each", got)
	}
	for _, key := range []string{"a", "b"} {
		if c, _, _ := usageRead(t, v, key); c["encrypt"] != 502 {
			t.Errorf("%s: %d encrypts counted after the reload, want 502", key, c["encrypt"])
		}
	}
}
