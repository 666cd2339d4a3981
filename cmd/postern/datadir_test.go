package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDataDirInUse: a second relay on a data directory a running relay
// holds (with --dev, which opens no store) is refused with a message that
// says what to do, and the first relay's descriptor is left as it was.
func TestDataDirInUse(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := filepath.Join(t.TempDir(), "relay")
	first := startRelay(t, bin, dir)
	defer first.stop()
	before, err := os.ReadFile(filepath.Join(dir, "descriptor"))
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runBin(t, bin, []string{"POSTERN_HOME=" + t.TempDir()}, "relay", "serve", "--dev", "--data", dir,
		"--https", "127.0.0.1:0", "--h3", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
	if code != 1 || !strings.Contains(stderr, "in use by another running relay") {
		t.Fatalf("second relay on the same data dir: exit %d, %q", code, stderr)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "descriptor"))
	if string(after) != string(before) {
		t.Fatal("the second relay overwrote the descriptor")
	}
	first.stop()
	restarted := startRelay(t, bin, dir) // the lock went with the first relay
	restarted.stop()
}
