package transport

import (
	"context"
	"crypto/tls"
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
	ClassUnknown  Class = iota
	ClassTimeout        // no answer in time: blackholed address, dropped UDP
	ClassRefused        // connection refused: nothing listening, or a censor's RST to SYN
	ClassReset          // connection reset or closed mid-handshake: on-path injection
	ClassTLS            // TLS alert, bad certificate or pin mismatch
	ClassAuth           // the relay did not accept our session token
	ClassProtocol       // the peer spoke, but not the protocol we expected
	ClassCanceled       // the caller's context was canceled
)

var classNames = [...]string{"unknown", "timeout", "refused", "reset", "tls", "auth", "protocol", "canceled"}

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
	ErrTimeout  = errors.New("transport: timeout")
	ErrRefused  = errors.New("transport: connection refused")
	ErrReset    = errors.New("transport: connection reset")
	ErrTLS      = errors.New("transport: TLS failure")
	ErrAuth     = errors.New("transport: session rejected")
	ErrProtocol = errors.New("transport: protocol error")
	ErrCanceled = errors.New("transport: canceled")
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
	}
	return nil
}

// Error is a classified transport failure. Its message never contains the
// remote address: callers add the relay's name where that is safe.
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
	return guessClass(err)
}

// Classify wraps err as an *Error, guessing its class from the standard
// library error types. An err that already is an *Error is returned as is.
func Classify(op, transport string, err error) error {
	if err == nil {
		return nil
	}
	var te *Error
	if errors.As(err, &te) {
		return err
	}
	return &Error{Class: guessClass(err), Op: op, Transport: transport, Err: stripAddr(err)}
}

func guessClass(err error) Class {
	switch {
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return ClassTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return ClassRefused
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
	var ce *tls.CertificateVerificationError
	var re tls.RecordHeaderError
	if errors.As(err, &ae) || errors.As(err, &ce) || errors.As(err, &re) {
		return ClassTLS
	}
	return ClassUnknown
}

// stripAddr removes addresses that *net.OpError and friends put into
// messages, keeping the underlying cause, so that a transport error can be
// logged or shown without revealing where the relay (or client) is.
func stripAddr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		// Its message carries the URL: address and secret path.
		return fmt.Errorf("%s: %w", ue.Op, stripAddr(ue.Err))
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return fmt.Errorf("%s: %w", oe.Op, oe.Err)
	}
	return err
}
