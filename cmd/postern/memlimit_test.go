package main

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"

	"github.com/postern/postern/transport/h3"
	"github.com/postern/postern/transport/https"
)

func TestReadLimit(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		content string
		want    int64
	}{
		{"max\n", 0},
		{"2147483648\n", 2 << 30},
		{"9223372036854771712\n", 0}, // cgroup v1's "no limit"
	} {
		p := filepath.Join(dir, "limit")
		os.WriteFile(p, []byte(tc.content), 0o600)
		if got, err := readLimit(p); err != nil || got != tc.want {
			t.Errorf("%q: %d, %v; want %d", tc.content, got, err, tc.want)
		}
	}
	if got, err := readLimit(filepath.Join(dir, "missing")); got != 0 || err != nil {
		t.Errorf("missing file: %d, %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, "bad"), []byte("lots"), 0o600)
	if _, err := readLimit(filepath.Join(dir, "bad")); err == nil {
		t.Error("a bad limit file read as a limit")
	}
}

// TestMemoryLimitAndSessions: 2 GiB gives a 1.8 GiB soft limit (9/10) and 9830
// sessions of 192 KiB; GOMEMLIMIT in the environment wins; a configured
// session cap wins over the derived one.
func TestMemoryLimitAndSessions(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	none := func(string) string { return "" }
	soft := applyMemoryLimit(2<<30, none)
	if want := int64(2<<30) / 10 * 9; soft != want || debug.SetMemoryLimit(-1) != want {
		t.Fatalf("soft limit %d, runtime %d", soft, debug.SetMemoryLimit(-1))
	}
	if n := maxSessions(0, soft); n != int(soft/sessionBudget) || n != 9830 {
		t.Fatalf("derived sessions %d", n)
	}
	if n := maxSessions(20000, soft); n != 20000 {
		t.Fatalf("configured sessions %d", n)
	}
	if n := maxSessions(0, 16<<20); n != 256 {
		t.Fatalf("floor: %d", n)
	}
	if n := maxSessions(0, 0); n != defaultMaxSessions {
		t.Fatalf("no limit: %d", n)
	}
	debug.SetMemoryLimit(1 << 30)
	env := func(k string) string {
		if k == "GOMEMLIMIT" {
			return "1GiB"
		}
		return ""
	}
	if got := applyMemoryLimit(4<<30, env); got != 1<<30 {
		t.Fatalf("GOMEMLIMIT set: %d", got)
	}
	debug.SetMemoryLimit(math.MaxInt64)
	if got := applyMemoryLimit(0, none); got != 0 {
		t.Fatalf("no limit anywhere: %d", got)
	}
}

// TestListenersTakeTheSessionCap: the relay's session cap (max_sessions,
// or sized from memory) is each transport listener's cap too, so a relay
// configured for 20,000 sessions is not stopped at a listener's default.
func TestListenersTakeTheSessionCap(t *testing.T) {
	reg := newRegistryFor(&relayConfig{}, 20_000)
	ht, err := reg.Get(https.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got := ht.(*https.Transport).MaxSessions; got != 20_000 {
		t.Errorf("https listener cap %d, want 20000", got)
	}
	qt, err := reg.Get(h3.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got := qt.(*h3.Transport).MaxSessions; got != 20_000 {
		t.Errorf("h3 listener cap %d, want 20000", got)
	}
}

// hostMemory reads MemTotal: the soft limit's figure on a host with no
// configured or cgroup limit.
func TestHostMemory(t *testing.T) {
	dir := t.TempDir()
	old := meminfoFile
	t.Cleanup(func() { meminfoFile = old })
	for content, want := range map[string]int64{
		"MemTotal:        2048000 kB\nMemFree:  100 kB\n": 2048000 * 1024,
		"MemFree:  100 kB\n":                              0,
		"MemTotal: lots kB\n":                             0,
		"MemTotal: 2048000 MB\n":                          0,
	} {
		meminfoFile = filepath.Join(dir, "meminfo")
		os.WriteFile(meminfoFile, []byte(content), 0o600)
		if got := hostMemory(); got != want {
			t.Errorf("%q: %d, want %d", content, got, want)
		}
	}
	meminfoFile = filepath.Join(dir, "missing")
	if got := hostMemory(); got != 0 {
		t.Errorf("no meminfo: %d", got)
	}
	meminfoFile = old
	if _, err := os.Stat(old); err == nil && hostMemory() <= 0 {
		t.Errorf("%s is there but gave no memory", old)
	}
}
