package client

import "testing"

// TestRecordWatchFollowsRecords: read in two pieces split at every
// point, two TLS records (one of 300 bytes, so its length has a high
// byte) are midway except at their boundaries.
func TestRecordWatchFollowsRecords(t *testing.T) {
	record := func(n int) []byte {
		return append([]byte{23, 3, 3, byte(n >> 8), byte(n)}, make([]byte, n)...)
	}
	first := record(3)
	stream := append(first, record(300)...)
	for split := 1; split < len(stream); split++ {
		w := &recordWatch{}
		w.scan(stream[:split])
		if mid, want := w.head > 0 || w.body > 0, split != len(first); mid != want {
			t.Fatalf("after %d of %d bytes: midway %v, want %v", split, len(stream), mid, want)
		}
		w.scan(stream[split:])
		if w.head > 0 || w.body > 0 {
			t.Fatalf("split at %d: midway at the end of the stream", split)
		}
	}
}
