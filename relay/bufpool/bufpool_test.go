package bufpool

import (
	"testing"

	"github.com/postern/postern/envelope"
)

func TestGetClass(t *testing.T) {
	for _, tc := range []struct{ n, cap int }{
		{0, envelope.Bucket4K + Slack},
		{envelope.Bucket4K + Slack, envelope.Bucket4K + Slack},
		{envelope.Bucket4K + Slack + 1, envelope.Bucket16K + Slack},
		{envelope.Bucket64K + Slack, envelope.Bucket64K + Slack},
		{envelope.Bucket64K + Slack + 1, envelope.Bucket64K + Slack + 1},
	} {
		p := Get(tc.n)
		if len(p) != tc.n || cap(p) != tc.cap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", tc.n, len(p), cap(p), tc.n, tc.cap)
		}
	}
}

// TestPutReuses: a buffer given back serves a later Get of its class,
// not of another class; a slice of foreign capacity is not pooled. (A
// sync.Pool may drop an item, or keep it on a P the goroutine moved off:
// each check tries up to 100 times.)
func TestPutReuses(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	reused := false
	for range 100 {
		p := Get(100)
		Put(p[:10])
		if q := Get(envelope.Bucket16K); cap(q) != envelope.Bucket16K+Slack {
			t.Fatalf("a 16 KiB Get got capacity %d", cap(q))
		}
		if q := Get(200); &q[0] == &p[0] {
			reused = true
			break
		}
	}
	if !reused {
		t.Fatal("a 4 KiB class buffer given back was never reused")
	}
	for range 100 { // a larger class's buffer never serves a smaller class
		Put(Get(envelope.Bucket64K))
		Put(Get(envelope.Bucket16K))
		if r := Get(100); cap(r) != envelope.Bucket4K+Slack {
			t.Fatalf("a 4 KiB Get got capacity %d", cap(r))
		}
		if r := Get(envelope.Bucket16K); cap(r) != envelope.Bucket16K+Slack {
			t.Fatalf("a 16 KiB Get got capacity %d", cap(r))
		}
	}
	for range 100 {
		Put(make([]byte, 10, 5000))
		if r := Get(300); cap(r) != envelope.Bucket4K+Slack {
			t.Fatalf("a foreign slice was pooled: capacity %d", cap(r))
		}
	}
}

func BenchmarkGetPut(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Put(Get(envelope.Bucket4K + 100))
	}
}
