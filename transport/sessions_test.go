package transport

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestSessionCaches: both caches take a session once, replace it on Put
// and drop it on Put(nil); the memory cache keeps the newest max; the
// directory keeps files of mode 0600 named by hash, shared by two opens.
func TestSessionCaches(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tickets")
	d, err := OpenSessionDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]SessionCache{"memory": NewSessionMemory(2), "dir": d} {
		t.Run(name, func(t *testing.T) {
			c.Put("a", []byte("1"))
			c.Put("a", []byte("2"))
			if got := c.Take("a"); !bytes.Equal(got, []byte("2")) {
				t.Fatalf("Take %q", got)
			}
			if got := c.Take("a"); got != nil {
				t.Fatalf("second Take %q", got)
			}
			c.Put("b", []byte("3"))
			c.Put("b", nil)
			if got := c.Take("b"); got != nil {
				t.Fatalf("Take after Put(nil) %q", got)
			}
		})
	}
	m := NewSessionMemory(2)
	m.Put("a", []byte("1"))
	m.Put("b", []byte("2"))
	m.Put("c", []byte("3"))
	if m.Take("a") != nil || m.Take("c") == nil {
		t.Error("memory cache did not evict the oldest")
	}
	d.Put("relay 127.0.0.1:443", []byte("s"))
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		if info.Mode().Perm() != 0o600 || len(e.Name()) != 32 {
			t.Errorf("file %s mode %v", e.Name(), info.Mode())
		}
	}
	d2, _ := OpenSessionDir(dir)
	if got := d2.Take("relay 127.0.0.1:443"); !bytes.Equal(got, []byte("s")) {
		t.Errorf("a second open of the directory sees %q", got)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v", st.Mode())
	}
}
