package route_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/route"
)

// fake is a transport whose Dial fails at once, hangs until cancelled, or
// returns one end of a pipe.
type fake struct {
	name  string
	mode  string // "refuse", "hang", "invalid", "ok"
	dials atomic.Int32
}

type pipeConn struct{ net.Conn }

func (pipeConn) CloseWrite() error { return nil }

func (f *fake) Name() string { return f.name }
func (f *fake) Listen(context.Context, transport.ListenConfig) (transport.Listener, error) {
	return nil, errors.New("not used")
}
func (f *fake) Dial(ctx context.Context, ep transport.Endpoint) (transport.Conn, error) {
	f.dials.Add(1)
	switch f.mode {
	case "refuse":
		return nil, transport.Classify("dial", f.name, syscall.ECONNREFUSED)
	case "hang":
		<-ctx.Done()
		return nil, transport.Classify("dial", f.name, ctx.Err())
	case "invalid":
		return nil, &transport.Error{Class: transport.ClassInvalid, Op: "dial", Transport: f.name, Err: errors.New("bad endpoint")}
	}
	a, b := net.Pipe()
	go func() { <-ctx.Done(); b.Close() }()
	return pipeConn{a}, nil
}

// session is what the handshake returns; it records Close.
type session struct {
	conn   transport.Conn
	name   string
	closed atomic.Bool
}

func (s *session) Close() error { s.closed.Store(true); return s.conn.Close() }

func handshake(ctx context.Context, conn transport.Conn) (*session, error) {
	return &session{conn: conn}, nil
}

func setup(t *testing.T, modes ...string) (*transport.Registry, []route.Candidate, []*fake) {
	var reg transport.Registry
	var cands []route.Candidate
	var fakes []*fake
	for i, m := range modes {
		f := &fake{name: string(rune('a'+i)) + "-" + m, mode: m}
		if err := reg.Register(f); err != nil {
			t.Fatal(err)
		}
		fakes = append(fakes, f)
		cands = append(cands, route.Candidate{Relay: "R", Endpoint: transport.Endpoint{Transport: f.name, Addr: "127.0.0.1:9"}})
	}
	return &reg, cands, fakes
}

// TestBlackholeCostsOneStagger: a candidate that never answers delays the
// next one by the stagger, not by its whole timeout.
func TestBlackholeCostsOneStagger(t *testing.T) {
	reg, cands, _ := setup(t, "hang", "ok")
	s, won, err := route.Dial(context.Background(), reg, cands, route.Options{PerAttempt: time.Hour, Stagger: 10 * time.Millisecond}, handshake)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if won.Endpoint.Transport != "b-ok" {
		t.Fatalf("won %s", won.Endpoint.Transport)
	}
	// Not a timing assertion: with PerAttempt an hour, getting here at all
	// shows the hanging attempt did not hold up the second.
}

// TestFailureStartsNextAtOnce: with an infinite stagger, only a failure
// can start the next candidate.
func TestFailureStartsNextAtOnce(t *testing.T) {
	reg, cands, fakes := setup(t, "refuse", "refuse", "ok")
	s, won, err := route.Dial(context.Background(), reg, cands, route.Options{Stagger: time.Hour}, handshake)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if won.Endpoint.Transport != "c-ok" || fakes[0].dials.Load() != 1 || fakes[1].dials.Load() != 1 {
		t.Fatalf("won %s", won.Endpoint.Transport)
	}
}

func TestAllFail(t *testing.T) {
	reg, cands, _ := setup(t, "refuse", "hang")
	_, _, err := route.Dial(context.Background(), reg, cands, route.Options{PerAttempt: 20 * time.Millisecond, Stagger: -1}, handshake)
	var re *route.Error
	if !errors.As(err, &re) || len(re.Attempts) != 2 {
		t.Fatalf("err = %v", err)
	}
	if !errors.Is(err, transport.ErrRefused) || !errors.Is(err, transport.ErrTimeout) {
		t.Fatalf("classes lost: %v", err)
	}
	if re.Class() != transport.ClassTimeout {
		t.Fatalf("class %v", re.Class())
	}
	if strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("error carries an address: %v", err)
	}
	if _, _, err := route.Dial(context.Background(), reg, nil, route.Options{}, handshake); !errors.Is(err, route.ErrNoCandidate) {
		t.Fatalf("no candidates: %v", err)
	}
}

// TestHandshakeFailureCounts: a stream whose handshake fails is that
// candidate's failure, classified, and its conn is closed.
func TestHandshakeFailureCounts(t *testing.T) {
	reg, cands, _ := setup(t, "ok", "ok")
	calls := 0
	hs := func(ctx context.Context, conn transport.Conn) (*session, error) {
		calls++
		if calls == 1 {
			conn.Close()
			return nil, errors.New("not a relay")
		}
		return &session{conn: conn}, nil
	}
	s, won, err := route.Dial(context.Background(), reg, cands, route.Options{Stagger: -1}, hs)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if won.Endpoint.Transport != "b-ok" {
		t.Fatalf("won %s", won.Endpoint.Transport)
	}
}

// TestLateWinnerClosed: when two attempts succeed, the second session is
// closed, never leaked.
func TestLateWinnerClosed(t *testing.T) {
	reg, cands, _ := setup(t, "ok", "ok")
	release := make(chan struct{})
	sessions := make(chan *session, 2)
	var calls atomic.Int32
	hs := func(ctx context.Context, conn transport.Conn) (*session, error) {
		s := &session{conn: conn}
		sessions <- s
		if calls.Add(1) == 1 {
			<-release // the first finishes only after the second has won
		}
		return s, nil
	}
	s, _, err := route.Dial(context.Background(), reg, cands, route.Options{Stagger: time.Millisecond}, hs)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	close(release)
	first, second := <-sessions, <-sessions
	loser := first
	if s == first {
		loser = second
	}
	deadline := time.Now().Add(10 * time.Second)
	for !loser.closed.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !loser.closed.Load() {
		t.Fatal("the losing session was not closed")
	}
}

// TestDialRemembered: with a memory, the way in that worked on this
// network is tried first.
func TestDialRemembered(t *testing.T) {
	reg, cands, fakes := setup(t, "ok", "ok")
	mem, err := route.OpenMemory("", 0)
	if err != nil {
		t.Fatal(err)
	}
	mem.Success("cafe", cands[1])
	s, won, err := route.Dial(context.Background(), reg, cands, route.Options{Stagger: -1, Memory: mem, Network: "cafe"}, handshake)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if won.Endpoint.Transport != cands[1].Endpoint.Transport || fakes[0].dials.Load() != 0 {
		t.Fatalf("won %s; the first candidate was dialed %d times", won.Endpoint.Transport, fakes[0].dials.Load())
	}
}
