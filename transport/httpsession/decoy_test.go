package httpsession

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/cover"
	"github.com/postern/postern/transport/internal/token"
)

// sessionBody stands for a session's first bytes.
const sessionBody = "SESSION-FIRST-BYTES"

// recordingOrigin is a cover_proxy origin on loopback that keeps every
// request it gets as net/http/httputil dumps it: request line, headers
// and body.
func recordingOrigin(t *testing.T) (*httptest.Server, <-chan string) {
	t.Helper()
	seen := make(chan string, 16)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dump, err := httputil.DumpRequest(r, true)
		if err != nil {
			t.Errorf("origin: %v", err)
		}
		seen <- string(dump)
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte("origin: no " + r.URL.Path))
	}))
	t.Cleanup(origin.Close)
	return origin, seen
}

// sessionRequest is a session request (or a probe of the secret path) as
// a client sends it: the token cookie beside another cookie, and the
// session's first bytes as a streamed body.
func sessionRequest(method, target, tok string) *http.Request {
	r := httptest.NewRequest(method, target, strings.NewReader(sessionBody))
	r.ContentLength = -1
	r.Header.Set("Content-Type", ContentType)
	r.Header.Set("Accept", "*/*")
	cookie := "theme=dark"
	if tok != "" {
		cookie += "; " + token.Cookie + "=" + tok
	}
	r.Header.Set("Cookie", cookie)
	return r
}

// A session request the relay refuses (full, replayed, forged, no token,
// not a POST) is answered by cover_proxy's origin, which must not learn
// the secret path, the token or the session's bytes from it: the relay to
// origin leg may be cleartext http://. A request on any other path reaches
// the origin as sent.
func TestRefusedSessionHidesSecrets(t *testing.T) {
	origin, seen := recordingOrigin(t)
	proxy, err := cover.Proxy(origin.URL, false)
	if err != nil {
		t.Fatal(err)
	}
	g, s, obs := newGateWith(t, 1, func(c *transport.ListenConfig) { c.Cover = proxy })
	spent := mint(t, testBinding, time.Now())
	w := httptest.NewRecorder()
	g.ServeHTTP(w, sessionRequest("POST", "https://relay.test"+testPath, spent))
	if w.Code != http.StatusOK {
		t.Fatalf("first session: %d", w.Code)
	}
	defer (<-s.releases)() // holds the only slot: the next valid token is refused as busy

	cases := []struct {
		name, method, target, tok string
		outcome                   transport.Outcome
	}{
		{"busy", "POST", testPath, mint(t, testBinding, time.Now()), transport.OutcomeBusy},
		{"replayed", "POST", testPath, spent, transport.OutcomeReplay},
		{"forged", "POST", testPath, strings.Repeat("A", 76), transport.OutcomeAuthFailed},
		{"no token", "POST", testPath, "", transport.OutcomeAuthFailed},
		{"GET with a token", "GET", testPath + "?x=1", mint(t, testBinding, time.Now()), transport.OutcomeCover},
		{"escaped path", "POST", "/api/v2/%73ync", mint(t, nil, time.Now()), transport.OutcomeAuthFailed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := obs.Get(c.outcome)
			w := httptest.NewRecorder()
			g.ServeHTTP(w, sessionRequest(c.method, "https://relay.test"+c.target, c.tok))
			if obs.Get(c.outcome) != before+1 {
				t.Errorf("outcome %q not reported", c.outcome)
			}
			if w.Code != http.StatusNotFound || w.Body.String() != "origin: no "+g.decoy {
				t.Errorf("answer %d %q, want the origin's for the decoy path", w.Code, w.Body)
			}
			got := <-seen
			for _, secret := range []string{"/api/", "sync", "%73ync", c.tok, sessionBody, ContentType} {
				if secret != "" && strings.Contains(got, secret) {
					t.Errorf("origin saw %q in\n%s", secret, got)
				}
			}
			if !strings.HasPrefix(got, c.method+" "+g.decoy) || !strings.Contains(got, "\r\nCookie: theme=dark\r\n") || !strings.Contains(got, "\r\nAccept: */*\r\n") {
				t.Errorf("origin saw\n%s\nwant %s %s, the client's other cookie and Accept", got, c.method, g.decoy)
			}
		})
	}

	tok := mint(t, testBinding, time.Now())
	g.ServeHTTP(httptest.NewRecorder(), sessionRequest("POST", "https://relay.test/other/sync", tok))
	got := <-seen
	for _, want := range []string{"POST /other/sync ", "theme=dark; " + token.Cookie + "=" + tok, sessionBody, ContentType} {
		if !strings.Contains(got, want) {
			t.Errorf("a request off the secret path reached the origin without %q:\n%s", want, got)
		}
	}
}

func TestDecoyPath(t *testing.T) {
	for _, path := range []string{testPath, "/AbCdEfGhIjKlMnOp", "/", "/a//b/"} {
		d := decoyPath(testKey, path)
		if len(d) != len(path) {
			t.Errorf("decoy of %q is %q: another length", path, d)
		}
		for i := range len(path) {
			if (path[i] == '/') != (d[i] == '/') || d[i] != '/' && strings.IndexByte(decoyAlphabet, d[i]) < 0 {
				t.Errorf("decoy of %q is %q: not the same shape in base64url", path, d)
				break
			}
		}
		if d != decoyPath(testKey, path) {
			t.Errorf("decoy of %q changes", path)
		}
		if path != "/" && (d == path || d == decoyPath(bytes.Repeat([]byte{1}, 32), path)) {
			t.Errorf("decoy of %q is %q: the path, or not from the key", path, d)
		}
	}
}

func TestRemoveCookie(t *testing.T) {
	cases := []struct{ in, want []string }{
		{[]string{"sid=tok"}, nil},
		{[]string{"a=1; sid=tok; b=2"}, []string{"a=1; b=2"}},
		{[]string{"sid=tok; theme=dark"}, []string{"theme=dark"}},
		{[]string{"a=1;  sid =tok", " sid=x", "b=2;c"}, []string{"a=1", "b=2;c"}},
		{[]string{"a=1;sid=1;sid=2"}, []string{"a=1"}},
		{[]string{"sids=1; xsid=2", "a=b"}, []string{"sids=1; xsid=2", "a=b"}},
		{nil, nil},
	}
	for _, c := range cases {
		h := http.Header{}
		for _, v := range c.in {
			h.Add("Cookie", v)
		}
		removeCookie(h, token.Cookie)
		if got := h.Values("Cookie"); strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%q: %q, want %q", c.in, got, c.want)
		}
	}
}

// coverRequest leaves nothing of the secret path or the session in the
// fields a cover handler of the operator's might read either.
func TestCoverRequest(t *testing.T) {
	g, _, _ := newTestGate(t, 0)
	r := sessionRequest("POST", "https://relay.test/api/v2/%73ync?q=1", "tok")
	r.Header.Set("Trailer", "X-Sum")
	r.Header.Set("Content-Length", "19")
	r.Trailer = http.Header{"X-Sum": nil}
	c := g.coverRequest(r)
	if c.URL.Path != g.decoy || c.URL.RawPath != "" || c.URL.RawQuery != "q=1" || c.RequestURI != g.decoy+"?q=1" {
		t.Errorf("cover request for %q %q %q, RequestURI %q", c.URL.Path, c.URL.RawPath, c.URL.RawQuery, c.RequestURI)
	}
	if c.Body != http.NoBody || c.ContentLength != 0 || c.Trailer != nil || c.GetBody != nil {
		t.Errorf("cover request has a body: %v, length %d, trailer %v", c.Body, c.ContentLength, c.Trailer)
	}
	for _, k := range []string{"Content-Type", "Content-Length", "Trailer"} {
		if v := c.Header.Get(k); v != "" {
			t.Errorf("cover request has %s: %q", k, v)
		}
	}
	if r.URL.Path != testPath || r.Header.Get("Cookie") != "theme=dark; sid=tok" {
		t.Errorf("coverRequest changed the request it was given: %q %v", r.URL.Path, r.Header)
	}
}

// FuzzRemoveCookie: whatever Cookie fields a client sends, after
// removeCookie net/http finds no cookie named token.Cookie in them, and
// every other cookie it found before it still finds, in order.
func FuzzRemoveCookie(f *testing.F) {
	f.Add("a=1; sid=tok; b=2", " sid=x")
	f.Add("sid=1;sid=2", "")
	f.Add("sids=1; xsid=2", "a=b;;c")
	f.Fuzz(func(t *testing.T, a, b string) {
		h := http.Header{}
		for _, v := range []string{a, b} {
			if v != "" {
				h.Add("Cookie", v)
			}
		}
		before := (&http.Request{Header: h.Clone()}).Cookies()
		removeCookie(h, token.Cookie)
		after := (&http.Request{Header: h}).Cookies()
		var want []string
		for _, c := range before {
			if c.Name != token.Cookie {
				want = append(want, c.Name+"="+c.Value)
			}
		}
		var got []string
		for _, c := range after {
			got = append(got, c.Name+"="+c.Value)
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("fields %q %q: cookies %q after, want %q", a, b, got, want)
		}
	})
}
