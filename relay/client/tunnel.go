package client

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// ErrTunnelKey is returned by DialTunnel when the relay at the end of the
// tunnel does not prove the key of the home relay's descriptor: the entry
// relay or someone behind it is not the home relay.
var ErrTunnelKey = errors.New("relay: the relay behind the tunnel does not hold the home relay's key; try another entry relay")

// tunnelReq is the request id of the Tunnel frame, the only request of
// the outer session.
const tunnelReq = 1

// DialTunnel opens a session to the home relay whose descriptor line is
// home, through one of the entry relays (raced like Dial): it asks the
// entry relay to splice the stream to the home relay (see "Tunnels" in
// package relay), runs TLS 1.3 over it pinned to the home relay's key, and
// the session protocol inside. The entry relay sees neither the mailbox
// nor the requests.
func DialTunnel(ctx context.Context, reg *transport.Registry, opts DialOptions, home string, entries ...*descriptor.Descriptor) (*Client, error) {
	hd, _, err := descriptor.ParseStale(home, time.Now())
	if err != nil {
		return nil, fmt.Errorf("home relay descriptor: %w", err)
	}
	var cands []route.Candidate
	for _, d := range entries {
		cands = append(cands, route.FromDescriptor(d, opts.filter())...)
	}
	hs := func(ctx context.Context, conn transport.Conn) (*Client, error) {
		return tunnelHandshake(ctx, conn, home, hd.RelayKey, opts.StallWindow)
	}
	c, _, err := route.Dial(ctx, reg, cands, route.Options{PerAttempt: opts.PerEndpoint, Observe: opts.Observe}, hs)
	return c, err
}

// tunnelHandshake runs the outer hello and Tunnel request on conn, then
// TLS pinned to key and the inner session. It reads conn frame by frame,
// unbuffered, so nothing of the inner stream is consumed.
func tunnelHandshake(ctx context.Context, conn transport.Conn, home string, key ed25519.PublicKey, stall time.Duration) (*Client, error) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	tc, err := openSplice(ctx, conn, home, key)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return New(ctx, tc, WithStallWindow(stall), WithRelayKey(key))
}

func openSplice(ctx context.Context, conn transport.Conn, home string, key ed25519.PublicKey) (*tunnelConn, error) {
	if err := askSplice(conn, home); err != nil {
		return nil, err
	}
	w := &recordWatch{Conn: conn}
	tc := tls.Client(w, pinnedTLS(key))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	if tc.ConnectionState().NegotiatedProtocol != relay.TunnelALPN {
		return nil, fmt.Errorf("%w: no tunnel protocol agreed", relay.ErrMalformed)
	}
	return &tunnelConn{Conn: tc, w: w}, nil
}

// tunnelConn is the session's connection inside a tunnel: TLS to the home
// relay over the spliced stream. It reports arrivals (transport.Arrivals)
// beneath the session: the inner TLS records' and the transport's own.
type tunnelConn struct {
	*tls.Conn
	w *recordWatch
}

// Arrivals reports when bytes last came beneath the session and whether
// an inner TLS record, or a unit of the transport's framing, has begun
// and not ended. The flags are read before the times, which are stored
// before them (as stalledAt reads the session's own).
func (c *tunnelConn) Arrivals() (time.Time, bool) {
	midway := c.w.midway.Load()
	var below time.Time
	if a, ok := c.w.Conn.(transport.Arrivals); ok {
		var m bool
		below, m = a.Arrivals()
		midway = midway || m
	}
	last := time.Unix(0, c.w.last.Load())
	if below.After(last) {
		last = below
	}
	return last, midway
}

// recordWatch reads the tunnel's inner TLS stream from the connection and
// notes when bytes last came and whether a TLS record has begun and not
// ended. The session inside sees a record only once it is whole: without
// this, a push that a censor froze inside one went unnoticed by a session
// with no request waiting (a subscription) until its next ping, a minute
// later. Read is called by one goroutine at a time (crypto/tls's reader).
type recordWatch struct {
	transport.Conn
	last   atomic.Int64 // unix nanoseconds of the last read that brought bytes
	midway atomic.Bool
	head   int // bytes of the current record's 5-byte header read
	length int // the current record's length, from its header
	body   int // bytes of its body still to come
}

func (w *recordWatch) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if n > 0 {
		w.last.Store(time.Now().UnixNano())
		w.scan(p[:n])
		w.midway.Store(w.head > 0 || w.body > 0)
	}
	return n, err
}

// scan follows the record boundaries through b: a header of type u8 |
// version u16 | length u16, then length bytes.
func (w *recordWatch) scan(b []byte) {
	for len(b) > 0 {
		if w.body > 0 {
			k := min(w.body, len(b))
			w.body -= k
			b = b[k:]
			continue
		}
		switch w.head {
		case 3:
			w.length = int(b[0]) << 8
		case 4:
			w.length |= int(b[0])
		}
		w.head++
		b = b[1:]
		if w.head == 5 {
			w.head, w.body = 0, w.length
		}
	}
}

// askSplice asks the entry relay at the other end of conn to splice it
// to the home relay (hello, then Tunnel) and waits for the OK.
func askSplice(conn transport.Conn, home string) error {
	b := relay.AppendFrame(nil, relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion})
	b = relay.AppendFrame(b, relay.Tunnel{Req: tunnelReq, Descriptor: home})
	if _, err := conn.Write(b); err != nil {
		return err
	}
	t, p, err := relay.ReadFrame(conn)
	if err != nil {
		return err
	}
	if _, err := parseHello(t, p); err != nil {
		return err
	}
	if err := readOK(conn, tunnelReq); err != nil {
		return fmt.Errorf("entry relay: %w", err)
	}
	return nil
}

// readOK reads one Result for req from conn, unbuffered, and returns its
// error code as a *relay.Error.
func readOK(conn transport.Conn, req uint32) error {
	t, p, err := relay.ReadFrame(conn)
	if err != nil {
		return err
	}
	r, err := relay.ParseResult(p)
	if t != relay.FrameResult || err != nil || r.Req != req {
		return relay.ErrMalformed
	}
	if r.Code != relay.CodeOK {
		return &relay.Error{Code: r.Code, Msg: r.Msg}
	}
	return nil
}

// pinnedTLS accepts exactly one certificate key: the home relay's
// descriptor key. There is no CA and no name; TLS itself checks that the
// peer holds the key (CertificateVerify).
func pinnedTLS(key ed25519.PublicKey) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{relay.TunnelALPN},
		ServerName:         "postern-tunnel",
		InsecureSkipVerify: true, // replaced by the key pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return ErrTunnelKey
			}
			cert, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return ErrTunnelKey
			}
			pub, ok := cert.PublicKey.(ed25519.PublicKey)
			if !ok || !pub.Equal(key) {
				return ErrTunnelKey
			}
			return nil
		},
	}
}

// OpenTunnel is the entry relay's half of a tunnel: it dials the home
// relay through the one dial path, says TunnelHello and returns the
// stream once the home relay accepted it; the client's inner TLS goes on
// it from the next byte. A home relay that does not take tunnels gives
// an error matching relay.ErrUnsupported.
func OpenTunnel(ctx context.Context, reg *transport.Registry, opts DialOptions, home *descriptor.Descriptor) (transport.Conn, error) {
	cands := route.FromDescriptor(home, opts.filter())
	hs := func(ctx context.Context, conn transport.Conn) (transport.Conn, error) {
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		defer stop()
		err := writeTunnelHello(conn)
		if err == nil {
			err = readOK(conn, 0)
		}
		if err != nil {
			conn.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		return conn, nil
	}
	c, _, err := route.Dial(ctx, reg, cands, route.Options{PerAttempt: opts.PerEndpoint, Observe: opts.Observe}, hs)
	return c, err
}

// OpenTunnelVia is OpenTunnel for a relay that reaches out only through
// upstream relays (a relay inside a censored network): it asks one of
// the entries, raced like Dial, to splice a stream to the home relay
// whose descriptor line is home, and returns that stream once the home
// relay accepted it. What runs on it from the next byte is up to the
// caller: a client's tunnelled TLS, which this relay splices on in turn,
// or the relay's own session to the home relay (DialTunnel does that).
func OpenTunnelVia(ctx context.Context, reg *transport.Registry, opts DialOptions, home string, entries ...*descriptor.Descriptor) (transport.Conn, error) {
	var cands []route.Candidate
	for _, d := range entries {
		cands = append(cands, route.FromDescriptor(d, opts.filter())...)
	}
	hs := func(ctx context.Context, conn transport.Conn) (transport.Conn, error) {
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		defer stop()
		if err := askSplice(conn, home); err != nil {
			conn.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		return conn, nil
	}
	c, _, err := route.Dial(ctx, reg, cands, route.Options{PerAttempt: opts.PerEndpoint, Observe: opts.Observe}, hs)
	return c, err
}

func writeTunnelHello(conn transport.Conn) error {
	_, err := conn.Write(relay.AppendFrame(nil, relay.TunnelHello{}))
	return err
}
