package h3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
)

func TestClassify(t *testing.T) {
	addr := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 4433}
	tests := []struct {
		name string
		err  error
		want transport.Class
	}{
		{"idle timeout", &quic.IdleTimeoutError{}, transport.ClassTimeout},
		{"handshake timeout", &quic.HandshakeTimeoutError{}, transport.ClassTimeout},
		{"deadline", context.DeadlineExceeded, transport.ClassTimeout},
		{"canceled", context.Canceled, transport.ClassCanceled},
		{"stateless reset", &quic.StatelessResetError{}, transport.ClassReset},
		{"application close", &quic.ApplicationError{Remote: true, ErrorCode: 0x10c}, transport.ClassReset},
		{"stream reset", &quic.StreamError{StreamID: 0, ErrorCode: 0x10c, Remote: true}, transport.ClassReset},
		{"http3 stream error", fmt.Errorf("wrapped: %w", &http3.Error{Remote: true, ErrorCode: http3.ErrCodeRequestCanceled}), transport.ClassProtocol},
		{"TLS alert (remote)", &quic.TransportError{Remote: true, ErrorCode: 0x100 + 42}, transport.ClassTLS},
		{"TLS alert (local)", &quic.TransportError{ErrorCode: 0x100 + 48}, transport.ClassTLS},
		{"connection refused", &quic.TransportError{Remote: true, ErrorCode: quic.ConnectionRefused}, transport.ClassRefused},
		{"remote protocol violation", &quic.TransportError{Remote: true, ErrorCode: quic.ProtocolViolation}, transport.ClassReset},
		{"local protocol violation", &quic.TransportError{ErrorCode: quic.ProtocolViolation}, transport.ClassProtocol},
		{"version negotiation", &quic.VersionNegotiationError{}, transport.ClassProtocol},
		{"ICMP refused", &net.OpError{Op: "read", Net: "udp", Addr: addr, Err: syscall.ECONNREFUSED}, transport.ClassRefused},
		{"DNS timeout", &net.DNSError{Err: "i/o timeout", Name: "relay.example", IsTimeout: true}, transport.ClassTimeout},
		{"DNS not found", &net.DNSError{Err: "no such host", Name: "relay.example", IsNotFound: true}, transport.ClassUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := classify("dial", tt.err)
			var te *transport.Error
			if !errors.As(err, &te) {
				t.Fatalf("%T is not a *transport.Error", err)
			}
			if te.Class != tt.want || te.Transport != Name || te.Op != "dial" {
				t.Errorf("got class %v transport %q op %q, want %v h3 dial", te.Class, te.Transport, te.Op, tt.want)
			}
			for _, leak := range []string{"198.51.100.7", "4433", "relay.example"} {
				if strings.Contains(err.Error(), leak) {
					t.Errorf("%q contains %q", err, leak)
				}
			}
		})
	}
}

// A server that closes the QUIC connection right after the handshake (as an
// on-path box closing with an application error would) gives ClassReset.
func TestDialApplicationClose(t *testing.T) {
	tc := selfSigned(t)
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{tc.cert},
		NextProtos:   []string{http3.NextProtoH3},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			qc, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			qc.CloseWithError(0x10c, "")
		}
	}()
	ep := transport.Endpoint{Transport: Name, Addr: ln.Addr().String(), SNI: testSNI, Path: testPath, Key: testKey, CertSHA256: tc.pin}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	_, err = New().Dial(ctx, ep)
	if transport.ClassOf(err) != transport.ClassReset {
		t.Fatalf("Dial: %v, want ClassReset", err)
	}
}
