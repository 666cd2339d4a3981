package transporttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/internal/token"
)

// ProbeConn is one connection of an HTTP client that looks at a listener
// from the outside, as a censor's prober does: HTTP/2 over TLS for https,
// HTTP/3 for h3.
type ProbeConn interface {
	// RoundTrip sends a request on this connection.
	RoundTrip(*http.Request) (*http.Response, error)
	// ConnectionState is the connection's TLS state (for token binding).
	ConnectionState() tls.ConnectionState
}

// Probes is what RunProbes needs of a transport.
type Probes struct {
	// Relay is the address of the listener under test, which must echo
	// every session it accepts and half-close at the end of input.
	Relay string
	// Reference is the address of a stock server of the same transport,
	// with the same certificate, serving the listener's cover site alone.
	Reference string
	// Dial opens a fresh probe connection to addr; the test cleans it up.
	Dial func(t *testing.T, addr string) ProbeConn
	// Host is the :authority of the probe requests.
	Host string
	// Path and Key are the listener's session path and key.
	Path string
	Key  []byte
	// Outcomes records what the listener reported (ListenConfig.Observe).
	Outcomes *Outcomes
	// SessionOwnsConn: a connection whose first request is a session
	// carries that session alone (transport/https's own HTTP/2 engine
	// refuses other streams), so the replay probe sends a page request
	// first, which keeps the connection on the stock server.
	SessionOwnsConn bool
	// Deframe, if set, turns a session's response body into the relay's
	// bytes (the https transport frames them).
	Deframe func(io.Reader) io.Reader
}

// answer is what a probe got back, Date aside.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) String() string { return fmt.Sprintf("%d %v %q", a.status, a.header, a.body) }

// probeCase is one row of the table: probe runs against addr (relay or
// reference) and returns the answer to compare.
type probeCase struct {
	name  string
	want  transport.Outcome // what the relay must report, once
	probe func(t *testing.T, p *Probes, addr string) answer
}

// RunProbes runs the cover/session/probe table that every HTTP transport
// shares: each probe goes to the relay and to the reference server, and
// the relay must answer exactly as the cover site alone does, except a
// valid session, which must echo.
func RunProbes(t *testing.T, p Probes) {
	for _, c := range probeCases() {
		t.Run(c.name, func(t *testing.T) {
			before := p.Outcomes.Get(c.want)
			got := c.probe(t, &p, p.Relay)
			if d := p.Outcomes.Get(c.want) - before; d != 1 {
				t.Errorf("relay reported %q %d times for the probe, want 1", c.want, d)
			}
			if c.want == transport.OutcomeOK {
				return // a session: there is nothing to compare
			}
			want := c.probe(t, &p, p.Reference)
			if got.status == http.StatusOK && want.status != http.StatusOK {
				t.Fatalf("relay opened a session for a probe: %v", got)
			}
			if got.status != want.status || !headersEqual(got.header, want.header) || !bytes.Equal(got.body, want.body) {
				t.Errorf("relay and cover site differ\nrelay: %v\ncover: %v", got, want)
			}
		})
	}
}

func probeCases() []probeCase {
	now := time.Now()
	form := []byte("field=value")
	return []probeCase{
		{"GET /", transport.OutcomeCover, func(t *testing.T, p *Probes, addr string) answer {
			return p.do(t, p.Dial(t, addr), "GET", "/", "", nil)
		}},
		{"GET missing page", transport.OutcomeCover, func(t *testing.T, p *Probes, addr string) answer {
			return p.do(t, p.Dial(t, addr), "GET", "/wp-login.php", "", nil)
		}},
		{"GET session path with valid token", transport.OutcomeCover, func(t *testing.T, p *Probes, addr string) answer {
			c := p.Dial(t, addr)
			return p.do(t, c, "GET", p.Path, p.token(t, c, now), nil)
		}},
		{"POST other path with valid token", transport.OutcomeCover, func(t *testing.T, p *Probes, addr string) answer {
			c := p.Dial(t, addr)
			return p.do(t, c, "POST", p.Path+"x", p.token(t, c, now), form)
		}},
		{"POST session path without token", transport.OutcomeAuthFailed, func(t *testing.T, p *Probes, addr string) answer {
			return p.do(t, p.Dial(t, addr), "POST", p.Path, "", form)
		}},
		{"POST session path with forged token", transport.OutcomeAuthFailed, func(t *testing.T, p *Probes, addr string) answer {
			forged := base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xee}, token.Size))
			return p.do(t, p.Dial(t, addr), "POST", p.Path, forged, form)
		}},
		{"POST session path with expired token", transport.OutcomeAuthFailed, func(t *testing.T, p *Probes, addr string) answer {
			c := p.Dial(t, addr)
			return p.do(t, c, "POST", p.Path, p.token(t, c, now.Add(-10*time.Minute)), form)
		}},
		{"POST session path with token bound to another connection", transport.OutcomeAuthFailed, func(t *testing.T, p *Probes, addr string) answer {
			other := p.token(t, p.Dial(t, addr), now)
			return p.do(t, p.Dial(t, addr), "POST", p.Path, other, form)
		}},
		{"POST session path with replayed token", transport.OutcomeReplay, func(t *testing.T, p *Probes, addr string) answer {
			c := p.Dial(t, addr)
			if p.SessionOwnsConn {
				p.do(t, c, "GET", "/", "", nil)
			}
			tok := p.token(t, c, now)
			first := p.do(t, c, "POST", p.Path, tok, nil) // a real session at the relay
			if addr == p.Relay && first.status != http.StatusOK {
				t.Fatalf("real session refused: %v", first)
			}
			return p.do(t, c, "POST", p.Path, tok, form)
		}},
		{"POST session path with random bytes", transport.OutcomeAuthFailed, func(t *testing.T, p *Probes, addr string) answer {
			junk := make([]byte, 512)
			rand.Read(junk)
			return p.do(t, p.Dial(t, addr), "POST", p.Path, base64.RawURLEncoding.EncodeToString(junk[:57]), junk)
		}},
		{"valid session echoes", transport.OutcomeOK, func(t *testing.T, p *Probes, addr string) answer {
			c := p.Dial(t, addr)
			a := p.do(t, c, "POST", p.Path, p.token(t, c, now), nil)
			if a.status != http.StatusOK {
				t.Fatalf("valid session refused: %v", a)
			}
			return a
		}},
	}
}

// token makes a session token bound to c, made at when.
func (p *Probes) token(t *testing.T, c ProbeConn, when time.Time) string {
	t.Helper()
	cs := c.ConnectionState()
	binding, err := cs.ExportKeyingMaterial(token.ExporterLabel, nil, token.ExporterLen)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Make(p.Key, p.Path, binding, when)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// do sends one request on c and reads the whole answer. A POST to the
// session path streams its body; a 200 to it is a session, which do proves
// live with one echoed byte and returns without a body.
func (p *Probes) do(t *testing.T, c ProbeConn, method, path, tok string, body []byte) answer {
	t.Helper()
	req := &http.Request{
		Method: method,
		URL:    &url.URL{Scheme: "https", Host: p.Host, Path: path},
		Host:   p.Host,
		Header: http.Header{"User-Agent": {"probe/1.0"}},
	}
	var pw *io.PipeWriter
	switch {
	case method == http.MethodPost && path == p.Path:
		var pr *io.PipeReader
		pr, pw = io.Pipe()
		req.Body, req.ContentLength = pr, -1
		defer pw.Close()
	case body != nil:
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	if tok != "" {
		req.Header.Set("Cookie", token.Cookie+"="+tok)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	res, err := c.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	a := answer{status: res.StatusCode, header: res.Header.Clone()}
	a.header.Del("Date")
	if res.StatusCode == http.StatusOK && pw != nil {
		go pw.Write([]byte{0x42})
		var rr io.Reader = res.Body
		if p.Deframe != nil {
			rr = p.Deframe(rr)
		}
		var b [1]byte
		if _, err := io.ReadFull(rr, b[:]); err != nil || b[0] != 0x42 {
			t.Fatalf("session did not echo: %v", err)
		}
		return a
	}
	if pw != nil {
		pw.Write(body)
		pw.Close()
	}
	if a.body, err = io.ReadAll(res.Body); err != nil {
		t.Fatalf("%s %s: body: %v", method, path, err)
	}
	return a
}

func headersEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
