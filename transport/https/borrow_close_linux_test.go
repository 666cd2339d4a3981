package https

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/transport/borrow"
	"github.com/postern/postern/transport/transporttest"
)

// closeProbe is what a prober learns by outliving the server's timeout:
// the bytes before its close, how it closed and after how many whole
// seconds, whether writing once after the FIN draws a reset (within
// probeWait), and what a second write then meets.
type closeProbe struct {
	Bytes   int
	Close   string
	Seconds int
	Reset   bool
	Second  string // "ok", "EPIPE" or "ECONNRESET"
}

// probeAfterClose sends data, waits for the server to close, then writes
// once, watches the socket for a reset and writes again.
func probeAfterClose(addr string, data []byte) (closeProbe, error) {
	start := time.Now()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return closeProbe{}, err
	}
	c := nc.(*net.TCPConn)
	defer c.Close()
	c.SetDeadline(start.Add(2 * probeWait))
	if len(data) > 0 {
		if _, err := c.Write(data); err != nil {
			return closeProbe{}, err
		}
	}
	got, err := io.ReadAll(c)
	p := closeProbe{Bytes: len(got), Close: "FIN", Seconds: int(time.Since(start).Round(time.Second) / time.Second)}
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			return p, err
		}
		p.Close = "RST"
		return p, nil
	}
	if _, err := c.Write([]byte("after")); err != nil {
		return p, fmt.Errorf("first write after the FIN: %w", err)
	}
	for end := time.Now().Add(probeWait); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		st, err := transporttest.TCPStateOf(c)
		if err != nil {
			return p, err
		}
		if st == transporttest.TCPClose {
			p.Reset = true
			break
		}
	}
	switch _, err := c.Write([]byte("again")); {
	case err == nil:
		p.Second = "ok"
	case errors.Is(err, syscall.EPIPE):
		p.Second = "EPIPE"
	case errors.Is(err, syscall.ECONNRESET):
		p.Second = "ECONNRESET"
	default:
		return p, fmt.Errorf("second write after the FIN: %w", err)
	}
	return p, nil
}

// nginx times out a silent client, a partial ClientHello and a finished
// handshake with no request, closing its socket: the client's next write
// draws a reset. A relay borrowing nginx must answer the same. Before the
// front ended its inspection at the origin's FIN and passed the origin's
// reset on, the first two wrote no reset at all and the third one a write
// late.
func TestBorrowedSiteOriginCloseLikeNginx(t *testing.T) {
	nginx := startNginx(t)
	r := startRelay(t, &Transport{Borrow: &borrow.Options{Origin: nginx}}, nil)
	serveEcho(r.ln)
	hello := helloRecord(t, nil)
	cases := []probeCase{
		{"silent", nil},
		{"partial-clienthello", hello[:len(hello)/2]},
		{"clienthello-untagged", hello},
	}
	res := runAll(t, cases, []string{r.ep.Addr, nginx}, probeAfterClose)
	for i, c := range cases {
		t.Logf("%-22s | relay %+v | nginx %+v", c.name, res[i][0], res[i][1])
		if res[i][0] != res[i][1] {
			t.Errorf("%s: relay %+v, nginx %+v", c.name, res[i][0], res[i][1])
		}
		if !res[i][1].Reset {
			t.Errorf("%s: nginx drew no reset: the probe tells nothing", c.name)
		}
	}
}

// One address holding more connections than the front's old per-source
// cap (64) gets every one answered, as from nginx itself.
func TestBorrowedSiteManyConnectionsLikeNginx(t *testing.T) {
	nginx := startNginx(t)
	r := startRelay(t, &Transport{Borrow: &borrow.Options{Origin: nginx}}, nil)
	serveEcho(r.ln)
	const n = 100
	for _, addr := range []string{nginx, r.ep.Addr} {
		conns := make([]net.Conn, 0, n)
		for i := range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			c.SetDeadline(time.Now().Add(probeWait))
			if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")); err != nil {
				t.Fatalf("%s, connection %d: %v", addr, i+1, err)
			}
		}
		for i, c := range conns {
			// nginx answers plain HTTP on its TLS port with a 400 page.
			if b, err := io.ReadAll(c); len(b) == 0 {
				t.Errorf("connection %d of %d: %d bytes, %v", i+1, n, len(b), err)
			}
			c.Close()
		}
	}
}
