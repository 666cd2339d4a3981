package server_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
)

// pipeTunneler hands each tunnel one end of a loopback pair; the test
// plays the home relay on the other.
type pipeTunneler struct {
	t    *testing.T
	home chan transport.Conn
	err  error
}

func (p *pipeTunneler) Tunnel(ctx context.Context, _ [16]byte, home string) (io.ReadWriteCloser, error) {
	if p.err != nil {
		return nil, p.err
	}
	a, b := relaytest.Pipe(p.t)
	p.home <- b
	return a, nil
}

// openSplice says hello and Tunnel with extra bytes in the same write
// (they must reach the home side, not be lost in the entry's buffer) and
// returns the raw stream after the OK.
func openSplice(t *testing.T, conn transport.Conn, extra []byte) error {
	b := relay.AppendFrame(nil, relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion})
	b = relay.AppendFrame(b, relay.Tunnel{Req: 7, Descriptor: "postern-relay1:x"})
	if _, err := conn.Write(append(b, extra...)); err != nil {
		t.Fatal(err)
	}
	if ft, _, err := relay.ReadFrame(conn); err != nil || ft != relay.FrameServerHello {
		t.Fatalf("hello: %v %v", ft, err)
	}
	ft, p, err := relay.ReadFrame(conn)
	if err != nil || ft != relay.FrameResult {
		t.Fatalf("result: %v %v", ft, err)
	}
	r, err := relay.ParseResult(p)
	if err != nil || r.Req != 7 {
		t.Fatalf("result %+v %v", r, err)
	}
	if r.Code != relay.CodeOK {
		return &relay.Error{Code: r.Code}
	}
	return nil
}

// TestTunnelSplice: after OK the entry relay copies bytes both ways,
// including bytes that came with the Tunnel frame, and the session ends
// when either side closes (half-close passes through).
func TestTunnelSplice(t *testing.T) {
	for _, closer := range []string{"client", "home"} {
		t.Run(closer+" closes", func(t *testing.T) {
			tun := &pipeTunneler{t: t, home: make(chan transport.Conn, 1)}
			r := relaytest.New(t, store.Options{}, server.Config{Tunneler: tun})
			cc, sc := relaytest.Pipe(t)
			defer cc.Close()
			r.Serve(sc, "test")
			if err := openSplice(t, cc, []byte("early")); err != nil {
				t.Fatal(err)
			}
			home := <-tun.home
			defer home.Close()
			got := make([]byte, 5)
			if _, err := io.ReadFull(home, got); err != nil || string(got) != "early" {
				t.Fatalf("home read %q, %v", got, err)
			}
			home.Write([]byte("back"))
			if _, err := io.ReadFull(cc, got[:4]); err != nil || string(got[:4]) != "back" {
				t.Fatalf("client read %q, %v", got[:4], err)
			}
			from, to := transport.Conn(cc), home
			if closer == "home" {
				from, to = home, cc
			}
			from.Write([]byte("last"))
			from.CloseWrite()
			if rest, err := io.ReadAll(to); err != nil || !bytes.Equal(rest, []byte("last")) {
				t.Fatalf("after close: %q, %v", rest, err)
			}
			to.CloseWrite()
			if rest, err := io.ReadAll(from); err != nil || len(rest) != 0 {
				t.Fatalf("other side: %q, %v", rest, err)
			}
		})
	}
}

// TestTunnelRefused: without a Tunneler the answer is CodeUnsupported;
// the Tunneler's error code passes through and any other error becomes
// CodeInternal; a refused Tunnel leaves the session usable.
func TestTunnelRefused(t *testing.T) {
	cases := []struct {
		name string
		tun  server.Tunneler
		want error
	}{
		{"no tunneler", nil, relay.ErrUnsupported},
		{"busy", &pipeTunneler{err: relay.ErrBusy}, relay.ErrBusy},
		{"unknown error", &pipeTunneler{err: errors.New("dial 10.0.0.1 failed")}, relay.ErrInternal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := relaytest.New(t, store.Options{}, server.Config{Tunneler: tc.tun})
			cc, sc := relaytest.Pipe(t)
			defer cc.Close()
			r.Serve(sc, "test")
			if err := openSplice(t, cc, nil); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			cc.Write(relay.AppendFrame(nil, relay.Ping{Req: 8, Data: []byte("x")}))
			if ft, _, err := relay.ReadFrame(cc); err != nil || ft != relay.FramePong {
				t.Fatalf("after refusal: %v %v", ft, err)
			}
		})
	}
}

// TestTunnelHomeStopsReading: a home relay (or a link to it) that stops
// reading while the client keeps writing ends the spliced session after
// the write timeout, as a client that stops reading does; nothing stays
// pinned.
func TestTunnelHomeStopsReading(t *testing.T) {
	tun := &pipeTunneler{t: t, home: make(chan transport.Conn, 1)}
	r := relaytest.New(t, store.Options{}, server.Config{Tunneler: tun, WriteTimeout: 200 * time.Millisecond})
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	if err := openSplice(t, cc, nil); err != nil {
		t.Fatal(err)
	}
	home := <-tun.home // never read from
	defer home.Close()
	if tc, ok := home.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	go func() { // far more than the socket buffers hold
		chunk := make([]byte, 64<<10)
		for i := 0; i < 1024; i++ {
			if _, err := cc.Write(chunk); err != nil {
				return
			}
		}
	}()
	cc.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.Copy(io.Discard, cc); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the session stayed up with the home side not reading")
	}
}

// TestTunnelIdleEnds: a spliced tunnel over which neither side sends
// anything for the idle timeout ends (the session inside pings more often
// than that), instead of holding a session and a tunnel slot forever.
func TestTunnelIdleEnds(t *testing.T) {
	tun := &pipeTunneler{t: t, home: make(chan transport.Conn, 1)}
	r := relaytest.New(t, store.Options{}, server.Config{Tunneler: tun, IdleTimeout: 100 * time.Millisecond})
	cc, sc := relaytest.Pipe(t)
	defer cc.Close()
	r.Serve(sc, "test")
	if err := openSplice(t, cc, nil); err != nil {
		t.Fatal(err)
	}
	home := <-tun.home // a home that, like the client, says nothing
	defer home.Close()
	cc.SetReadDeadline(time.Now().Add(30 * time.Second)) // a deadlock guard
	if _, err := cc.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("a silent tunnel was never ended")
	}
	home.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := home.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the home side of a silent tunnel was never closed")
	}
}
