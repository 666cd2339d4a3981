package token

import (
	"bytes"
	"encoding/base64"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

var (
	testKey     = bytes.Repeat([]byte{0x42}, transport.KeySize)
	testPath    = "/s/7Hq2cV"
	testBinding = bytes.Repeat([]byte{0xb1}, ExporterLen)
	testEpoch   = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
)

// clock is a settable clock for verifiers.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func newVerifier(t testing.TB, allowUnbound bool, c *clock) *Verifier {
	t.Helper()
	v, err := NewVerifier(testKey, testPath, allowUnbound, c.now)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustToken(t testing.TB, key []byte, path string, binding []byte, now time.Time) string {
	t.Helper()
	tok, err := Make(key, path, binding, now)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTokenRoundTrip(t *testing.T) {
	c := &clock{t: testEpoch}
	cases := []struct {
		name         string
		allowUnbound bool
		makeBinding  []byte // binding the token is made with
		verBinding   []byte // binding of the connection it arrives on
		want         transport.Outcome
	}{
		{"bound", false, testBinding, testBinding, transport.OutcomeOK},
		{"bound, unbound allowed", true, testBinding, testBinding, transport.OutcomeOK},
		{"bound token, no binding on conn", false, testBinding, nil, transport.OutcomeAuthFailed},
		{"bound token, no binding on conn, unbound allowed", true, testBinding, nil, transport.OutcomeAuthFailed},
		{"bound token, short binding", true, testBinding, testBinding[:16], transport.OutcomeAuthFailed},
		{"unbound token refused", false, nil, nil, transport.OutcomeAuthFailed},
		{"unbound token refused even with binding", false, nil, testBinding, transport.OutcomeAuthFailed},
		{"unbound token allowed", true, nil, nil, transport.OutcomeOK},
		// Behind a CDN the relay may still have its own exporter value; an
		// unbound token ignores it.
		{"unbound token allowed, conn has binding", true, nil, testBinding, transport.OutcomeOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := mustToken(t, testKey, testPath, tc.makeBinding, c.now())
			if len(tok) != base64.RawURLEncoding.EncodedLen(Size) || len(tok) != 76 {
				t.Fatalf("token length %d, want 76", len(tok))
			}
			v := newVerifier(t, tc.allowUnbound, c)
			if got := v.Verify(tok, tc.verBinding); got != tc.want {
				t.Fatalf("Verify = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestTokenFresh(t *testing.T) {
	// Two tokens made at the same instant differ (random nonce).
	a := mustToken(t, testKey, testPath, nil, testEpoch)
	b := mustToken(t, testKey, testPath, nil, testEpoch)
	if a == b {
		t.Fatal("two tokens are identical")
	}
}

func TestTokenWrongInputs(t *testing.T) {
	c := &clock{t: testEpoch}
	otherKey := bytes.Repeat([]byte{0x43}, transport.KeySize)
	otherBinding := bytes.Repeat([]byte{0xb2}, ExporterLen)
	cases := []struct {
		name    string
		key     []byte
		path    string
		binding []byte
		verBind []byte
	}{
		{"wrong key", otherKey, testPath, testBinding, testBinding},
		{"wrong path", testKey, "/s/7Hq2cW", testBinding, testBinding},
		{"path prefix", testKey, "/s/7Hq2c", testBinding, testBinding},
		{"empty path", testKey, "", testBinding, testBinding},
		{"wrong binding", testKey, testPath, testBinding, otherBinding},
		{"wrong key unbound", otherKey, testPath, nil, nil},
		{"wrong path unbound", testKey, "/", nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := newVerifier(t, true, c)
			tok := mustToken(t, tc.key, tc.path, tc.binding, c.now())
			if got := v.Verify(tok, tc.verBind); got != transport.OutcomeAuthFailed {
				t.Fatalf("Verify = %q, want %q", got, transport.OutcomeAuthFailed)
			}
		})
	}
}

func TestMakeTokenRejectsBadSizes(t *testing.T) {
	if _, err := Make(testKey[:31], testPath, nil, testEpoch); err == nil {
		t.Error("Make accepted a 31-byte key")
	}
	if _, err := Make(append(testKey, 0), testPath, nil, testEpoch); err == nil {
		t.Error("Make accepted a 33-byte key")
	}
	if _, err := Make(testKey, testPath, testBinding[:31], testEpoch); err == nil {
		t.Error("Make accepted a 31-byte binding")
	}
	if _, err := Make(testKey, testPath, []byte{}, testEpoch); err == nil {
		t.Error("Make accepted an empty non-nil binding")
	}
	if _, err := NewVerifier(testKey[:16], testPath, false, nil); err == nil {
		t.Error("NewVerifier accepted a 16-byte key")
	}
}

func TestTokenVerifierCopiesKey(t *testing.T) {
	key := bytes.Clone(testKey)
	c := &clock{t: testEpoch}
	v, err := NewVerifier(key, testPath, false, c.now)
	if err != nil {
		t.Fatal(err)
	}
	key[0] ^= 1 // caller reuses its buffer
	tok := mustToken(t, testKey, testPath, testBinding, c.now())
	if got := v.Verify(tok, testBinding); got != transport.OutcomeOK {
		t.Fatalf("Verify = %q after caller changed its key buffer", got)
	}
}

// Every single-bit change of the decoded token, and every character change
// of the encoded one, must be rejected as auth_failed (not as replay, not OK).
func TestTokenBitFlips(t *testing.T) {
	c := &clock{t: testEpoch}
	for _, bound := range []bool{true, false} {
		var binding []byte
		if bound {
			binding = testBinding
		}
		tok := mustToken(t, testKey, testPath, binding, c.now())
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil {
			t.Fatal(err)
		}
		v := newVerifier(t, true, c)
		for i := range raw {
			for bit := 0; bit < 8; bit++ {
				mut := bytes.Clone(raw)
				mut[i] ^= 1 << bit
				if got := v.Verify(base64.RawURLEncoding.EncodeToString(mut), binding); got != transport.OutcomeAuthFailed {
					t.Fatalf("bound=%v: flip byte %d bit %d: Verify = %q, want auth_failed", bound, i, bit, got)
				}
			}
		}
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=. "
		for i := range tok {
			for _, r := range alphabet {
				if byte(r) == tok[i] {
					continue
				}
				mut := tok[:i] + string(r) + tok[i+1:]
				if got := v.Verify(mut, binding); got != transport.OutcomeAuthFailed {
					t.Fatalf("bound=%v: char %d -> %q: Verify = %q, want auth_failed", bound, i, r, got)
				}
			}
		}
		// Length changes.
		for _, mut := range []string{"", tok[:75], tok + "A", tok + "=", " " + tok, tok[1:] + "A", strings.Repeat("A", 76)} {
			if got := v.Verify(mut, binding); got != transport.OutcomeAuthFailed {
				t.Fatalf("bound=%v: %q: Verify = %q, want auth_failed", bound, mut, got)
			}
		}
		// After all that the untouched token is still good: no mutation
		// was recorded in the replay cache.
		if got := v.Verify(tok, binding); got != transport.OutcomeOK {
			t.Fatalf("bound=%v: original token after mutations: %q", bound, got)
		}
	}
}

func TestTokenClockWindow(t *testing.T) {
	made := time.Date(2026, 3, 14, 15, 9, 0, 0, time.UTC) // on a minute boundary
	cases := []struct {
		name string
		at   time.Duration // verifier clock minus made
		want transport.Outcome
	}{
		{"same instant", 0, transport.OutcomeOK},
		{"one minute late", time.Minute, transport.OutcomeOK},
		{"at the late edge", Skew + time.Minute, transport.OutcomeOK},
		{"just past the late edge", Skew + time.Minute + time.Second, transport.OutcomeAuthFailed},
		{"an hour late", time.Hour, transport.OutcomeAuthFailed},
		{"a year late", 365 * 24 * time.Hour, transport.OutcomeAuthFailed},
		{"client clock ahead, at the edge", -Skew, transport.OutcomeOK},
		{"client clock too far ahead", -Skew - time.Second, transport.OutcomeAuthFailed},
		{"an hour in the future", -time.Hour, transport.OutcomeAuthFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{t: made.Add(tc.at)}
			v := newVerifier(t, false, c)
			tok := mustToken(t, testKey, testPath, testBinding, made)
			if got := v.Verify(tok, testBinding); got != tc.want {
				t.Fatalf("Verify = %q, want %q", got, tc.want)
			}
		})
	}
	// The token records minutes: seconds within the minute do not extend its life.
	c := &clock{t: made.Add(Skew + time.Minute + time.Second)}
	v := newVerifier(t, false, c)
	tok := mustToken(t, testKey, testPath, testBinding, made.Add(59*time.Second))
	if got := v.Verify(tok, testBinding); got != transport.OutcomeAuthFailed {
		t.Fatalf("token made at :59 verified 3m1s after the minute: %q, want auth_failed", got)
	}
}

func TestTokenReplay(t *testing.T) {
	c := &clock{t: testEpoch}
	for _, allowUnbound := range []bool{false, true} {
		v := newVerifier(t, allowUnbound, c)
		tok := mustToken(t, testKey, testPath, testBinding, c.now())
		if got := v.Verify(tok, testBinding); got != transport.OutcomeOK {
			t.Fatalf("first Verify = %q", got)
		}
		for i := 0; i < 3; i++ {
			if got := v.Verify(tok, testBinding); got != transport.OutcomeReplay {
				t.Fatalf("replay %d: Verify = %q, want replay", i, got)
			}
		}
		// A replay with a mangled binding is an auth failure, not a replay:
		// the MAC is checked first, so a prober learns nothing.
		if got := v.Verify(tok, bytes.Repeat([]byte{9}, ExporterLen)); got != transport.OutcomeAuthFailed {
			t.Fatalf("replay on another connection: %q, want auth_failed", got)
		}
	}
	// An unbound token replayed on a connection with a different exporter
	// is still a replay.
	v := newVerifier(t, true, c)
	tok := mustToken(t, testKey, testPath, nil, c.now())
	if got := v.Verify(tok, testBinding); got != transport.OutcomeOK {
		t.Fatalf("first Verify = %q", got)
	}
	if got := v.Verify(tok, nil); got != transport.OutcomeReplay {
		t.Fatalf("unbound replay: %q, want replay", got)
	}
}

func TestTokenReplayConcurrent(t *testing.T) {
	// Many goroutines present the same token: exactly one wins.
	c := &clock{t: testEpoch}
	v := newVerifier(t, false, c)
	tok := mustToken(t, testKey, testPath, testBinding, c.now())
	const n = 16
	results := make(chan transport.Outcome, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- v.Verify(tok, testBinding)
		}()
	}
	wg.Wait()
	close(results)
	ok := 0
	for r := range results {
		switch r {
		case transport.OutcomeOK:
			ok++
		case transport.OutcomeReplay:
		default:
			t.Fatalf("unexpected outcome %q", r)
		}
	}
	if ok != 1 {
		t.Fatalf("%d goroutines were accepted, want exactly 1", ok)
	}
}

func TestReplayCacheForgets(t *testing.T) {
	start := time.Date(2026, 3, 14, 15, 9, 0, 0, time.UTC)
	c := &clock{t: start}
	v := newVerifier(t, false, c)
	for i := 0; i < 10; i++ {
		if got := v.Verify(mustToken(t, testKey, testPath, testBinding, start), testBinding); got != transport.OutcomeOK {
			t.Fatal(got)
		}
	}
	if n := cacheLen(v); n != 10 {
		t.Fatalf("cache holds %d nonces, want 10", n)
	}
	// While a token can still be accepted, its nonce is remembered.
	c.set(start.Add(Skew + time.Minute))
	old := mustToken(t, testKey, testPath, testBinding, start)
	if got := v.Verify(old, testBinding); got != transport.OutcomeOK {
		t.Fatal(got)
	}
	if got := v.Verify(old, testBinding); got != transport.OutcomeReplay {
		t.Fatalf("replay at the edge of the window: %q", got)
	}
	// Once every token has expired, the next verification drops them all.
	later := start.Add(Skew + 2*time.Minute)
	c.set(later)
	if got := v.Verify(old, testBinding); got != transport.OutcomeAuthFailed {
		t.Fatalf("expired replay: %q, want auth_failed", got)
	}
	if got := v.Verify(mustToken(t, testKey, testPath, testBinding, later), testBinding); got != transport.OutcomeOK {
		t.Fatal(got)
	}
	if n := cacheLen(v); n != 1 {
		t.Fatalf("cache holds %d nonces after expiry, want 1", n)
	}
}

func cacheLen(v *Verifier) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.seen) != len(v.order) {
		panic("replay cache map and order disagree")
	}
	return len(v.seen)
}

// TestReplayCacheFull fills the cache with ReplayCacheSize live nonces (about
// a second of HMACs) and checks that the next fresh token is refused rather
// than an old nonce forgotten, and that capacity returns after expiry.
func TestReplayCacheFull(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a 65536-entry cache")
	}
	start := time.Date(2026, 3, 14, 15, 9, 0, 0, time.UTC)
	c := &clock{t: start}
	v := newVerifier(t, true, c)
	first := mustToken(t, testKey, testPath, nil, start)
	if got := v.Verify(first, nil); got != transport.OutcomeOK {
		t.Fatal(got)
	}
	for i := 1; i < ReplayCacheSize; i++ {
		if got := v.Verify(mustToken(t, testKey, testPath, nil, start), nil); got != transport.OutcomeOK {
			t.Fatalf("token %d: %q", i, got)
		}
	}
	if got := v.Verify(mustToken(t, testKey, testPath, nil, start), nil); got != transport.OutcomeReplay {
		t.Fatalf("fresh token with a full cache: %q, want refusal (replay)", got)
	}
	if got := v.Verify(first, nil); got != transport.OutcomeReplay {
		t.Fatalf("first token was forgotten while the cache was full: %q", got)
	}
	// A token bound to its TLS connection is still accepted (not recorded):
	// a flood of unbound tokens must not lock out direct clients.
	bound := mustToken(t, testKey, testPath, testBinding, start)
	if got := v.Verify(bound, testBinding); got != transport.OutcomeOK {
		t.Fatalf("bound token with a full cache: %q, want ok", got)
	}
	if got := v.Verify(bound, append([]byte{1}, testBinding[1:]...)); got != transport.OutcomeAuthFailed {
		t.Fatalf("bound token on another connection with a full cache: %q", got)
	}
	c.set(start.Add(Skew + 2*time.Minute))
	if got := v.Verify(mustToken(t, testKey, testPath, nil, c.now()), nil); got != transport.OutcomeOK {
		t.Fatalf("fresh token after expiry: %q", got)
	}
	if n := cacheLen(v); n != 1 {
		t.Fatalf("cache holds %d after expiry, want 1", n)
	}
}

func FuzzTokenVerify(f *testing.F) {
	now := time.Date(2026, 3, 14, 15, 9, 0, 0, time.UTC)
	good, _ := Make(testKey, testPath, testBinding, now)
	unbound, _ := Make(testKey, testPath, nil, now)
	f.Add(good, testBinding)
	f.Add(unbound, []byte(nil))
	f.Add(unbound, testBinding)
	f.Add(good, testBinding[:31])
	f.Add("", []byte(nil))
	f.Add(strings.Repeat("A", 76), testBinding)
	f.Add(strings.Repeat("_", 76), []byte(nil))
	f.Add(good[:75]+"=", testBinding)
	f.Fuzz(func(t *testing.T, tok string, binding []byte) {
		c := &clock{t: now}
		v, err := NewVerifier(testKey, testPath, true, c.now)
		if err != nil {
			t.Fatal(err)
		}
		got := v.Verify(tok, binding)
		switch got {
		case transport.OutcomeAuthFailed:
			if n := cacheLen(v); n != 0 {
				t.Fatalf("a rejected token was recorded (%d nonces)", n)
			}
		case transport.OutcomeOK:
			// Only a token that really carries our MAC can pass; it is
			// then single-use.
			if again := v.Verify(tok, binding); again != transport.OutcomeReplay {
				t.Fatalf("accepted token verified again: %q, want replay", again)
			}
		default:
			t.Fatalf("fresh verifier returned %q", got)
		}
	})
}

func BenchmarkMakeToken(b *testing.B) {
	for b.Loop() {
		if _, err := Make(testKey, testPath, testBinding, testEpoch); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyAccept is the cost of accepting a fresh token (MAC and
// replay cache insert); the verifier is renewed before its cache fills.
func BenchmarkVerifyAccept(b *testing.B) {
	c := &clock{t: testEpoch}
	toks := make([]string, 4096)
	for i := range toks {
		toks[i] = mustToken(b, testKey, testPath, testBinding, testEpoch)
	}
	v := newVerifier(b, false, c)
	i := 0
	for b.Loop() {
		if i == len(toks) {
			b.StopTimer()
			v, i = newVerifier(b, false, c), 0
			b.StartTimer()
		}
		if got := v.Verify(toks[i], testBinding); got != transport.OutcomeOK {
			b.Fatal(got)
		}
		i++
	}
}

// BenchmarkVerifyReject is what a prober costs the relay per forged token.
func BenchmarkVerifyReject(b *testing.B) {
	c := &clock{t: testEpoch}
	v := newVerifier(b, false, c)
	tok := mustToken(b, bytes.Repeat([]byte{1}, transport.KeySize), testPath, testBinding, testEpoch)
	for b.Loop() {
		if got := v.Verify(tok, testBinding); got != transport.OutcomeAuthFailed {
			b.Fatal(got)
		}
	}
}
