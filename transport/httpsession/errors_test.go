package httpsession

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/postern/postern/transport"
)

func TestClassify(t *testing.T) {
	stackErr := errors.New("stack says relay.test is odd")
	stack := func(err error) (transport.Class, error, bool) {
		if errors.Is(err, stackErr) {
			return transport.ClassProtocol, transport.Redact("odd", err), true
		}
		return 0, nil, false
	}
	already := &transport.Error{Class: transport.ClassAuth, Op: "auth", Transport: "x", Err: errors.New("no")}
	cases := []struct {
		name string
		err  error
		want transport.Class
	}{
		{"pin", fmt.Errorf("tls: %w", errPinMismatch), transport.ClassTLS},
		{"no certificate", errNoCert, transport.ClassTLS},
		{"certificate before stack", &tls.CertificateVerificationError{Err: stackErr}, transport.ClassTLS},
		{"stack", stackErr, transport.ClassProtocol},
		{"standard", io.EOF, transport.ClassReset},
		{"classified", fmt.Errorf("wrapped: %w", already), transport.ClassAuth},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Classify(testName, "dial", c.err, stack)
			if transport.ClassOf(got) != c.want {
				t.Errorf("%v: class %v, want %v", got, transport.ClassOf(got), c.want)
			}
			if strings.Contains(got.Error(), "relay.test") {
				t.Errorf("%q names the host", got)
			}
			if !errors.Is(got, c.err) && !errors.Is(c.err, got) {
				t.Errorf("cause lost")
			}
		})
	}
	if Classify(testName, "dial", nil, stack) != nil {
		t.Error("Classify(nil) != nil")
	}
	if got := Classify(testName, "dial", io.EOF, nil); transport.ClassOf(got) != transport.ClassReset {
		t.Errorf("without a stack: %v", got)
	}
}
