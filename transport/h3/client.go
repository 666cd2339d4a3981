package h3

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
)

// Request headers of a session request, in the shape Chrome sends for a
// same-origin fetch() POST over HTTP/3. Only the relay (or a TLS-terminating
// front) ever sees them; they make the request unremarkable in its logs.
var chromeHeaders = [][2]string{
	{"sec-ch-ua", `"Chromium";v="138", "Google Chrome";v="138", "Not)A;Brand";v="99"`},
	{"sec-ch-ua-mobile", "?0"},
	{"sec-ch-ua-platform", `"Windows"`},
	{"user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/138.0.0.0 Safari/537.36"},
	{"content-type", "application/octet-stream"},
	{"accept", "*/*"},
	{"sec-fetch-site", "same-origin"},
	{"sec-fetch-mode", "cors"},
	{"sec-fetch-dest", "empty"},
	{"accept-encoding", "gzip, deflate, br, zstd"},
	{"accept-language", "en-US,en;q=0.9"},
	{"priority", "u=1, i"},
}

func clientQUICConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: HandshakeIdleTimeout,
		MaxIdleTimeout:       MaxIdleTimeout,
		KeepAlivePeriod:      KeepAlivePeriod,
	}
}

// Dial opens a QUIC connection to ep.Addr, sends the session request and
// returns the session once the relay answered 200. ctx bounds the whole
// setup; the returned session does not depend on ctx. Errors are
// *transport.Error values without the relay's address.
func (t *Transport) Dial(ctx context.Context, ep transport.Endpoint) (transport.Conn, error) {
	c, err := t.dial(ctx, ep)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, classify("dial", err)
	}
	return c, nil
}

func (t *Transport) dial(ctx context.Context, ep transport.Endpoint) (*clientConn, error) {
	host, port, err := net.SplitHostPort(ep.Addr)
	if err != nil {
		return nil, &transport.Error{Class: transport.ClassProtocol, Op: "dial", Transport: Name,
			Err: errors.New("endpoint address is not host:port")}
	}
	if len(ep.Key) != transport.KeySize {
		return nil, &transport.Error{Class: transport.ClassProtocol, Op: "dial", Transport: Name,
			Err: errors.New("endpoint key must be 32 bytes")}
	}
	raddr, err := resolve(ctx, host, port)
	if err != nil {
		return nil, err
	}
	sni := ep.SNI
	if sni == "" {
		sni = host
	}
	tlsConf := &tls.Config{
		ServerName: sni,
		NextProtos: []string{http3.NextProtoH3},
		MinVersion: tls.VersionTLS13,
		RootCAs:    ep.RootCAs,
	}
	if len(ep.CertSHA256) > 0 {
		pin := append([]byte(nil), ep.CertSHA256...)
		tlsConf.InsecureSkipVerify = true
		tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errPinMismatch
			}
			sum := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
			if subtle.ConstantTimeCompare(sum[:], pin) != 1 {
				return errPinMismatch
			}
			return nil
		}
	}

	var laddr *net.UDPAddr
	if ep.LocalAddr != "" {
		ip := net.ParseIP(ep.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("local address %q is not an IP address", ep.LocalAddr)
		}
		laddr = &net.UDPAddr{IP: ip}
	}
	udp, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	qc, err := tr.Dial(ctx, raddr, tlsConf, clientQUICConfig())
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, err
	}
	c, err := openSession(ctx, qc, ep, sni)
	if err != nil {
		qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		tr.Close()
		udp.Close()
		return nil, err
	}
	c.tr, c.udp = tr, udp
	return c, nil
}

func resolve(ctx context.Context, host, port string) (*net.UDPAddr, error) {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, &transport.Error{Class: transport.ClassProtocol, Op: "dial", Transport: Name,
			Err: errors.New("endpoint port is not a number")}
	}
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

// openSession sends the session request on qc and waits for the relay's
// answer. The request lives on its own context so that it outlives ctx.
func openSession(ctx context.Context, qc *quic.Conn, ep transport.Endpoint, authority string) (*clientConn, error) {
	// The token binds to this connection's exporter, which exists once the
	// handshake is complete.
	select {
	case <-qc.HandshakeComplete():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var binding []byte
	if !ep.Unbound {
		cs := qc.ConnectionState().TLS
		ekm, err := cs.ExportKeyingMaterial(transport.ExporterLabel, nil, transport.ExporterLen)
		if err != nil {
			return nil, &transport.Error{Class: transport.ClassTLS, Op: "dial", Transport: Name,
				Err: errors.New("TLS exporter unavailable on this connection")}
		}
		binding = ekm
	}
	tok, err := transport.MakeToken(ep.Key, ep.Path, binding, time.Now())
	if err != nil {
		return nil, &transport.Error{Class: transport.ClassProtocol, Op: "dial", Transport: Name, Err: err}
	}

	if _, p, err := net.SplitHostPort(ep.Addr); err == nil && p != "443" {
		authority = net.JoinHostPort(authority, p)
	}
	origin := "https://" + authority
	reqCtx, stop := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	req := &http.Request{
		Method:        http.MethodPost,
		URL:           &url.URL{Scheme: "https", Host: authority, Path: ep.Path},
		Host:          authority,
		Header:        make(http.Header, len(chromeHeaders)+3),
		Body:          pr,
		ContentLength: -1, // streaming body: no content-length
	}
	for _, kv := range chromeHeaders {
		req.Header[kv[0]] = []string{kv[1]}
	}
	req.Header["origin"] = []string{origin}
	req.Header["referer"] = []string{origin + "/"}
	req.Header["cookie"] = []string{transport.TokenCookie + "=" + tok}
	req = req.WithContext(reqCtx)

	h3 := &http3.Transport{DisableCompression: true, Logger: discardLogger}
	cc := h3.NewClientConn(qc)

	// ctx still bounds the wait for the response.
	abort := context.AfterFunc(ctx, stop)
	res, err := cc.RoundTrip(req)
	if !abort() {
		err = ctx.Err()
	}
	if err != nil {
		stop()
		pw.CloseWithError(net.ErrClosed)
		if res != nil {
			res.Body.Close()
		}
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		stop()
		pw.CloseWithError(net.ErrClosed)
		res.Body.Close()
		return nil, &transport.Error{Class: transport.ClassAuth, Op: "dial", Transport: Name,
			Err: fmt.Errorf("relay answered HTTP status %d instead of opening a session; check the descriptor's key and path, and the clock", res.StatusCode)}
	}
	return &clientConn{qc: qc, body: res.Body, pw: pw, stop: stop}, nil
}
