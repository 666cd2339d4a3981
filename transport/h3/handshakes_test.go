package h3

import (
	"context"
	"testing"
	"testing/synctest"
)

// A handshake slot is given back once: when the HTTP/3 server accepts the
// connection (which also drops the watch on the connection's context, so
// an established connection holds nothing of it), or when the connection
// dies first.
func TestHandshakeSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &handshakes{max: 2, retryAbove: 1}
		base, endA := context.WithCancel(context.Background())
		a, err := h.connContext(base, nil)
		if err != nil {
			t.Fatal(err)
		}
		baseB, endB := context.WithCancel(context.Background())
		if _, err := h.connContext(baseB, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := h.connContext(context.Background(), nil); err != errTooManyHandshakes {
			t.Fatalf("third connection: %v, want %v", err, errTooManyHandshakes)
		}
		if !h.verify(nil) {
			t.Error("no Retry above the threshold")
		}
		releaseSlot(a)
		if got := h.inFlight.Load(); got != 1 {
			t.Fatalf("in flight after accept: %d, want 1", got)
		}
		if a.Value(handshakeKey{}).(*slot).stop() {
			t.Error("the accepted connection's context is still watched")
		}
		endA()
		endB() // B dies in its handshake
		synctest.Wait()
		if got := h.inFlight.Load(); got != 0 {
			t.Fatalf("in flight after both ended: %d, want 0", got)
		}
	})
}
