package route

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

// TestBackoffTable pins the table of the package documentation: first
// backoff, after repeats, and the cap; classes that are not the recipe's
// fault count for nothing.
func TestBackoffTable(t *testing.T) {
	noJitter := func(d time.Duration) time.Duration { return d / 2 } // d/2 + d/2 = d
	cases := []struct {
		class               transport.Class
		first, second, capd time.Duration
	}{
		{transport.ClassRefused, 30 * time.Second, time.Minute, 10 * time.Minute},
		{transport.ClassRelayDown, 30 * time.Second, time.Minute, 10 * time.Minute},
		{transport.ClassBusy, 10 * time.Second, 20 * time.Second, 2 * time.Minute},
		{transport.ClassUnknown, time.Minute, 2 * time.Minute, 30 * time.Minute},
		{transport.ClassReset, 2 * time.Minute, 4 * time.Minute, time.Hour},
		{transport.ClassTimeout, 2 * time.Minute, 4 * time.Minute, time.Hour},
		{transport.ClassStalled, 2 * time.Minute, 4 * time.Minute, time.Hour},
		{transport.ClassThrottled, 2 * time.Minute, 4 * time.Minute, time.Hour},
		{transport.ClassUDPSilent, 5 * time.Minute, 10 * time.Minute, time.Hour},
		{transport.ClassTLS, 5 * time.Minute, 10 * time.Minute, time.Hour},
		{transport.ClassProtocol, 10 * time.Minute, 20 * time.Minute, 6 * time.Hour},
		{transport.ClassAuth, time.Hour, 2 * time.Hour, 24 * time.Hour},
		{transport.ClassInvalid, invalidHold, invalidHold, invalidHold},
		{transport.ClassNetworkDown, 0, 0, 0},
		{transport.ClassCanceled, 0, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.class.String(), func(t *testing.T) {
			if got := backoff(tc.class, 1, noJitter); got != tc.first {
				t.Errorf("first %v, want %v", got, tc.first)
			}
			if got := backoff(tc.class, 2, noJitter); got != tc.second {
				t.Errorf("second %v, want %v", got, tc.second)
			}
			if got := backoff(tc.class, 1<<30, noJitter); got != tc.capd {
				t.Errorf("cap %v, want %v", got, tc.capd)
			}
			if counts(tc.class) != (tc.first > 0) {
				t.Errorf("counts = %v", counts(tc.class))
			}
		})
	}
	// Busy is jittered by ±50 %; the others are not.
	lo, hi := func(time.Duration) time.Duration { return 0 }, func(d time.Duration) time.Duration { return d }
	if backoff(transport.ClassBusy, 1, lo) != 5*time.Second || backoff(transport.ClassBusy, 1, hi) != 15*time.Second {
		t.Error("busy backoff not jittered by ±50 %")
	}
	if backoff(transport.ClassTimeout, 1, lo) != backoff(transport.ClassTimeout, 1, hi) {
		t.Error("timeout backoff jittered")
	}
	// Every class has a rule or is deliberately free.
	for c := transport.ClassUnknown; c <= transport.ClassRelayDown; c++ {
		if !counts(c) && c != transport.ClassNetworkDown && c != transport.ClassCanceled {
			t.Errorf("class %v has no backoff rule", c)
		}
	}
}

// clocked returns an in-memory Memory with a clock the test moves.
func clocked(t *testing.T, path string) (*Memory, *time.Time) {
	m, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	m.now = func() time.Time { return now }
	m.keep = func() bool { return false }
	m.jitter = func(d time.Duration) time.Duration { return d / 2 }
	return m, &now
}

func same(x, y Candidate) bool {
	return x.Relay == y.Relay && configHash(x.Endpoint) == configHash(y.Endpoint)
}

func transports(cs []Candidate) string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Endpoint.Transport)
	}
	return strings.Join(out, ",")
}

// TestMemoryBackoffOrder: a failed recipe goes last for its class's time,
// growing on repeat, and comes back when that time is over.
func TestMemoryBackoffOrder(t *testing.T) {
	m, now := clocked(t, "")
	a, b, c := cand("R", "https", "127.0.0.9:443"), cand("R", "h3", "127.0.0.9:443"), cand("S", "https", "127.0.0.8:443")
	cands := []Candidate{a, b, c}
	m.Failure("n", a, transport.ClassTimeout)
	if got := transports(m.Order("n", cands)); got != "h3,https,https" {
		t.Fatalf("order %s", got)
	}
	until, class := m.Backoff("n", a)
	if class != transport.ClassTimeout || until != now.Add(2*time.Minute) {
		t.Fatalf("backoff until %v, class %v", until, class)
	}
	m.Failure("n", b, transport.ClassRefused) // ends sooner than a's: goes before it
	if got := m.Order("n", cands); !same(got[0], c) || !same(got[1], b) || !same(got[2], a) {
		t.Fatalf("order %v", got)
	}
	*now = now.Add(2*time.Minute + time.Second)
	if got := m.Order("n", cands); !same(got[0], a) || !same(got[1], b) || !same(got[2], c) {
		t.Fatalf("after the backoff: order %v", got)
	}
	m.Failure("n", a, transport.ClassTimeout) // the second in a row doubles
	if until, _ := m.Backoff("n", a); until != now.Add(4*time.Minute) {
		t.Fatalf("second backoff until %v", until.Sub(*now))
	}
	m.Success("n", a)
	if until, _ := m.Backoff("n", a); !until.IsZero() || !same(m.Order("n", cands)[0], a) {
		t.Fatal("a success did not end the backoff")
	}
}

// TestMemoryNetworkDownFree: our own network failing, or the caller giving
// up, does not count against a recipe.
func TestMemoryNetworkDownFree(t *testing.T) {
	m, _ := clocked(t, "")
	a := cand("R", "https", "127.0.0.9:443")
	m.Success("n", a)
	for _, class := range []transport.Class{transport.ClassNetworkDown, transport.ClassCanceled} {
		for range 3 {
			m.Failure("n", a, class)
		}
	}
	if until, _ := m.Backoff("n", a); !until.IsZero() || !same(m.Order("n", []Candidate{cand("R", "h3", "x:1"), a})[0], a) {
		t.Fatal("a network_down or canceled failure counted against the recipe")
	}
}

// TestMemoryFirstFailureForgiven: the first failure of a good path keeps
// its place when the coin says so; a second one does not.
func TestMemoryFirstFailureForgiven(t *testing.T) {
	m, _ := clocked(t, "")
	m.keep = func() bool { return true }
	a, b := cand("R", "h3", "127.0.0.9:443"), cand("R", "https", "127.0.0.9:443")
	m.Success("n", a)
	m.Failure("n", a, transport.ClassTimeout)
	if !same(m.Order("n", []Candidate{b, a})[0], a) {
		t.Fatal("one failure cost a good path its head start")
	}
	m.Failure("n", a, transport.ClassTimeout)
	if until, _ := m.Backoff("n", a); until.IsZero() {
		t.Fatal("two failures in a row were forgiven")
	}
}

// TestMemoryInvalidUntilChanged: an invalid recipe stays last until its
// endpoint changes, even in what the recipe hash leaves out (the key).
func TestMemoryInvalidUntilChanged(t *testing.T) {
	m, now := clocked(t, "")
	a, b := cand("R", "https", "127.0.0.9:443"), cand("R", "h3", "127.0.0.9:443")
	m.Failure("n", a, transport.ClassInvalid)
	*now = now.Add(7 * 24 * time.Hour)
	if !same(m.Order("n", []Candidate{a, b})[0], b) {
		t.Fatal("an invalid recipe came back without a change")
	}
	fixed := a
	fixed.Endpoint.Key = make([]byte, transport.KeySize)
	if Recipe(fixed.Endpoint) != Recipe(a.Endpoint) {
		t.Fatal("test premise: the key is not part of the recipe")
	}
	if !same(m.Order("n", []Candidate{fixed, b})[0], fixed) {
		t.Fatal("a changed endpoint is still held as invalid")
	}
}

// TestMemoryFileKeepsBackoff: failures, backoffs and handshake times
// survive a restart; the file holds no address and is mode 0600; a
// version 1 file still loads.
func TestMemoryFileKeepsBackoff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes")
	m, now := clocked(t, path)
	a, b := cand("R", "https", "127.0.0.9:443"), cand("R", "h3", "127.0.0.9:443")
	a.RTT = 40 * time.Millisecond
	m.Success("n", a)
	m.Failure("n", b, transport.ClassUDPSilent)
	m2, _ := OpenMemory(path, time.Hour)
	m2.now = m.now
	if until, class := m2.Backoff("n", b); class != transport.ClassUDPSilent || until != now.Add(5*time.Minute) {
		t.Fatalf("reloaded backoff %v %v", until, class)
	}
	if m2.RTT("n", a) != 40*time.Millisecond || !same(m2.Order("n", []Candidate{b, a})[0], a) {
		t.Fatal("reloaded success or RTT lost")
	}
	data, _ := os.ReadFile(path)
	for _, secret := range []string{"127.0.0.9", "s3cret", "443"} {
		if strings.Contains(string(data), secret) {
			t.Fatalf("the memory file holds %q:\n%s", secret, data)
		}
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	v1, _ := json.Marshal(map[string]any{"version": 1, "entries": []any{
		map[string]any{"network": "n", "relay": "R", "recipe": Recipe(b.Endpoint), "worked": *now}}})
	os.WriteFile(path, v1, 0o600)
	m3, err := OpenMemory(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m3.now = m.now
	if !same(m3.Order("n", []Candidate{a, b})[0], b) {
		t.Fatal("a version 1 entry was not read")
	}
}

// FuzzMemoryFile: the parser never panics, and what it accepts encodes
// and parses back to the same state.
func FuzzMemoryFile(f *testing.F) {
	f.Add([]byte(`{"version":1,"entries":[{"network":"n","relay":"R","recipe":"ab","worked":"2026-12-03T12:00:00Z"}]}`))
	f.Add([]byte(`{"version":2,"entries":[{"network":"n","relay":"R","recipe":"ab","rtt_us":41000,"class":"timeout","fails":2,"until":"2026-12-03T12:04:00Z"}]}`))
	f.Add([]byte(`{"version":2,"entries":[{"network":"n","relay":"R","recipe":"ab","class":"invalid","fails":1,"until":"2027-01-03T12:00:00Z","config":"cd"}]}`))
	f.Add([]byte(`{"version":2,"entries":[{"class":"no such class"}]}`))
	f.Add([]byte(`{"version":3}`))
	f.Add([]byte(`{"version":2,"entries":[{"network":"n","until":"0001-01-01T00:30:00+01:00"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := parseMemory(data)
		if err != nil {
			return
		}
		m := newMemory("", time.Hour)
		m.now = func() time.Time { return time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC) }
		m.entries = entries
		again, err := parseMemory(m.encode())
		if err != nil {
			t.Fatalf("re-parse of our own encoding: %v", err)
		}
		for k, s := range again {
			o := entries[k]
			if o == nil || !o.worked.Equal(s.worked) || !o.until.Equal(s.until) || micros(o.rtt) != micros(s.rtt) {
				t.Fatalf("entry %v changed: %+v -> %+v", k, o, s)
			}
		}
	})
}
