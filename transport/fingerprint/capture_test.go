package fingerprint

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// chromiumCaptures returns the committed Chromium ClientHello records.
func chromiumCaptures(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "chromium-*.hex"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/chromium-*.hex captures")
	}
	out := make(map[string][]byte)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = rec
	}
	return out
}
