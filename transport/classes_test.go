package transport_test

// The same failure must get the same class in every transport: client
// fallback routing acts on the class, not on the transport.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/h3"
	"github.com/postern/postern/transport/https"
)

const (
	classPath = "/api/v2/sync"
	classSNI  = "relay.test"
)

// world is one transport's relay and the other places a client may reach
// by mistake or because of a censor, all on loopback.
type world struct {
	tr      transport.Transport
	ep      transport.Endpoint // reaches the relay
	refused string             // a port with nothing behind it
	silent  string             // a port that takes packets (and TCP connects) and never answers
	hole    string             // a port where nothing ever comes back, not even a TCP SYN-ACK
	plain   string             // an HTTPS server of the same kind that is no relay (404)
}

// notOurs is a local address this host does not have (TEST-NET-1): binding
// to it fails with EADDRNOTAVAIL before any packet leaves.
const notOurs = "192.0.2.1"

func tcpWorld(t *testing.T, cert tls.Certificate, ep transport.Endpoint) world {
	w := world{tr: &https.Transport{}, ep: ep}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.refused = closed.Addr().String()
	closed.Close()
	silent, err := net.Listen("tcp", "127.0.0.1:0") // the kernel completes connects; nobody talks
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	w.silent = silent.Addr().String()
	w.hole = fullBacklog(t)
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go srv.ServeTLS(plain, "", "")
	t.Cleanup(func() { srv.Close() })
	w.plain = plain.Addr().String()
	return w
}

func udpWorld(t *testing.T, cert tls.Certificate, ep transport.Endpoint) world {
	w := world{tr: h3.New(), ep: ep}
	closed, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.refused = closed.LocalAddr().String()
	closed.Close()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	w.silent = silent.LocalAddr().String()
	w.hole = w.silent // over UDP, silence is the blackhole
	plain, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{Handler: http.NotFoundHandler(), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go srv.Serve(plain)
	t.Cleanup(func() { srv.Close(); plain.Close() })
	w.plain = plain.LocalAddr().String()
	return w
}

// fullBacklog returns the address of a TCP listener whose accept queue is
// full and never drained: Linux drops further SYNs, so a connect to it
// times out as one to a blackholed address does.
func fullBacklog(t *testing.T) string {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // a queue of one
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	filler, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr
}

// worlds starts an https and an h3 relay with the same certificate, key
// and path, each with its surroundings.
func worlds(t *testing.T) (ws []world, roots *x509.CertPool) {
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	cert, err := https.SelfSigned("127.0.0.1", classSNI)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := https.CertPin(cert)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, transport.KeySize)
	rand.Read(key)
	for _, mk := range []func(*testing.T, tls.Certificate, transport.Endpoint) world{tcpWorld, udpWorld} {
		w := mk(t, cert, transport.Endpoint{})
		ln, err := w.tr.Listen(context.Background(), transport.ListenConfig{
			Addr: "127.0.0.1:0", Certificate: cert, Path: classPath, Key: key,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		w.ep = transport.Endpoint{Transport: w.tr.Name(), Addr: ln.Addr().String(), SNI: classSNI,
			Path: classPath, Key: key, CertSHA256: pin}
		ws = append(ws, w)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	return ws, roots
}

type dialFailure struct {
	name    string
	edit    func(ep *transport.Endpoint, w world)
	timeout time.Duration // 0: a generous bound that the failure must beat
	want    transport.Class
	wantH3  transport.Class // if set, h3's class where the same cause looks different over UDP
}

func dialFailures(roots *x509.CertPool) []dialFailure {
	otherPin := sha256.Sum256([]byte("some other key"))
	otherKey := make([]byte, transport.KeySize)
	return []dialFailure{
		{"refused port", func(ep *transport.Endpoint, w world) { ep.Addr = w.refused }, 0, transport.ClassRefused, 0},
		// A TCP connect that completes and a TLS handshake that never does:
		// the ServerHello is dropped (Iran 2025). Over UDP nothing comes back.
		{"silent server (ServerHello dropped)", func(ep *transport.Endpoint, w world) { ep.Addr = w.silent }, 300 * time.Millisecond,
			transport.ClassTLS, transport.ClassUDPSilent},
		// Nothing comes back at all: a blackholed address.
		{"blackholed", func(ep *transport.Endpoint, w world) { ep.Addr = w.hole }, 300 * time.Millisecond,
			transport.ClassTimeout, transport.ClassUDPSilent},
		{"local address we do not have", func(ep *transport.Endpoint, _ world) { ep.LocalAddr = notOurs }, 0,
			transport.ClassNetworkDown, 0},
		{"wrong pin", func(ep *transport.Endpoint, _ world) { ep.CertSHA256 = otherPin[:] }, 0, transport.ClassTLS, 0},
		{"untrusted certificate", func(ep *transport.Endpoint, _ world) { ep.CertSHA256 = nil; ep.RootCAs = x509.NewCertPool() }, 0, transport.ClassTLS, 0},
		{"certificate for another name", func(ep *transport.Endpoint, _ world) {
			ep.CertSHA256, ep.RootCAs, ep.SNI = nil, roots, "other.test"
		}, 0, transport.ClassTLS, 0},
		{"wrong key", func(ep *transport.Endpoint, _ world) { ep.Key = otherKey }, 0, transport.ClassAuth, 0},
		{"wrong path", func(ep *transport.Endpoint, _ world) { ep.Path = "/elsewhere" }, 0, transport.ClassAuth, 0},
		{"unbound token, binding required", func(ep *transport.Endpoint, _ world) { ep.Unbound = true }, 0, transport.ClassAuth, 0},
		{"HTTPS server that is no relay (404)", func(ep *transport.Endpoint, w world) { ep.Addr = w.plain }, 0, transport.ClassAuth, 0},
		{"canceled context", nil, -1, transport.ClassCanceled, 0},
		{"bad address", func(ep *transport.Endpoint, _ world) { ep.Addr = "no-port" }, 0, transport.ClassInvalid, 0},
		{"bad port", func(ep *transport.Endpoint, _ world) { ep.Addr = "127.0.0.1:99999" }, 0, transport.ClassInvalid, 0},
		{"key of wrong size", func(ep *transport.Endpoint, _ world) { ep.Key = otherKey[:16] }, 0, transport.ClassInvalid, 0},
		{"pin of wrong size", func(ep *transport.Endpoint, _ world) { ep.CertSHA256 = otherPin[:16] }, 0, transport.ClassInvalid, 0},
		{"relative path", func(ep *transport.Endpoint, _ world) { ep.Path = "api" }, 0, transport.ClassInvalid, 0},
		{"local address not an IP", func(ep *transport.Endpoint, _ world) { ep.LocalAddr = "eth0" }, 0, transport.ClassInvalid, 0},
		{"unknown transport", func(ep *transport.Endpoint, _ world) { ep.Transport = "meek" }, 0, transport.ClassInvalid, 0},
	}
}

func TestSameFailureSameClass(t *testing.T) {
	ws, roots := worlds(t)
	var reg transport.Registry
	for _, w := range ws {
		reg.Register(w.tr)
	}
	for _, f := range dialFailures(roots) {
		t.Run(f.name, func(t *testing.T) {
			got := make(map[string]transport.Class)
			for _, w := range ws {
				err := dialFailing(t, &reg, w, f)
				t.Logf("%s: %v", w.tr.Name(), err)
				got[w.tr.Name()] = transport.ClassOf(err)
				want := f.want
				if f.wantH3 != 0 && w.tr.Name() == h3.Name {
					want = f.wantH3
				}
				if c := transport.ClassOf(err); c != want {
					t.Errorf("%s: class %v (%v), want %v", w.tr.Name(), c, err, want)
				}
				if !errors.Is(err, sentinel(want)) {
					t.Errorf("%s: %v does not match the sentinel of %v", w.tr.Name(), err, want)
				}
				checkNoMetadata(t, w, err)
			}
			if f.wantH3 == 0 && got[https.Name] != got[h3.Name] {
				t.Errorf("https: %v, h3: %v", got[https.Name], got[h3.Name])
			}
		})
	}
}

// dialFailing dials w's relay with f's change through reg and returns the
// error, which must come.
func dialFailing(t *testing.T, reg *transport.Registry, w world, f dialFailure) error {
	ep := w.ep
	if f.edit != nil {
		f.edit(&ep, w)
	}
	timeout := 20 * time.Second
	if f.timeout > 0 {
		timeout = f.timeout
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	if f.timeout < 0 {
		cancel() // the caller gave up before dialing
	}
	c, err := reg.Dial(ctx, ep)
	if err == nil {
		c.Close()
		t.Fatalf("%s: Dial succeeded", w.tr.Name())
	}
	if _, ok := errors.AsType[*transport.Error](err); !ok {
		t.Fatalf("%s: %T %v is not a *transport.Error", w.tr.Name(), err, err)
	}
	return err
}

// checkNoMetadata fails if err names an address or a host.
func checkNoMetadata(t *testing.T, w world, err error) {
	t.Helper()
	msg := err.Error()
	for _, addr := range []string{w.ep.Addr, w.refused, w.silent, w.hole, w.plain} {
		_, port, _ := net.SplitHostPort(addr)
		for _, leak := range []string{addr, ":" + port} {
			if strings.Contains(msg, leak) {
				t.Errorf("%s: %q contains %q", w.tr.Name(), msg, leak)
			}
		}
	}
	for _, leak := range []string{"127.0.0.1", notOurs, classSNI, "other.test", classPath} {
		if strings.Contains(msg, leak) {
			t.Errorf("%s: %q contains %q", w.tr.Name(), msg, leak)
		}
	}
}

func sentinel(c transport.Class) error {
	return map[transport.Class]error{
		transport.ClassTimeout: transport.ErrTimeout, transport.ClassRefused: transport.ErrRefused,
		transport.ClassReset: transport.ErrReset, transport.ClassTLS: transport.ErrTLS,
		transport.ClassAuth: transport.ErrAuth, transport.ClassProtocol: transport.ErrProtocol,
		transport.ClassCanceled: transport.ErrCanceled, transport.ClassInvalid: transport.ErrInvalid,
		transport.ClassStalled: transport.ErrStalled, transport.ClassNetworkDown: transport.ErrNetworkDown,
		transport.ClassUDPSilent: transport.ErrUDPSilent, transport.ClassBusy: transport.ErrBusy,
		transport.ClassThrottled: transport.ErrThrottled, transport.ClassRelayDown: transport.ErrRelayDown,
	}[c]
}

func TestListenFailureSameClass(t *testing.T) {
	cert, err := https.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	good := transport.ListenConfig{Addr: "127.0.0.1:0", Certificate: cert, Path: classPath, Key: make([]byte, transport.KeySize)}
	cases := []struct {
		name string
		edit func(*transport.ListenConfig)
	}{
		{"no address", func(c *transport.ListenConfig) { c.Addr = "" }},
		{"no port", func(c *transport.ListenConfig) { c.Addr = "127.0.0.1" }},
		{"bad port", func(c *transport.ListenConfig) { c.Addr = "127.0.0.1:99999" }},
		{"no certificate", func(c *transport.ListenConfig) { c.Certificate = tls.Certificate{} }},
		{"relative path", func(c *transport.ListenConfig) { c.Path = "api" }},
		{"short key", func(c *transport.ListenConfig) { c.Key = c.Key[:16] }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, tr := range []transport.Transport{&https.Transport{}, h3.New()} {
				cfg := good
				tc.edit(&cfg)
				ln, err := tr.Listen(t.Context(), cfg)
				if err == nil {
					ln.Close()
					t.Fatalf("%s: Listen succeeded", tr.Name())
				}
				if c := transport.ClassOf(err); c != transport.ClassInvalid {
					t.Errorf("%s: class %v (%v), want invalid", tr.Name(), c, err)
				}
			}
		})
	}
}

// TestSameBrowserRequest: both transports send the session request with the
// headers of browser.Current, so a relay's logs (or a front's) see the same
// browser whichever transport came in. The request is caught by the cover
// site, where a session with the wrong key ends up.
func TestSameBrowserRequest(t *testing.T) {
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	cert, err := https.SelfSigned("127.0.0.1", classSNI)
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := https.CertPin(cert)
	seen := make(chan http.Header, 1)
	cover := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		http.NotFound(w, r)
	})
	var got []http.Header
	for _, tr := range []transport.Transport{&https.Transport{}, h3.New()} {
		ln, err := tr.Listen(t.Context(), transport.ListenConfig{Addr: "127.0.0.1:0", Certificate: cert,
			Path: classPath, Key: make([]byte, transport.KeySize), Cover: cover})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		wrongKey := make([]byte, transport.KeySize)
		wrongKey[0] = 1
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		_, err = tr.Dial(ctx, transport.Endpoint{Transport: tr.Name(), Addr: ln.Addr().String(), SNI: classSNI,
			Path: classPath, Key: wrongKey, CertSHA256: pin})
		cancel()
		if transport.ClassOf(err) != transport.ClassAuth {
			t.Fatalf("%s: %v, want ClassAuth", tr.Name(), err)
		}
		h := <-seen
		if ua := h.Get("User-Agent"); ua != browser.Current.UserAgent() || !strings.Contains(ua, "Chrome/156.") {
			t.Errorf("%s: User-Agent %q", tr.Name(), ua)
		}
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		if origin := "https://" + classSNI + ":" + port; h.Get("Origin") != origin || h.Get("Referer") != origin+"/" {
			t.Errorf("%s: origin %q, referer %q, want %s", tr.Name(), h.Get("Origin"), h.Get("Referer"), origin)
		}
		h.Del("Cookie") // a fresh token each time
		h.Del("Origin") // the listener's port
		h.Del("Referer")
		got = append(got, h)
	}
	// The profile's headers but Cookie, Origin and Referer (above), and
	// Content-Type: a request on the secret path reaches the cover without
	// its body and the headers that describe it (httpsession's decoy).
	if want := len(browser.Current.FetchHeaders) - 4; len(got[0]) != want || got[0].Get("Content-Type") != "" {
		t.Errorf("https sent %d other headers, the profile has %d: %v", len(got[0]), want, got[0])
	}
	for name, v := range got[0] {
		if strings.Join(v, ",") != strings.Join(got[1][name], ",") {
			t.Errorf("%s: https %q, h3 %q", name, v, got[1][name])
		}
	}
	if len(got[0]) != len(got[1]) {
		t.Errorf("https sent %v, h3 %v", got[0], got[1])
	}
}
