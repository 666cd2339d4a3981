package h3

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
)

// errPinMismatch is returned by the certificate check when the server's key
// does not match Endpoint.CertSHA256.
var errPinMismatch = errors.New("server certificate does not match the pinned key")

// redacted keeps an error in the chain for errors.As/Is but shows only a
// fixed message: TLS and x509 messages carry host names of the relay.
type redacted struct {
	msg string
	err error
}

func (r *redacted) Error() string { return r.msg }
func (r *redacted) Unwrap() error { return r.err }

// classify turns any error met while dialing or using a session into a
// *transport.Error whose message carries no address or host name.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	if te, ok := errors.AsType[*transport.Error](err); ok {
		return te
	}
	mk := func(c transport.Class, e error) error {
		return &transport.Error{Class: c, Op: op, Transport: Name, Err: e}
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return mk(transport.ClassTimeout, err)
	}
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return mk(transport.ClassTimeout, err)
	}
	if _, ok := errors.AsType[*quic.StatelessResetError](err); ok {
		return mk(transport.ClassReset, err)
	}
	if errors.Is(err, errPinMismatch) {
		return mk(transport.ClassTLS, &redacted{msg: errPinMismatch.Error(), err: err})
	}
	if ce, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return mk(transport.ClassTLS, &redacted{msg: certMessage(ce.Err), err: err})
	}
	if qe, ok := errors.AsType[*quic.TransportError](err); ok {
		switch {
		case qe.ErrorCode.IsCryptoError():
			alert := tls.AlertError(uint8(qe.ErrorCode - 0x100))
			side := "local"
			if qe.Remote {
				side = "remote"
			}
			return mk(transport.ClassTLS, &redacted{msg: fmt.Sprintf("TLS handshake failed (%s alert: %v)", side, alert), err: err})
		case qe.Remote && qe.ErrorCode == quic.ConnectionRefused:
			return mk(transport.ClassRefused, err)
		case qe.Remote:
			return mk(transport.ClassReset, err)
		default:
			return mk(transport.ClassProtocol, err)
		}
	}
	if _, ok := errors.AsType[*quic.VersionNegotiationError](err); ok {
		return mk(transport.ClassProtocol, err)
	}
	if _, ok := errors.AsType[*quic.ApplicationError](err); ok {
		return mk(transport.ClassReset, err)
	}
	if _, ok := errors.AsType[*quic.StreamError](err); ok {
		return mk(transport.ClassReset, err)
	}
	if _, ok := errors.AsType[*http3.Error](err); ok {
		return mk(transport.ClassProtocol, err)
	}
	if _, ok := errors.AsType[tls.AlertError](err); ok {
		return mk(transport.ClassTLS, &redacted{msg: "TLS handshake failed", err: err})
	}
	if dnsErr, ok := errors.AsType[*net.DNSError](err); ok {
		c := transport.ClassUnknown
		if dnsErr.IsTimeout {
			c = transport.ClassTimeout
		}
		msg := "resolving the relay host failed"
		if dnsErr.IsNotFound {
			msg = "relay host not found"
		}
		return mk(c, &redacted{msg: msg, err: err})
	}
	return transport.Classify(op, Name, err)
}

func certMessage(err error) string {
	switch err.(type) {
	case x509.UnknownAuthorityError:
		return "server certificate signed by an unknown authority"
	case x509.HostnameError:
		return "server certificate is not valid for the relay's name"
	case x509.CertificateInvalidError:
		return "server certificate is invalid (expired or not yet valid?)"
	}
	return "server certificate verification failed"
}

// streamErr maps an error from a session stream Read or Write. io.EOF passes
// through unchanged (net.Conn contract); after a local Close the error wraps
// net.ErrClosed; everything else is classified.
func streamErr(err error, closed bool) error {
	switch {
	case err == nil, err == io.EOF:
		return err
	case closed:
		return &transport.Error{Class: transport.ClassCanceled, Op: "session", Transport: Name, Err: net.ErrClosed}
	}
	return classify("session", err)
}
