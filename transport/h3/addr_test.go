package h3

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestClientAddressHidden: the relay side of a session never learns the
// client's address from the transport.
func TestClientAddressHidden(t *testing.T) {
	r := startRelay(t, nil, nil)
	got := make(chan string, 1)
	go func() {
		c, err := r.ln.Accept(context.Background())
		if err != nil {
			got <- err.Error()
			return
		}
		got <- c.RemoteAddr().String()
		c.Close()
	}()
	c := dialT(t, r.ep)
	defer c.Close()
	select {
	case a := <-got:
		if strings.Contains(a, "127.0.0.1") || a != "client" {
			t.Fatalf("relay side RemoteAddr = %q", a)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no session accepted")
	}
}
