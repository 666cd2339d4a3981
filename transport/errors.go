package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
)

// Class is the kind of a transport failure, chosen so that client fallback
// routing can act on it (back off, try another transport, try another relay).
type Class int

const (
	ClassUnknown     Class = iota
	ClassTimeout           // no answer in time: a blackholed address (the TCP connect never completed)
	ClassRefused           // connection refused: nothing listening, or a censor's RST to SYN
	ClassReset             // connection reset or closed mid-handshake: on-path injection
	ClassTLS               // TLS alert, bad certificate, pin mismatch, or no ServerHello after the TCP connect
	ClassAuth              // the relay did not accept our session token
	ClassProtocol          // the peer spoke, but not the protocol we expected
	ClassCanceled          // the caller's context was canceled, or the listener closed
	ClassInvalid           // the endpoint or listen configuration is unusable: fix it, do not retry
	ClassStalled           // the flow stopped moving after some bytes: a censor's per-flow budget (freeze)
	ClassNetworkDown       // our own network is down (no route, no address): not the relay's fault
	ClassUDPSilent         // UDP packets went out and nothing ever came back (UDP dropped on path)
	ClassBusy              // the relay answered but is at a cap: come back later
	ClassThrottled         // the flow moves, but below a usable floor (a censor's throttle)
	ClassRelayDown         // every way into the relay was refused: the relay itself is down
)

var classNames = [...]string{"unknown", "timeout", "refused", "reset", "tls", "auth", "protocol", "canceled", "invalid", "stalled",
	"network_down", "udp_silent", "busy", "throttled", "relay_down"}

// String returns a short, stable, lower-case name usable as a metric label.
func (c Class) String() string {
	if int(c) < 0 || int(c) >= len(classNames) {
		return "unknown"
	}
	return classNames[c]
}

// Sentinels, one per class, for errors.Is. An *Error matches the sentinel
// of its class.
var (
	ErrTimeout     = errors.New("transport: timeout")
	ErrRefused     = errors.New("transport: connection refused")
	ErrReset       = errors.New("transport: connection reset")
	ErrTLS         = errors.New("transport: TLS failure")
	ErrAuth        = errors.New("transport: session rejected")
	ErrProtocol    = errors.New("transport: protocol error")
	ErrCanceled    = errors.New("transport: canceled")
	ErrInvalid     = errors.New("transport: invalid endpoint or configuration")
	ErrStalled     = errors.New("transport: flow stalled")
	ErrNetworkDown = errors.New("transport: local network down")
	ErrUDPSilent   = errors.New("transport: no UDP answer")
	ErrBusy        = errors.New("transport: relay busy")
	ErrThrottled   = errors.New("transport: flow throttled")
	ErrRelayDown   = errors.New("transport: relay down")
)

func (c Class) sentinel() error {
	switch c {
	case ClassTimeout:
		return ErrTimeout
	case ClassRefused:
		return ErrRefused
	case ClassReset:
		return ErrReset
	case ClassTLS:
		return ErrTLS
	case ClassAuth:
		return ErrAuth
	case ClassProtocol:
		return ErrProtocol
	case ClassCanceled:
		return ErrCanceled
	case ClassInvalid:
		return ErrInvalid
	case ClassStalled:
		return ErrStalled
	case ClassNetworkDown:
		return ErrNetworkDown
	case ClassUDPSilent:
		return ErrUDPSilent
	case ClassBusy:
		return ErrBusy
	case ClassThrottled:
		return ErrThrottled
	case ClassRelayDown:
		return ErrRelayDown
	}
	return nil
}

// Error is a classified transport failure. Its message never contains the
// remote address or host name (see Classify): callers add the relay's name
// where that is safe.
type Error struct {
	Class     Class
	Op        string // "dial", "handshake", "auth", "listen"
	Transport string
	Err       error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s via %s: %s: %v", e.Op, e.Transport, e.Class, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinel of e's class.
func (e *Error) Is(target error) bool {
	s := e.Class.sentinel()
	return s != nil && target == s
}

// ClassOf returns the class of err: the Class of an *Error in its chain, or a
// best guess from the standard library's error types.
func ClassOf(err error) Class {
	if err == nil {
		return ClassUnknown
	}
	var te *Error
	if errors.As(err, &te) {
		return te.Class
	}
	var ce Classed
	if errors.As(err, &ce) {
		return ce.TransportClass()
	}
	return guessClass(err)
}

// Classed is an error from above the transport that knows its class, such
// as a relay's answer that it is busy; ClassOf honours it.
type Classed interface {
	error
	TransportClass() Class
}

// Classify wraps err as an *Error, guessing its class from the standard
// library error types, with the addresses and host names that network, URL,
// DNS and x509 errors print taken out of its message (the cause stays in the
// chain). An err that already is an *Error is returned as is.
func Classify(op, transport string, err error) error {
	if err == nil {
		return nil
	}
	var te *Error
	if errors.As(err, &te) {
		return err
	}
	c := guessClass(err)
	carry := redact(err)
	if c == ClassNetworkDown {
		carry = fmt.Errorf("%w: this device has no route or no such local address; check its network connection", carry)
	}
	return &Error{Class: c, Op: op, Transport: transport, Err: carry}
}

func guessClass(err error) Class {
	switch {
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return ClassTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return ClassRefused
	case localNetworkDown(err):
		return ClassNetworkDown
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ClassReset
	}
	// crypto/tls and utls report alerts sent and received as *net.OpError
	// with these Ops around an unexported alert type.
	var oe *net.OpError
	if errors.As(err, &oe) && (oe.Op == "remote error" || oe.Op == "local error") {
		return ClassTLS
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ClassTimeout
	}
	var ae tls.AlertError
	var re tls.RecordHeaderError
	if errors.As(err, &ae) || errors.As(err, &re) || certMessage(err) != "" {
		return ClassTLS
	}
	return ClassUnknown
}

// localNetworkDown reports whether err is our own network failing rather
// than the relay or the path to it: no route (ENETUNREACH, EHOSTUNREACH),
// no interface up (ENETDOWN), or a local address we do not have
// (EADDRNOTAVAIL on bind). EHOSTUNREACH is also what an ICMP host
// unreachable from a router becomes; a censor rarely forges one, and
// counting it as ours only means the recipe is not backed off.
func localNetworkDown(err error) bool {
	for _, e := range []syscall.Errno{syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// redact removes what names the relay (or the client) from err's message
// while keeping err in the chain for errors.Is and errors.As: the addresses
// that *net.OpError and *url.Error print (with the secret path), the host
// names in x509 and DNS errors. It is the one place where transports strip
// such metadata; Classify applies it to every error it wraps.
func redact(err error) error {
	if msg := certMessage(err); msg != "" {
		return Redact(msg, err)
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		msg := "resolving the relay's host name failed"
		if de.IsNotFound {
			msg = "relay host name not found"
		}
		return Redact(msg, err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// Its message carries the URL: address and secret path.
		return fmt.Errorf("%s: %w", ue.Op, redact(ue.Err))
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return fmt.Errorf("%s: %w", oe.Op, oe.Err)
	}
	return err
}

// certMessage returns a fixed description of the certificate verification
// failure in err's chain, or "" if there is none. x509 messages name the
// host asked for and the names in the certificate.
func certMessage(err error) string {
	var (
		he x509.HostnameError
		ue x509.UnknownAuthorityError
		ie x509.CertificateInvalidError
		ce *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &he):
		return "server certificate is not valid for the relay's name"
	case errors.As(err, &ue):
		return "server certificate signed by an unknown authority"
	case errors.As(err, &ie):
		return "server certificate is invalid (expired or not yet valid?)"
	case errors.As(err, &ce):
		return "server certificate verification failed"
	}
	return ""
}

// Redact returns an error whose message is msg and which unwraps to err. Use
// it where err's own message names a host or an address that must not reach
// a log.
func Redact(msg string, err error) error { return &redacted{msg: msg, err: err} }

type redacted struct {
	msg string
	err error
}

func (r *redacted) Error() string { return r.msg }
func (r *redacted) Unwrap() error { return r.err }
