package route

import (
	"fmt"
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

// TestMemoryBackoffDoublesAcrossRuns: a recipe that keeps failing doubles
// its backoff from one process to the next, as within one. The file
// dropped a recipe once its backoff ended, with its count of failures,
// so every CLI run started it over at the first backoff (a reviewer's
// find: 2 min again where one process had 4).
func TestMemoryBackoffDoublesAcrossRuns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	m, now := clocked(t, path)
	b := cand("R", "h3", "127.0.0.9:443")
	m.Failure("n", b, transport.ClassTimeout) // 2 min
	*now = now.Add(3 * time.Minute)           // over: tried again, by the next run
	if err := m.save(); err != nil {          // another recipe's save, say
		t.Fatal(err)
	}
	next, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	next.now, next.keep, next.jitter = m.now, m.keep, m.jitter
	next.Failure("n", b, transport.ClassTimeout)
	if until, _ := next.Backoff("n", b); until.Sub(*now) != 4*time.Minute {
		t.Fatalf("the second failure, in the next run: backoff %v, want 4m0s", until.Sub(*now))
	}
}

// TestMemoryTimesBoundedByClock: a file's times are bounded by the clock
// when it is read: a backoff ends no later than its class's longest from
// now, and a success in the future counts for nothing. Trusted as they
// were, a failure recorded with the clock years ahead held its recipe
// last until then, and was written back each time.
func TestMemoryTimesBoundedByClock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	a, b := cand("R", "https", "127.0.0.9:443"), cand("R", "h3", "127.0.0.9:443")
	data := fmt.Sprintf(`{"version":2,"entries":[{"network":"n","relay":"R","recipe":%q,"class":"timeout","fails":1,"until":"9999-01-01T00:00:00Z"},{"network":"n","relay":"R","recipe":%q,"worked":"2999-01-01T00:00:00Z"}]}`,
		Recipe(a.Endpoint), Recipe(b.Endpoint))
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if until, _ := m.Backoff("n", a); until.After(time.Now().Add(time.Hour + time.Minute)) {
		t.Errorf("held until %v, past the timeout class's longest backoff (1 h)", until)
	}
	if m.state("n", b) != nil && !m.state("n", b).worked.IsZero() {
		t.Errorf("a success in the future counts: %v", m.state("n", b).worked)
	}
}

// TestMemoryFileStaysReadable: a memory with more entries than a file may
// hold writes the newest it may; the file was refused as damaged at the
// next start, and never written again.
func TestMemoryFileStaysReadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	m, _ := clocked(t, path)
	c := cand("R", "h3", "127.0.0.9:443")
	for i := range maxMemoryEntries + 1 {
		m.fail(fmt.Sprint("net", i), c, transport.ClassTimeout, true)
	}
	if err := m.save(); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenMemory(path, time.Hour); err != nil {
		t.Fatalf("the file written cannot be read: %v", err)
	}
}

// TestMemoryTwoProcesses: two processes on one file each keep what the
// other recorded. Each wrote back the whole memory it had loaded, so a
// long `recv --follow` erased what a send beside it learnt (a reviewer's
// find).
func TestMemoryTwoProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	a, b := cand("R", "https", "127.0.0.9:443"), cand("R", "h3", "127.0.0.9:443")
	p1, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.Success("n", a); err != nil {
		t.Fatal(err)
	}
	if err := p1.Failure("n", b, transport.ClassUDPSilent); err != nil {
		t.Fatal(err)
	}
	p3, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if s := p3.state("n", a); s == nil || s.worked.IsZero() {
		t.Error("the success another process recorded is gone")
	}
	if until, _ := p3.Backoff("n", b); until.IsZero() {
		t.Error("the failure is gone")
	}
	if s := p1.state("n", a); s == nil || s.worked.IsZero() {
		t.Error("the process that saved last did not take the other's success")
	}
}

// TestMemoryFileNamesNoNetwork: the file keeps a hash of each network's
// name, never the name (it would say where the device has been); a file
// from before (version 2, names in clear) is read with its names hashed,
// its entries still match, and it is written again at once with no name
// in it.
func TestMemoryFileNamesNoNetwork(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	https, h3 := cand("R", "https", "127.0.0.9:443"), cand("R", "h3", "127.0.0.9:443")
	cands := []Candidate{https, h3}
	m, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Success("library-wifi-Tabriz", h3); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "Tabriz") || !strings.Contains(string(data), `"version": 3`) {
		t.Fatalf("the file names the network, or is not version 3:\n%s", data)
	}
	if m2, err := OpenMemory(path, time.Hour); err != nil || m2.Order("library-wifi-Tabriz", cands)[0].Endpoint.Transport != "h3" {
		t.Fatalf("not read back (%v)", err)
	}

	old := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	v2 := fmt.Sprintf(`{"version":2,"entries":[{"network":"office-Mashhad","relay":"R","recipe":%q,"worked":%q},{"network":"home-Shiraz","relay":"R","recipe":%q,"worked":%q}]}`,
		Recipe(h3.Endpoint), old, Recipe(h3.Endpoint), old)
	if err := os.WriteFile(path, []byte(v2), 0o600); err != nil {
		t.Fatal(err)
	}
	m3, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if m3.Order("office-Mashhad", cands)[0].Endpoint.Transport != "h3" {
		t.Fatal("a version 2 entry does not match its network")
	}
	data, _ = os.ReadFile(path) // rewritten at once, without a change to save

	for _, name := range []string{"Mashhad", "Shiraz"} {
		if strings.Contains(string(data), name) {
			t.Fatalf("once read, the file still names %s:\n%s", name, data)
		}
	}
	m4, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if m4.Order("home-Shiraz", cands)[0].Endpoint.Transport != "h3" {
		t.Fatal("the other network's entry was lost in the migration")
	}
	// A version 3 file naming a network in clear is damaged.
	os.WriteFile(path, []byte(`{"version":3,"entries":[{"network":"home","relay":"R","recipe":"ab"}]}`), 0o600)
	if _, err := OpenMemory(path, time.Hour); err == nil {
		t.Fatal("a version 3 file with a name in clear was read")
	}
}
