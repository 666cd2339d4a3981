package https

import (
	"context"
	"net"
	"testing"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

func TestName(t *testing.T) {
	if (&Transport{}).Name() != Name || Name != "https" {
		t.Fatalf("Name %q", (&Transport{}).Name())
	}
}

// The early failures of Dial, and a dial from a chosen local address.
// (transport/classes_test.go compares all classes with h3.)
func TestDialEarlyFailures(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	serveEcho(r.ln)
	ep := r.ep
	ep.Key = ep.Key[:8]
	if _, err := (&Transport{}).Dial(t.Context(), ep); transport.ClassOf(err) != transport.ClassInvalid {
		t.Errorf("short key: %v, want ClassInvalid", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := (&Transport{}).Dial(ctx, r.ep); transport.ClassOf(err) != transport.ClassCanceled {
		t.Errorf("canceled: %v, want ClassCanceled", err)
	}
	ep = r.ep
	ep.LocalAddr = "127.0.0.1"
	c := dial(t, ep)
	defer c.Close()
	if host, _, _ := net.SplitHostPort(c.LocalAddr().String()); host != "127.0.0.1" {
		t.Errorf("local address %v", c.LocalAddr())
	}
	transporttest.EchoRoundTrip(t, c, []byte("from 127.0.0.1"))
}
