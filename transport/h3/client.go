package h3

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

// Dial opens a QUIC connection to ep.Addr, sends the session request and
// returns the session once the relay answered 200. ctx bounds the whole
// setup; the returned session does not depend on ctx. Errors are
// *transport.Error values without the relay's address or name.
func (t *Transport) Dial(ctx context.Context, ep transport.Endpoint) (transport.Conn, error) {
	tgt, err := httpsession.NewTarget(Name, ep)
	if err != nil {
		return nil, err
	}
	c, err := t.dial(ctx, tgt)
	if err != nil {
		if ctx.Err() != nil && transport.ClassOf(err) != transport.ClassUDPSilent {
			err = ctx.Err()
		}
		return nil, classify("dial", err)
	}
	return c, nil
}

// dial opens the session on a QUIC connection of its own, from a UDP
// socket of its own.
func (t *Transport) dial(ctx context.Context, tgt *httpsession.Target) (transport.Conn, error) {
	raddr, err := resolve(ctx, tgt.Host, tgt.Port)
	if err != nil {
		return nil, err
	}
	if tgt.PublicOnly {
		if err := transport.CheckPublic(Name, raddr.AddrPort().Addr()); err != nil {
			return nil, err
		}
	}
	tlsConf := &tls.Config{
		ServerName:       tgt.SNI,
		NextProtos:       []string{http3.NextProtoH3},
		MinVersion:       tls.VersionTLS13,
		RootCAs:          tgt.RootCAs,
		CurvePreferences: clientCurves(),
	}
	if check := tgt.PinCheck(); check != nil {
		tlsConf.InsecureSkipVerify = true // only skips the roots; check verifies the pin
		tlsConf.VerifyPeerCertificate = check
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: tgt.LocalIP})
	if err != nil {
		return nil, err
	}
	h := newHeard(udp)
	h.onSend = t.onSend
	tr := &quic.Transport{Conn: h, ConnectionIDGenerator: emptyConnIDs{}}
	release := func() { tr.Close(); udp.Close() }
	reportICMP(udp, true)
	qc, err := tr.Dial(ctx, raddr, tlsConf, clientQUICConfig(raddr))
	if err != nil {
		release()
		return nil, silent(ctx, h, err)
	}
	reportICMP(udp, false)
	closeQUIC := func() { qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), ""); release() }
	cs := qc.ConnectionState().TLS
	clientHTTP3().NewClientConn(qc) // the control stream (SETTINGS) and the relay's streams
	rs := &requestStream{qc: qc}
	c, err := tgt.Open(ctx, httpsession.Wire{
		Export:     cs.ExportKeyingMaterial,
		RoundTrip:  rs.roundTrip,
		Classify:   classify,
		Close:      closeQUIC,
		LocalAddr:  qc.LocalAddr(),
		RemoteAddr: qc.RemoteAddr(),
		Early:      true,
	})
	if err != nil {
		closeQUIC()
		return nil, err
	}
	return &clientConn{Conn: c, str: rs.str, dw: dataWriter{w: rs.str}}, nil
}

// clientConn is the client end of a session. httpsession's session reads
// the response body (DATA frames read straight into the caller's buffer,
// frames.go), closes and reports addresses; writes bypass its request
// body and go straight to the request stream as DATA frames (dataWriter).
type clientConn struct {
	transport.Conn
	str *quic.Stream
	dw  dataWriter // on str

	// wmu serialises Write and CloseWrite: quic-go forbids closing a send
	// stream concurrently with Write.
	wmu    sync.Mutex
	wshut  atomic.Bool
	closed atomic.Bool
}

func (c *clientConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.writable(); err != nil {
		return 0, err
	}
	n, err := c.dw.Write(p)
	return n, streamErr(err, c.closed.Load())
}

// SentEarly implements transport.EarlySender (httpsession's session knows).
func (c *clientConn) SentEarly() []byte {
	e, _ := c.Conn.(transport.EarlySender)
	if e == nil {
		return nil
	}
	return e.SentEarly()
}

// writable returns why the session cannot be written to, or nil.
func (c *clientConn) writable() error {
	switch {
	case c.closed.Load():
		return streamErr(net.ErrClosed, true)
	case c.wshut.Load():
		return &transport.Error{Class: transport.ClassCanceled, Op: "session", Transport: Name,
			Err: fmt.Errorf("write after CloseWrite: %w", net.ErrClosed)}
	}
	return nil
}

// CloseWrite ends the request body: the relay reads io.EOF.
func (c *clientConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return streamErr(net.ErrClosed, true)
	}
	c.wshut.Store(true)
	return streamErr(c.str.Close(), false)
}

// Close tears the session and its QUIC connection down at once (the
// stream is reset both ways); data not yet sent is dropped.
func (c *clientConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// resolve returns the UDP address of host and port (checked by NewTarget).
func resolve(ctx context.Context, host, port string) (*net.UDPAddr, error) {
	p, _ := strconv.ParseUint(port, 10, 16)
	if ip, err := netip.ParseAddr(host); err == nil {
		return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(p))), nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ips[0].Unmap(), uint16(p))), nil
}
