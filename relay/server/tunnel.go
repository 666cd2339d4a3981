package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"sync/atomic"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport"
)

// Tunneler is the entry side of tunnels (see "Tunnels" in package relay):
// it checks a home relay descriptor line and returns a stream to that
// relay on which the home relay expects the client's inner TLS. Errors
// should be relay.Error values (CodeBadFrame, CodeBusy, CodeInternal);
// anything else is answered CodeInternal.
type Tunneler interface {
	// Tunnel opens the stream for the client counted as source (as for
	// Forwarder.Forward: in memory only, never logged).
	Tunnel(ctx context.Context, source [16]byte, homeDescriptor string) (io.ReadWriteCloser, error)
}

// spliceLinger bounds how long a tunnel waits for its second direction
// to end once the first has.
const spliceLinger = 10 * time.Second

var (
	errTunnelEnded = errors.New("relay: tunnel ended")
	errTunnelTLS   = errors.New("relay: tunnel TLS handshake failed")
)

// tunnelTLS is the home side's TLS 1.3 configuration for tunnels: a
// self-signed certificate whose key is the relay's descriptor key.
func tunnelTLS(key ed25519.PrivateKey) (*tls.Config, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: serial, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(100, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{relay.TunnelALPN},
	}, nil
}

// bufferedConn reads through r (the session's frameReader over the conn,
// holding bytes already read from it) and writes and closes the conn.
type bufferedConn struct {
	transport.Conn
	r io.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// acceptTunnel is the home side: the stream opened with TunnelHello
// becomes a TLS server whose inner stream carries the session.
func (ss *session) acceptTunnel(p []byte) error {
	if _, err := relay.ParseTunnelHello(p); err != nil {
		return relay.ErrMalformed
	}
	if ss.srv.tunnelTLS == nil {
		ss.write(relay.Result{Code: relay.CodeUnsupported, Msg: relay.CodeUnsupported.String()})
		return relay.ErrUnsupported
	}
	if err := ss.write(relay.Result{}); err != nil {
		return err
	}
	// The handshake writes to the connection directly: the Result (left
	// in the buffer if another writer was waiting) must go first.
	if err := ss.writePending(); err != nil {
		return err
	}
	tc := tls.Server(bufferedConn{ss.conn, ss.fr}, ss.srv.tunnelTLS)
	if err := tc.HandshakeContext(ss.ctx); err != nil {
		return errors.Join(errTunnelTLS, err)
	}
	ss.inner = true
	ss.fr = &frameReader{r: tc}
	ss.wmu.Lock()
	ss.w = tc
	ss.wmu.Unlock()
	return nil
}

// tunnel is the entry side: it answers a Tunnel frame and, when it is
// accepted, splices the session to the home relay until either side
// ends. spliced reports that the session must end with err.
func (ss *session) tunnel(p []byte, idle *time.Timer) (spliced bool, err error) {
	m, err := relay.ParseTunnel(p)
	if err != nil {
		req, _ := relay.RequestID(p)
		return false, ss.reply(req, relay.ErrBadFrame, nil)
	}
	stream, err := ss.openTunnel(m.Descriptor)
	if err != nil {
		return false, ss.reply(m.Req, err, nil)
	}
	if !idle.Stop() {
		stream.Close()
		return true, errIdle
	}
	if err := ss.reply(m.Req, nil, nil); err != nil {
		stream.Close()
		return true, err
	}
	return true, ss.splice(stream)
}

// openTunnel asks the Tunneler for a stream, if the session may tunnel:
// nothing else may be in flight or subscribed.
func (ss *session) openTunnel(home string) (io.ReadWriteCloser, error) {
	if ss.srv.cfg.Tunneler == nil || ss.inner {
		return nil, relay.ErrUnsupported
	}
	ss.smu.Lock()
	busy := len(ss.subs) > 0 || len(ss.sem) > 0
	ss.smu.Unlock()
	if busy {
		return nil, &relay.Error{Code: relay.CodeBadFrame, Msg: "tunnel with requests in flight or subscriptions"}
	}
	return ss.srv.cfg.Tunneler.Tunnel(ss.ctx, ss.source(), home)
}

// splice copies bytes both ways between the session's stream (bytes
// already buffered first) and stream, half-closing each direction at its
// end; once one direction ends the other gets spliceLinger, and an error
// either way ends both. A tunnel that carries nothing either way for the
// session idle timeout ends too (the session inside pings more often),
// or two silent ends would hold it, and a slot of the Tunneler, forever.
func (ss *session) splice(stream io.ReadWriteCloser) error {
	closeBoth := func() { ss.conn.Close(); stream.Close() }
	stop := context.AfterFunc(ss.ctx, closeBoth)
	defer stop()
	defer stream.Close()
	began := time.Now()
	var moved atomic.Int64 // when bytes last went either way: since began (monotonic)
	var ended atomic.Bool
	idleFor := ss.srv.cfg.IdleTimeout
	var idle *time.Timer
	idle = time.AfterFunc(idleFor, func() {
		if ended.Load() {
			return
		}
		if left := idleFor - (time.Since(began) - time.Duration(moved.Load())); left > 0 {
			idle.Reset(left) // only this callback resets it
			return
		}
		closeBoth()
	})
	defer func() { ended.Store(true); idle.Stop() }()
	seen := func(r io.Reader) io.Reader { return activeReader{r, &moved, began} }
	// A home relay (or its path) that stops reading gets the same write
	// timeout as a client that stops reading: the session ends rather
	// than pinning what it holds.
	homeStalled := time.AfterFunc(time.Hour, func() { ss.stalled.Store(true); closeBoth() })
	homeStalled.Stop()
	defer homeStalled.Stop()
	done := make(chan error, 2)
	go func() { // client → home
		_, err := io.Copy(timedWriter{stream, homeStalled, ss.srv.writeTimeout}, seen(ss.fr))
		if cw, ok := stream.(interface{ CloseWrite() error }); ok && err == nil {
			cw.CloseWrite()
		}
		done <- err
	}()
	go func() { // home → client; holds wmu so nothing else writes
		ss.wmu.Lock()
		defer ss.wmu.Unlock()
		// What is buffered (the Tunnel's answer, if another writer was
		// waiting when it was written) goes out before the first spliced
		// byte.
		err := ss.writePendingLocked()
		if err == nil {
			_, err = io.Copy(stallWriter{ss}, seen(stream))
		}
		if err == nil {
			ss.conn.CloseWrite()
		}
		done <- err
	}()
	err := <-done
	if err != nil {
		closeBoth()
	}
	linger := time.AfterFunc(spliceLinger, closeBoth)
	defer linger.Stop()
	if err2 := <-done; err == nil {
		err = err2
	}
	if err == nil {
		err = errTunnelEnded
	}
	return err
}

// activeReader notes when its reads return bytes, as the time since
// began (monotonic: a step of the wall clock does not end a tunnel).
type activeReader struct {
	r     io.Reader
	moved *atomic.Int64
	began time.Time
}

func (a activeReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.moved.Store(int64(time.Since(a.began)))
	}
	return n, err
}

// timedWriter arms t for each write, so a write that stays blocked longer
// than d() fires it.
type timedWriter struct {
	w io.Writer
	t *time.Timer
	d func() time.Duration
}

func (w timedWriter) Write(p []byte) (int, error) {
	w.t.Reset(w.d())
	defer w.t.Stop()
	return w.w.Write(p)
}

// stallWriter writes to the session's conn under the write-stall timer;
// the caller holds wmu.
type stallWriter struct{ ss *session }

func (w stallWriter) Write(p []byte) (int, error) {
	w.ss.wtimer.Reset(w.ss.srv.writeTimeout())
	defer w.ss.wtimer.Stop()
	return w.ss.conn.Write(p)
}
