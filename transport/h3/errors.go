package h3

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

// classify is httpsession.Classify with the QUIC and HTTP/3 errors of this
// transport's stack.
func classify(op string, err error) error {
	return httpsession.Classify(Name, op, err, quicStack)
}

// quicStack classifies quic-go's and http3's own error types.
func quicStack(err error) (transport.Class, error, bool) {
	if qe, ok := errors.AsType[*quic.TransportError](err); ok {
		return transportErrorClass(qe, err)
	}
	switch {
	case isA[*quic.IdleTimeoutError](err), isA[*quic.HandshakeTimeoutError](err):
		return transport.ClassTimeout, err, true
	case isA[*quic.StatelessResetError](err), isA[*quic.ApplicationError](err), isA[*quic.StreamError](err):
		return transport.ClassReset, err, true
	case isA[*quic.VersionNegotiationError](err), isA[*http3.Error](err):
		return transport.ClassProtocol, err, true
	}
	return 0, nil, false
}

func isA[T error](err error) bool {
	_, ok := errors.AsType[T](err)
	return ok
}

// transportErrorClass classifies a QUIC CONNECTION_CLOSE. A crypto error
// carries a TLS alert and, from the peer, a reason phrase that is not shown.
func transportErrorClass(qe *quic.TransportError, err error) (transport.Class, error, bool) {
	switch {
	case qe.ErrorCode.IsCryptoError():
		alert := tls.AlertError(uint8(qe.ErrorCode - 0x100))
		side := "local"
		if qe.Remote {
			side = "remote"
		}
		return transport.ClassTLS, transport.Redact(fmt.Sprintf("TLS handshake failed (%s alert: %v)", side, alert), err), true
	case qe.Remote && qe.ErrorCode == quic.ConnectionRefused:
		return transport.ClassRefused, err, true
	case qe.Remote:
		return transport.ClassReset, err, true
	}
	return transport.ClassProtocol, err, true
}

// streamErr maps an error from a relay-side session stream Read or Write.
// io.EOF passes through unchanged (net.Conn contract); after a local Close
// the error wraps net.ErrClosed; everything else is classified.
func streamErr(err error, closed bool) error {
	switch {
	case err == nil, err == io.EOF:
		return err
	case closed:
		return &transport.Error{Class: transport.ClassCanceled, Op: "session", Transport: Name, Err: net.ErrClosed}
	}
	return classify("session", err)
}
