package client_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/censortest"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// tcpTransport dials the relay over loopback TCP through a censor's
// middlebox.
type tcpTransport struct {
	name string
	addr string
}

func (f *tcpTransport) Name() string { return f.name }

func (f *tcpTransport) Dial(ctx context.Context, _ transport.Endpoint) (transport.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", f.addr)
	if err != nil {
		return nil, transport.Classify("dial", f.name, err)
	}
	return c.(*net.TCPConn), nil
}

func (f *tcpTransport) Listen(context.Context, transport.ListenConfig) (transport.Listener, error) {
	return nil, errors.New("not used")
}

// classLog collects what DialOptions.SessionFailed and Observe hear.
type classLog struct {
	mu       sync.Mutex
	sessions []transport.Class
	attempts []string // transport:class
}

func (l *classLog) failed(c transport.Class) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sessions = append(l.sessions, c)
}

func (l *classLog) observe(a route.Attempt) {
	l.mu.Lock()
	defer l.mu.Unlock()
	class := "ok"
	if a.Err != nil {
		class = transport.ClassOf(a.Err).String()
	}
	l.attempts = append(l.attempts, a.Transport+":"+class)
}

func (l *classLog) get() ([]transport.Class, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.sessions), slices.Clone(l.attempts)
}

// feedbackWorld is a relay reachable two ways: "frozen" (TCP through a
// middlebox that freezes flows after 2 KiB: the hello passes, no
// envelope does) and "open" (a pipe).
func feedbackWorld(t *testing.T) (*relaytest.Relay, *transport.Registry, *descriptor.Descriptor) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	mb := censortest.NewMiddlebox(t, r.ServeTCP(t, "frozen"))
	mb.SetRule(censortest.FreezeAfter(2 << 10))
	var reg transport.Registry
	reg.Register(&tcpTransport{name: "frozen", addr: mb.Addr()})
	reg.Register(&fakeTransport{name: "open", r: r, t: t})
	return r, &reg, testDescriptor(t, "frozen", "open")
}

// TestStalledSessionBacksOff: a session whose flow freezes after the dial
// puts its way in into backoff as stalled, so the next dial on that
// network leads with the other way in; the caller's hook hears the class
// once, and the session names the relay it reached, its transport and
// how long its dial took.
func TestStalledSessionBacksOff(t *testing.T) {
	r, reg, d := feedbackWorld(t)
	mem, _ := route.OpenMemory("", 0)
	var log classLog
	opts := client.DialOptions{Memory: mem, Network: "cafe", StallWindow: 200 * time.Millisecond,
		Observe: log.observe, SessionFailed: log.failed}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := relaytest.NewMailbox(t, r.Connect(t), nil)

	frozenOnly := opts
	frozenOnly.Transport = "frozen"
	c, err := client.Dial(ctx, reg, frozenOnly, d)
	if err != nil {
		t.Fatal(err)
	}
	if c.Relay() != d.RelayID() || c.Transport() != "frozen" || c.DialTime() <= 0 {
		t.Fatalf("session reached relay %q over %q in %v, want %q over frozen in some time", c.Relay(), c.Transport(), c.DialTime(), d.RelayID())
	}
	if _, err := c.Send(ctx, m.Seal(t, "x"), nil); !errors.Is(err, transport.ErrStalled) {
		t.Fatalf("send over the frozen flow: %v", err)
	}
	c.Report(transport.ClassThrottled) // a second failure of one session: ignored
	c.Close()
	frozen := route.FromDescriptor(d, route.Filter{Transport: "frozen"})[0]
	if until, class := mem.Backoff("cafe", frozen); until.IsZero() || class != transport.ClassStalled {
		t.Fatalf("the frozen way in: backoff until %v, class %v", until, class)
	}
	sessions, attempts := log.get()
	if !slices.Equal(sessions, []transport.Class{transport.ClassStalled}) || !slices.Equal(attempts, []string{"frozen:ok"}) {
		t.Fatalf("hooks heard sessions %v, attempts %v", sessions, attempts)
	}

	// The next dial on this network leads with the open way in.
	c, err = client.Dial(ctx, reg, opts, d)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Send(ctx, m.Seal(t, "y"), nil); err != nil {
		t.Fatalf("send after the stall: %v", err)
	}
	if _, attempts = log.get(); attempts[len(attempts)-1] != "open:ok" {
		t.Fatalf("attempts %v: the stalled way in still leads", attempts)
	}
}

// TestReportedFailureBacksOff: a failure the caller measured (a throttled
// flow, a "busy" answer) puts the way in into backoff with its class,
// even though the session had a request acknowledged (which counted it
// as working).
func TestReportedFailureBacksOff(t *testing.T) {
	for _, class := range []transport.Class{transport.ClassThrottled, transport.ClassBusy} {
		t.Run(class.String(), func(t *testing.T) {
			_, reg, d := feedbackWorld(t)
			mem, _ := route.OpenMemory("", 0)
			var log classLog
			c, err := client.Dial(context.Background(), reg, client.DialOptions{Transport: "open", Memory: mem,
				Network: "cafe", SessionFailed: log.failed}, d)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Ping(context.Background()); err != nil {
				t.Fatal(err)
			}
			c.Close()
			c.Report(class)
			open := route.FromDescriptor(d, route.Filter{Transport: "open"})[0]
			if until, got := mem.Backoff("cafe", open); until.IsZero() || got != class {
				t.Fatalf("backoff until %v, class %v", until, got)
			}
			if sessions, _ := log.get(); !slices.Equal(sessions, []transport.Class{class}) {
				t.Fatalf("hook heard %v", sessions)
			}
		})
	}
}
