package route

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

func cand(relay, tr, addr string) Candidate {
	return Candidate{Relay: relay, Endpoint: transport.Endpoint{Transport: tr, Addr: addr, Path: "/s3cret"}}
}

func TestMemoryOrdersAndExpires(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	m, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	m.now = func() time.Time { return now }
	https, h3 := cand("R", "https", "127.0.0.9:443"), cand("R", "h3", "127.0.0.9:443")
	cands := []Candidate{https, h3}
	if got := m.Order("home-wifi", cands); got[0].Endpoint.Transport != "https" {
		t.Fatal("an empty memory reordered")
	}
	if err := m.Success("home-wifi", h3); err != nil {
		t.Fatal(err)
	}
	if got := m.Order("home-wifi", cands); got[0].Endpoint.Transport != "h3" {
		t.Fatal("the remembered way in got no head start")
	}
	if got := m.Order("office", cands); got[0].Endpoint.Transport != "https" {
		t.Fatal("memory leaked across networks")
	}
	// Kept across runs, and the file holds no address or path.
	m2, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m2.now = m.now
	if got := m2.Order("home-wifi", cands); got[0].Endpoint.Transport != "h3" {
		t.Fatal("memory not reloaded")
	}
	data, _ := os.ReadFile(path)
	for _, secret := range []string{"127.0.0.9", "s3cret"} {
		if strings.Contains(string(data), secret) {
			t.Fatalf("the memory file holds %q", secret)
		}
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	// Past the TTL the entry no longer counts.
	now = now.Add(2 * time.Hour)
	if got := m.Order("home-wifi", cands); got[0].Endpoint.Transport != "https" {
		t.Fatal("an expired entry still leads")
	}
}

// TestMemoryInvalidatedByNewEndpoint: when the relay's descriptor moves an
// endpoint, the remembered recipe no longer matches.
func TestMemoryInvalidatedByNewEndpoint(t *testing.T) {
	m, _ := OpenMemory("", 0)
	old := cand("R", "h3", "127.0.0.9:443")
	m.Success("n", old)
	moved := cand("R", "h3", "127.0.0.9:8443")
	if got := m.Order("n", []Candidate{cand("R", "https", "127.0.0.9:443"), moved}); got[0].Endpoint.Transport != "https" {
		t.Fatal("a recipe for an old endpoint still leads")
	}
}

// TestMemoryFailureKeepsSometimes: one failure drops the entry only when
// the coin says so.
func TestMemoryFailureKeepsSometimes(t *testing.T) {
	for _, keep := range []bool{true, false} {
		m, _ := OpenMemory("", 0)
		m.keep = func() bool { return keep }
		c := cand("R", "h3", "127.0.0.9:443")
		m.Success("n", c)
		m.Failure("n", c, transport.ClassTimeout)
		led := m.Order("n", []Candidate{cand("R", "https", "x:1"), c})[0].Endpoint.Transport == "h3"
		if led != keep {
			t.Fatalf("keep=%v: entry still leads=%v", keep, led)
		}
	}
}

func TestMemoryDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := OpenMemory(path, 0); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Fatalf("damaged file: %v", err)
	}
	if _, err := OpenMemory(filepath.Join(t.TempDir(), "missing", "x"), 0); err != nil {
		t.Fatalf("a missing file is an empty memory: %v", err)
	}
	if err := newMemory(filepath.Join(t.TempDir(), "no", "dir"), time.Hour).save(); err == nil {
		t.Fatal("save into a missing directory succeeded")
	}
}
