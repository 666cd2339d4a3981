package httpsession

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/internal/token"
	"github.com/postern/postern/transport/transporttest"
)

func reqFrom(remote string) *http.Request {
	r := httptest.NewRequest("POST", "https://relay.test"+testPath, nil)
	r.RemoteAddr = remote
	return r
}

// fill admits sessions from src until the limiter refuses one (at most
// limit+1 tries) and returns how many it admitted and the refusal.
func fill(l *limiter, src sourceKey, cc *connCount, limit int) (int, transport.Outcome) {
	for i := range limit + 1 {
		if _, o := l.admit(src, cc); o != transport.OutcomeOK {
			return i, o
		}
	}
	return limit + 1, transport.OutcomeOK
}

func TestLimiterCaps(t *testing.T) {
	tests := []struct {
		name                    string
		max, perSource, perConn int
		sources                 int // other sources holding one session each first
		sameConn                bool
		wantAdmitted            int
		wantRefusal             transport.Outcome
	}{
		{"per source", 100, 5, 100, 0, false, 5, transport.OutcomeLimited},
		{"per connection", 100, 50, 3, 0, true, 3, transport.OutcomeLimited},
		{"listener cap", 4, 50, 50, 0, false, 4, transport.OutcomeBusy},
		{"listener cap with others", 10, 50, 50, 10, false, 0, transport.OutcomeBusy},
		// 40 of 100 held by 40 sources; this one may go up to the 75 %
		// mark, then holds max/41 = 2 < MinFairShare, so stops at 35.
		{"fair share under pressure", 100, 50, 50, 40, false, 35, transport.OutcomeLimited},
		// Alone under pressure a source may reach the listener cap.
		{"alone under pressure", 20, 50, 50, 0, false, 20, transport.OutcomeBusy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(tt.max, transport.ListenConfig{MaxSessionsPerSource: tt.perSource, MaxSessionsPerConn: tt.perConn})
			for i := range tt.sources {
				if _, o := l.admit(l.source(reqFrom(fmt.Sprintf("192.0.2.%d:1", i+1))), nil); o != transport.OutcomeOK {
					t.Fatalf("other source %d: %s", i, o)
				}
			}
			var cc *connCount
			if tt.sameConn {
				cc = &connCount{}
			}
			n, o := fill(l, l.source(reqFrom("198.51.100.7:443")), cc, tt.max)
			if n != tt.wantAdmitted || o != tt.wantRefusal {
				t.Fatalf("admitted %d then %q, want %d then %q", n, o, tt.wantAdmitted, tt.wantRefusal)
			}
		})
	}
}

func TestLimiterRelease(t *testing.T) {
	l := newLimiter(10, transport.ListenConfig{MaxSessionsPerSource: 1, MaxSessionsPerConn: 1})
	src := l.source(reqFrom("198.51.100.7:443"))
	cc := &connCount{}
	release, o := l.admit(src, cc)
	if o != transport.OutcomeOK {
		t.Fatal(o)
	}
	if _, o := l.admit(src, nil); o != transport.OutcomeLimited {
		t.Fatalf("second session of a source at its cap: %s", o)
	}
	release()
	release() // idempotent
	if l.held() != 0 || len(l.bySource) != 0 || cc.n != 0 {
		t.Fatalf("after release: %d held, %d sources, %d on the connection", l.held(), len(l.bySource), cc.n)
	}
	if _, o := l.admit(src, cc); o != transport.OutcomeOK {
		t.Fatalf("after release: %s", o)
	}
}

func TestSourceKey(t *testing.T) {
	l := newLimiter(10, transport.ListenConfig{})
	key := func(addr string) sourceKey { return l.source(reqFrom(addr)) }
	same := [][2]string{
		{"192.0.2.1:1", "192.0.2.1:2"},
		{"192.0.2.1:1", "[::ffff:192.0.2.1]:2"},
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:2:ffff::9]:2"}, // one /64
		{"not an address", "neither"},
	}
	for _, p := range same {
		if key(p[0]) != key(p[1]) {
			t.Errorf("%s and %s are different sources, want one", p[0], p[1])
		}
	}
	differ := [][2]string{
		{"192.0.2.1:1", "192.0.2.2:1"},
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:3::1]:1"},
		{"192.0.2.1:1", "[c000:201::]:1"}, // same leading bytes, other family
	}
	for _, p := range differ {
		if key(p[0]) == key(p[1]) {
			t.Errorf("%s and %s are one source, want two", p[0], p[1])
		}
	}
	// Keyed per process (per listener): the same address hashes
	// differently under another key, so a hash means nothing elsewhere.
	if other := newLimiter(10, transport.ListenConfig{}); other.source(reqFrom("192.0.2.1:1")) == key("192.0.2.1:1") {
		t.Error("two limiters hash an address alike; the key is not random")
	}
}

// One source at its cap gets the cover site and OutcomeLimited; another
// source still gets a session.
func TestGateLimitsSource(t *testing.T) {
	obs := &transporttest.Outcomes{}
	s := &sessionStart{releases: make(chan func(), 16)}
	cfg := testListenConfig(obs)
	cfg.MaxSessionsPerSource = 2
	g, err := NewGate(testName, cfg, 0, func(*http.Request) []byte { return testBinding }, s.start)
	if err != nil {
		t.Fatal(err)
	}
	s.g = g
	go func() {
		for {
			c, err := g.Accept(context.Background())
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(g.Shut)
	post := func(remote string) int {
		r := httptest.NewRequest("POST", "https://relay.test"+testPath, strings.NewReader("body"))
		r.RemoteAddr = remote
		r.AddCookie(&http.Cookie{Name: token.Cookie, Value: mint(t, testBinding, time.Now())})
		w := httptest.NewRecorder()
		g.ServeHTTP(w, r)
		return w.Code
	}
	for i := range 2 {
		if code := post("192.0.2.1:1000"); code != http.StatusOK {
			t.Fatalf("session %d of the first source: %d", i, code)
		}
		<-s.releases
	}
	if code := post("192.0.2.1:1001"); code != http.StatusTeapot {
		t.Fatalf("third session of the first source: %d, want the cover's %d", code, http.StatusTeapot)
	}
	if got := obs.Get(transport.OutcomeLimited); got != 1 {
		t.Errorf("Observe(limited) = %d, want 1", got)
	}
	if code := post("192.0.2.3:1000"); code != http.StatusOK {
		t.Fatalf("another source: %d, want a session", code)
	}
	<-s.releases
}
