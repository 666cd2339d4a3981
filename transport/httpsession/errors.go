package httpsession

import (
	"errors"
	"net"

	"github.com/postern/postern/transport"
)

// Stack recognises the failures that only one transport's network stack
// produces (QUIC's errors in transport/h3, uTLS's in transport/https). It
// returns their class and the error to carry, which is err itself or err
// behind a message without metadata (transport.Redact). ok false leaves err
// to the shared rules.
type Stack func(err error) (c transport.Class, carry error, ok bool)

var (
	errPinMismatch = errors.New("server certificate does not match the pinned key (CertSHA256); check the relay descriptor")
	errNoCert      = errors.New("server sent no certificate")
)

// Classify turns err, met by transport name during op, into a
// *transport.Error. The rules are the same for every HTTP transport, so the
// same failure gets the same class whichever transport met it:
//
//   - an err that already is a *transport.Error is returned as it is;
//   - a certificate that does not match the pin is ClassTLS;
//   - TLS alerts and certificate verification failures are ClassTLS, with
//     host names stripped (transport.Classify);
//   - then stack, which may be nil, classifies its own stack's errors;
//   - everything else is left to transport.Classify (context, network and
//     DNS errors), which also strips addresses.
func Classify(name, op string, err error, stack Stack) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*transport.Error](err); ok {
		return err
	}
	mk := func(c transport.Class, e error) error {
		return &transport.Error{Class: c, Op: op, Transport: name, Err: e}
	}
	switch {
	case errors.Is(err, errPinMismatch):
		return mk(transport.ClassTLS, transport.Redact(errPinMismatch.Error(), err))
	case errors.Is(err, errNoCert):
		return mk(transport.ClassTLS, transport.Redact(errNoCert.Error(), err))
	case transport.ClassOf(err) == transport.ClassTLS:
		return transport.Classify(op, name, err)
	}
	if stack != nil {
		if c, carry, ok := stack(err); ok {
			return mk(c, carry)
		}
	}
	return transport.Classify(op, name, err)
}

// invalid is the error of an endpoint or a listen configuration that cannot
// work: the user must fix it, retrying is useless.
func invalid(name, op, msg string) error {
	return &transport.Error{Class: transport.ClassInvalid, Op: op, Transport: name, Err: errors.New(msg)}
}

// closedErr is what session and listener methods return after Close.
func closedErr(name, op string) error {
	return &transport.Error{Class: transport.ClassCanceled, Op: op, Transport: name, Err: net.ErrClosed}
}
