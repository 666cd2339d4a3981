package https

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"
	"golang.org/x/net/http2"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/borrow"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/httpsession"
	"github.com/postern/postern/transport/transporttest"
)

// dialBorrowed is the https client's dial path (Dial and open in
// client.go) with the borrowed-site tag in the ClientHello when tag is
// set: the block between the markers is what client.go adds. It runs the
// real client pieces: the browser's uTLS ClientHello, the pin check, HTTP/2
// and the session request.
func dialBorrowed(ctx context.Context, ep transport.Endpoint, tag bool) (transport.Conn, error) {
	c, _, err := dialBorrowedResuming(ctx, ep, tag, nil)
	return c, err
}

// dialBorrowedResuming is dialBorrowed with a TLS session cache; it also
// says whether the handshake resumed a session.
func dialBorrowedResuming(ctx context.Context, ep transport.Endpoint, tag bool, cache utls.ClientSessionCache) (transport.Conn, bool, error) {
	tgt, err := httpsession.NewTarget(Name, ep)
	if err != nil {
		return nil, false, err
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", tgt.Addr)
	if err != nil {
		return nil, false, err
	}
	cfg := &utls.Config{ServerName: tgt.SNI, RootCAs: tgt.RootCAs, ClientSessionCache: cache}
	if check := tgt.PinCheck(); check != nil {
		cfg.InsecureSkipVerify = true
		cfg.VerifyPeerCertificate = check
	}
	uc, err := browser.NewUConn(raw, cfg, ep.Fingerprint)
	if err != nil {
		raw.Close()
		return nil, false, err
	}
	if tag {
		// --- the block client.go's open needs, before HandshakeContext ---
		if err := uc.BuildHandshakeState(); err != nil {
			raw.Close()
			return nil, false, err
		}
		if err := borrow.TagHello(uc, ep.Key, time.Now()); err != nil {
			raw.Close()
			return nil, false, err
		}
		// --- end of the block ---
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, false, httpsession.Classify(Name, "handshake", err, nil)
	}
	c, err := openSession(ctx, raw, uc, tgt)
	return c, uc.ConnectionState().DidResume, err
}

// openSession is the rest of client.go's open: HTTP/2 and the session.
func openSession(ctx context.Context, raw net.Conn, uc *utls.UConn, tgt *httpsession.Target) (transport.Conn, error) {
	classify := func(op string, err error) error { return httpsession.Classify(Name, op, err, nil) }
	h2 := &http2.Transport{DisableCompression: true}
	cc, err := h2.NewClientConn(uc)
	if err != nil {
		raw.Close()
		return nil, classify("handshake", err)
	}
	cs := uc.ConnectionState()
	c, err := tgt.Open(ctx, httpsession.Wire{
		Export:     cs.ExportKeyingMaterial,
		RoundTrip:  cc.RoundTrip,
		Deframe:    func(r io.Reader) io.Reader { return &recordReader{r: r} },
		Classify:   classify,
		Close:      func() { cc.Close(); raw.Close() },
		LocalAddr:  raw.LocalAddr(),
		RemoteAddr: raw.RemoteAddr(),
	})
	if err != nil {
		cc.Close()
		raw.Close()
		return nil, err
	}
	return c, nil
}

// startOriginSite is a Go HTTPS site with a certificate of its own.
func startOriginSite(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "the origin's own page")
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // it would print client addresses
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// A Postern client whose ClientHello carries the tag reaches the relay's
// session through the borrowed-site listener; the same client without the
// tag, and a browser, reach the origin: its certificate (so the pin check
// fails) and its page.
func TestBorrowedSiteEndToEnd(t *testing.T) {
	origin := startOriginSite(t)
	r := startRelay(t, &Transport{Borrow: &borrow.Options{Origin: origin.Listener.Addr().String()}}, nil)
	serveEcho(r.ln)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for i := range 3 {
		c, err := dialBorrowed(ctx, r.ep, true)
		if err != nil {
			t.Fatalf("tagged dial %d: %v", i, err)
		}
		transporttest.EchoRoundTrip(t, c, []byte("through the borrowed site"))
		c.Close()
	}
	if got := r.obs.Get(transport.OutcomeOK); got != 3 {
		t.Errorf("Observe(ok) = %d, want 3", got)
	}

	_, err := dialBorrowed(ctx, r.ep, false)
	if transport.ClassOf(err) != transport.ClassTLS {
		t.Fatalf("untagged dial: %v, want a TLS error (the origin's certificate fails the pin)", err)
	}

	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: true,
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("https://" + r.ep.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "the origin's own page" || resp.ProtoMajor != 2 {
		t.Fatalf("browser got %q over HTTP/%d, want the origin's page over HTTP/2", body, resp.ProtoMajor)
	}
	if !resp.TLS.PeerCertificates[0].Equal(origin.Certificate()) {
		t.Fatal("browser saw a certificate other than the origin's")
	}
	if got := r.obs.Get(transport.OutcomeCover); got < 2 {
		t.Errorf("Observe(cover) = %d, want at least 2 (untagged client, browser)", got)
	}
}

// A tagged ClientHello that resumes a TLS session (pre_shared_key, whose
// binders cover the session id) still authenticates and resumes: utls
// computes the binders again when the handshake marshals the hello.
func TestBorrowedSiteTagWithResumption(t *testing.T) {
	origin := startOriginSite(t)
	r := startRelay(t, &Transport{Borrow: &borrow.Options{Origin: origin.Listener.Addr().String()}}, nil)
	serveEcho(r.ln)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cache := utls.NewLRUClientSessionCache(4)
	resumed := false
	for i := range 3 {
		c, did, err := dialBorrowedResuming(ctx, r.ep, true, cache)
		if err != nil {
			t.Fatalf("tagged dial %d: %v", i, err)
		}
		transporttest.EchoRoundTrip(t, c, []byte("resumed through the borrowed site"))
		c.Close()
		resumed = resumed || did
	}
	if !resumed {
		t.Fatal("no connection resumed a session")
	}
	if got := r.obs.Get(transport.OutcomeCover); got != 0 {
		t.Errorf("Observe(cover) = %d: a tagged hello went to the origin", got)
	}
}

func TestBorrowedSiteConfigErrors(t *testing.T) {
	cfg := transport.ListenConfig{Addr: "127.0.0.1:0", Certificate: cert(t), Path: testPath, Key: make([]byte, transport.KeySize)}
	_, err := (&Transport{Borrow: &borrow.Options{}}).Listen(context.Background(), cfg)
	if transport.ClassOf(err) != transport.ClassInvalid {
		t.Fatalf("no origin: %v, want an invalid-configuration error", err)
	}
}
