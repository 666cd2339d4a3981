package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

var sentinels = map[Class]error{
	ClassTimeout:  ErrTimeout,
	ClassRefused:  ErrRefused,
	ClassReset:    ErrReset,
	ClassTLS:      ErrTLS,
	ClassAuth:     ErrAuth,
	ClassProtocol: ErrProtocol,
	ClassCanceled: ErrCanceled,
	ClassInvalid:  ErrInvalid,
}

// checkClassified asserts that Classify(err) is an *Error of class want that
// matches want's sentinel and no other, keeps err's chain, and does not
// mention any of the addresses in hide.
func checkClassified(t *testing.T, err error, want Class, hide ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error to classify")
	}
	if got := ClassOf(err); got != want {
		t.Errorf("ClassOf(%v) = %v, want %v", err, got, want)
	}
	c := Classify("dial", "test", err)
	var te *Error
	if !errors.As(c, &te) {
		t.Fatalf("Classify returned %T, want *Error", c)
	}
	if te.Class != want || te.Op != "dial" || te.Transport != "test" {
		t.Errorf("Classify = %+v, want class %v op dial transport test", te, want)
	}
	if got := ClassOf(c); got != want {
		t.Errorf("ClassOf(Classify(err)) = %v, want %v", got, want)
	}
	for class, s := range sentinels {
		if is := errors.Is(c, s); is != (class == want) {
			t.Errorf("errors.Is(classified, %v) = %v", s, is)
		}
	}
	msg := c.Error()
	if !strings.Contains(msg, want.String()) || !strings.Contains(msg, "test") {
		t.Errorf("message %q does not name the class and transport", msg)
	}
	for _, h := range hide {
		if h != "" && strings.Contains(msg, h) {
			t.Errorf("message %q reveals %q", msg, h)
		}
	}
	// Classifying twice changes nothing.
	if again := Classify("other", "other", c); again != c {
		t.Errorf("Classify of an *Error returned a new value %v", again)
	}
}

// closedPort returns a loopback address on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func hostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

func TestClassifyRefused(t *testing.T) {
	addr := closedPort(t)
	_, err := net.Dial("tcp", addr)
	if err == nil {
		t.Skip("something is listening on a just-closed port")
	}
	if !strings.Contains(err.Error(), addr) {
		t.Fatalf("the raw error %q does not even contain the address; test is not meaningful", err)
	}
	host, port := hostPort(t, addr)
	checkClassified(t, err, ClassRefused, addr, host, ":"+port)
	// The cause is still reachable for callers that need it.
	if !errors.Is(Classify("dial", "test", err), syscall.ECONNREFUSED) {
		t.Error("Classify lost syscall.ECONNREFUSED from the chain")
	}
}

func TestClassifyRefusedWrapped(t *testing.T) {
	// A caller that wrapped the net error (with the address) before
	// classification still gets a clean message.
	addr := closedPort(t)
	_, err := net.Dial("tcp", addr)
	if err == nil {
		t.Skip("something is listening on a just-closed port")
	}
	host, port := hostPort(t, addr)
	checkClassified(t, fmt.Errorf("connect %s: %w", addr, err), ClassRefused, addr, host, ":"+port)
}

func TestClassifyContext(t *testing.T) {
	addr := closedPort(t)
	host, port := hostPort(t, addr)

	t.Run("dial with expired context", func(t *testing.T) {
		ctx, cancel := context.WithDeadline(context.Background(), time.Unix(1, 0))
		defer cancel()
		var d net.Dialer
		_, err := d.DialContext(ctx, "tcp", addr)
		checkClassified(t, err, ClassTimeout, addr, host, ":"+port)
	})
	t.Run("dial with canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var d net.Dialer
		_, err := d.DialContext(ctx, "tcp", addr)
		checkClassified(t, err, ClassCanceled, addr, host, ":"+port)
	})
	t.Run("bare context errors", func(t *testing.T) {
		checkClassified(t, context.DeadlineExceeded, ClassTimeout)
		checkClassified(t, context.Canceled, ClassCanceled)
		checkClassified(t, fmt.Errorf("waiting: %w", context.Canceled), ClassCanceled)
	})
	t.Run("context timeout fires", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		<-ctx.Done()
		checkClassified(t, ctx.Err(), ClassTimeout)
	})
}

func TestClassifyReadDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c.SetReadDeadline(time.Now().Add(-time.Second))
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	host, port := hostPort(t, ln.Addr().String())
	checkClassified(t, err, ClassTimeout, ln.Addr().String(), host, ":"+port)
}

func TestClassifyReset(t *testing.T) {
	t.Run("RST", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addr := ln.Addr().String()
		host, port := hostPort(t, addr)
		go func() {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			// Abortive close: the kernel answers with RST.
			s.(*net.TCPConn).SetLinger(0)
			s.Close()
		}()
		// The RST may already arrive while connect completes.
		c, err := net.Dial("tcp", addr)
		if err == nil {
			defer c.Close()
			_, err = c.Read(make([]byte, 1))
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Skipf("RST gave %v, not ECONNRESET", err)
		}
		checkClassified(t, err, ClassReset, addr, host, ":"+port)
	})
	t.Run("closed during TLS handshake", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addr := ln.Addr().String()
		host, port := hostPort(t, addr)
		go func() {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			// Read the ClientHello's record header, then hang up (FIN).
			io.ReadFull(s, make([]byte, 5))
			s.Close()
		}()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, &tls.Config{ServerName: "relay.example", MinVersion: tls.VersionTLS13})
		defer tc.Close()
		err = tc.Handshake()
		if err == nil {
			t.Fatal("handshake with a closed peer succeeded")
		}
		checkClassified(t, err, ClassReset, addr, host, ":"+port)
	})
	t.Run("EOF", func(t *testing.T) {
		checkClassified(t, io.EOF, ClassReset)
		checkClassified(t, io.ErrUnexpectedEOF, ClassReset)
		checkClassified(t, syscall.EPIPE, ClassReset)
	})
}

// selfSigned returns a fresh self-signed certificate for name.
func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsFailure runs a real handshake between a server presenting a
// self-signed certificate and a client that does not trust it, and returns
// both sides' errors. The client fails certificate verification and sends a
// bad_certificate alert, which the server receives.
func tlsFailure(t *testing.T) (addr string, clientErr, serverErr error) {
	t.Helper()
	cert := selfSigned(t, "relay.example")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- err
			return
		}
		defer c.Close()
		srv <- c.(*tls.Conn).Handshake()
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		ServerName: "relay.example",
		RootCAs:    x509.NewCertPool(), // trusts nothing
		MinVersion: tls.VersionTLS13,
	})
	if err == nil {
		c.Close()
		t.Fatal("client handshake with an untrusted certificate succeeded")
	}
	serverErr = <-srv
	if serverErr == nil {
		t.Fatal("server handshake succeeded although the client rejected its certificate")
	}
	return ln.Addr().String(), err, serverErr
}

func TestClassifyTLS(t *testing.T) {
	addr, clientErr, serverErr := tlsFailure(t)
	host, port := hostPort(t, addr)

	t.Run("client: certificate verification", func(t *testing.T) {
		var ce *tls.CertificateVerificationError
		if !errors.As(clientErr, &ce) {
			t.Fatalf("client error %T %v is not a CertificateVerificationError", clientErr, clientErr)
		}
		checkClassified(t, clientErr, ClassTLS, addr, host, ":"+port)
	})
	t.Run("server: received alert", func(t *testing.T) {
		if !strings.Contains(serverErr.Error(), "bad certificate") {
			t.Fatalf("server error %v is not the client's bad_certificate alert", serverErr)
		}
		// crypto/tls (and utls) report a received alert as
		// &net.OpError{Op: "remote error", Err: alert(n)}; alert is
		// unexported and is not tls.AlertError, which only QUIC uses.
		checkClassified(t, serverErr, ClassTLS, addr, host, ":"+port)
	})
	t.Run("alert values", func(t *testing.T) {
		checkClassified(t, tls.AlertError(42), ClassTLS)
		checkClassified(t, fmt.Errorf("quic handshake: %w", tls.AlertError(48)), ClassTLS)
	})
}

func TestClassifyRecordHeader(t *testing.T) {
	// A TLS client that reaches something speaking plain HTTP.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.WriteString(s, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
		io.Copy(io.Discard, s)
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "relay.example"})
	if err == nil {
		c.Close()
		t.Fatal("TLS handshake with an HTTP server succeeded")
	}
	var re tls.RecordHeaderError
	if !errors.As(err, &re) {
		t.Fatalf("error %T %v is not a RecordHeaderError", err, err)
	}
	host, port := hostPort(t, ln.Addr().String())
	checkClassified(t, err, ClassTLS, ln.Addr().String(), host, ":"+port)
}

func TestClassifyUnknownAndNil(t *testing.T) {
	if Classify("dial", "x", nil) != nil {
		t.Error("Classify(nil) != nil")
	}
	if ClassOf(nil) != ClassUnknown {
		t.Error("ClassOf(nil) is not unknown")
	}
	err := errors.New("something odd")
	if ClassOf(err) != ClassUnknown {
		t.Errorf("ClassOf(plain error) = %v", ClassOf(err))
	}
	c := Classify("handshake", "h3", err)
	for _, s := range sentinels {
		if errors.Is(c, s) {
			t.Errorf("unknown-class error matches %v", s)
		}
	}
	if !errors.Is(c, err) {
		t.Error("Classify lost the cause")
	}
}

func TestErrorIs(t *testing.T) {
	for class, s := range sentinels {
		e := &Error{Class: class, Op: "auth", Transport: "https", Err: errors.New("cause")}
		wrapped := fmt.Errorf("relay A: %w", e)
		for class2, s2 := range sentinels {
			if got := errors.Is(wrapped, s2); got != (class == class2) {
				t.Errorf("class %v: errors.Is(%v) = %v", class, s2, got)
			}
		}
		if !errors.Is(wrapped, s) || ClassOf(wrapped) != class {
			t.Errorf("class %v lost through wrapping", class)
		}
		var te *Error
		if !errors.As(wrapped, &te) || te != e {
			t.Errorf("class %v: errors.As failed", class)
		}
	}
}

func TestClassString(t *testing.T) {
	want := map[Class]string{
		ClassUnknown: "unknown", ClassTimeout: "timeout", ClassRefused: "refused",
		ClassReset: "reset", ClassTLS: "tls", ClassAuth: "auth",
		ClassProtocol: "protocol", ClassCanceled: "canceled", ClassInvalid: "invalid",
		Class(-1): "unknown", Class(99): "unknown",
	}
	for c, s := range want {
		if c.String() != s {
			t.Errorf("Class(%d).String() = %q, want %q", int(c), c.String(), s)
		}
	}
}

// An HTTP client error (*url.Error) names the URL, which holds the relay's
// address and its secret path. Classification must not let that through.
func TestClassifyHidesURL(t *testing.T) {
	const secret = "/s/7Hq2cV"
	addr := closedPort(t)
	rawURL := "https://" + addr + secret
	cases := map[string]error{
		"wrapping a net error": &url.Error{Op: "Post", URL: rawURL, Err: func() error {
			_, err := net.Dial("tcp", addr)
			return err
		}()},
		"wrapping EOF": &url.Error{Op: "Post", URL: rawURL, Err: io.EOF},
	}
	for name, err := range cases {
		t.Run(name, func(t *testing.T) {
			if err == nil {
				t.Skip("nothing to classify")
			}
			msg := Classify("dial", "https", err).Error()
			if strings.Contains(msg, addr) || strings.Contains(msg, secret) {
				t.Fatalf("%q reveals the address or secret path", msg)
			}
		})
	}
}

// x509 and DNS messages name hosts: the relay's, the names in its
// certificate. Classification keeps the cause in the chain but not in the
// message.
func TestClassifyHidesHostNames(t *testing.T) {
	leaf, err := x509.ParseCertificate(selfSigned(t, "relay.example").Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	hostErr := x509.HostnameError{Certificate: leaf, Host: "other.example"}
	if !strings.Contains(hostErr.Error(), "relay.example") {
		t.Fatalf("%q does not name the certificate's host; the test proves nothing", hostErr)
	}
	cases := []struct {
		name string
		err  error
		want Class
	}{
		{"hostname", hostErr, ClassTLS},
		{"hostname in a verification error", &tls.CertificateVerificationError{Err: hostErr}, ClassTLS},
		{"hostname wrapped", fmt.Errorf("handshake with relay.example: %w", hostErr), ClassTLS},
		{"unknown authority", x509.UnknownAuthorityError{Cert: leaf}, ClassTLS},
		{"expired", x509.CertificateInvalidError{Cert: leaf, Reason: x509.Expired, Detail: "relay.example expired"}, ClassTLS},
		{"verification error", &tls.CertificateVerificationError{Err: errors.New("relay.example: odd")}, ClassTLS},
		{"DNS not found", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "relay.example", IsNotFound: true}}, ClassUnknown},
		{"DNS timeout", &net.DNSError{Err: "i/o timeout", Name: "relay.example", Server: "192.0.2.53:53", IsTimeout: true}, ClassTimeout},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Classify("dial", "test", c.err)
			if ClassOf(got) != c.want {
				t.Errorf("class %v, want %v", ClassOf(got), c.want)
			}
			for _, leak := range []string{"relay.example", "other.example", "192.0.2.53"} {
				if strings.Contains(got.Error(), leak) {
					t.Errorf("%q names %s", got, leak)
				}
			}
			if !errors.Is(got, c.err) {
				t.Errorf("the cause left the chain")
			}
		})
	}
}

func TestRedact(t *testing.T) {
	cause := errors.New("secret relay.example")
	r := Redact("fixed", cause)
	if r.Error() != "fixed" || !errors.Is(r, cause) {
		t.Fatalf("Redact = %q, chain kept %v", r, errors.Is(r, cause))
	}
}

// TestClassifyNetworkDown: the errors of our own network (no route, no
// interface, a local address we do not have) are ClassNetworkDown, keep
// the errno in the chain, carry no address and say what to check.
func TestClassifyNetworkDown(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EADDRNOTAVAIL} {
		t.Run(errno.Error(), func(t *testing.T) {
			raw := &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 4433},
				Err: &os.SyscallError{Syscall: "connect", Err: errno}}
			err := Classify("dial", "test", raw)
			if c := ClassOf(err); c != ClassNetworkDown {
				t.Fatalf("class %v, want network_down", c)
			}
			if !errors.Is(err, ErrNetworkDown) || !errors.Is(err, errno) {
				t.Fatalf("%v lost its sentinel or errno", err)
			}
			if msg := err.Error(); strings.Contains(msg, "127.0.0.9") || !strings.Contains(msg, "check its network connection") {
				t.Fatalf("message %q", msg)
			}
		})
	}
}
