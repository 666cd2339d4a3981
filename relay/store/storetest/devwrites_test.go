package storetest

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestDeviceWriteBytes: where the temporary directory's file system has a
// block device, a synced 1 MiB write shows in its counter.
func TestDeviceWriteBytes(t *testing.T) {
	dir := t.TempDir()
	w0 := DeviceWriteBytes(dir)
	if w0 < 0 {
		if runtime.GOOS == "linux" {
			t.Logf("no block device counter for %s (tmpfs or overlay?)", dir)
		}
		t.Skip("no device counter here")
	}
	f, err := os.Create(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1) // not zeros, which a layer below could skip
	}
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if w1 := DeviceWriteBytes(dir); w1-w0 < 1<<20 {
		t.Fatalf("device counter grew %d bytes after a synced 1 MiB write", w1-w0)
	}
}
