package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/censortest"
)

// TestDrainWatchedLeavesPage: a Drain whose watch says to leave the
// second page, which begins after a wait, comes 2 KiB at a time and
// stops half way, returns ErrPageLeft at once, waiting neither for that
// page nor for the answer to the first page's Ack (which never comes):
// the first page's messages were taken and acked, nothing of the second
// was. The watch is shown the page from its first byte on (never longer
// ago than that byte was written), and how long the session has read
// nothing. The first page's refs are left for the caller to ack again
// when that Ack's answer has not come, and not when it has; what came
// of the second page (an envelope whole, the first bytes of the next)
// is left to the caller too (PageLeft.Came).
func TestDrainWatchedLeavesPage(t *testing.T) {
	t.Run("ack unanswered", func(t *testing.T) { drainLeavingPage(t, false, false) })
	t.Run("ack answered", func(t *testing.T) { drainLeavingPage(t, true, false) })
	// A Drain that ends on an error does not wait for the page it asked
	// for either (a reviewer's find: it waited for it to come whole).
	t.Run("take refused", func(t *testing.T) { drainLeavingPage(t, false, true) })
}

// drainLeavingPage is TestDrainWatchedLeavesPage, with the first page's
// Ack answered (before the second page begins) or never; or, if refuse,
// the first page's first message refused by the inbox's Take.
func drainLeavingPage(t *testing.T, answerAck, refuse bool) {
	id, msgs, envs := sealed(t, 100, 200, 300, 40<<10)
	_, key, _ := ed25519.GenerateKey(nil)
	r := &leavingRelay{envs: envs, answerAck: answerAck, ackDone: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	c, err := scriptedClient(ctx, t, key, r.serve)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got [][]byte
	errRefused := errors.New("refused")
	in, err := client.NewInbox(client.InboxConfig{Identity: id, Take: func(m client.Message) error {
		if refuse {
			return errRefused
		}
		got = append(got, m.Payload)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var seen []client.PageProgress
	if refuse {
		err := in.DrainWatched(ctx, c, key, [32]byte{1}, func(client.PageProgress) bool { return false })
		if !errors.Is(err, errRefused) || c.Err() != nil || ctx.Err() != nil {
			t.Fatalf("DrainWatched: %v, want the refusal before the session ended (%v) or the deadlock guard (%v)", err, c.Err(), ctx.Err())
		}
		return
	}
	err = in.DrainWatched(ctx, c, key, [32]byte{1}, func(p client.PageProgress) bool {
		seen = append(seen, p)
		if w := r.firstWrite.Load(); w == 0 || p.Since > time.Since(time.Unix(0, w)) {
			t.Errorf("shown %+v, the page's first byte written %v ago", p, time.Since(time.Unix(0, w)))
		}
		return p.Bytes >= 8<<10 && p.Idle >= 250*time.Millisecond // the writer stopped
	})
	// At once: the session had not stalled (it stalls after 10 s with
	// nothing read), nor the deadlock guard ended.
	if !errors.Is(err, client.ErrPageLeft) || c.Err() != nil || ctx.Err() != nil {
		t.Fatalf("DrainWatched: %v, want ErrPageLeft before the session ended (%v) or the deadlock guard (%v)", err, c.Err(), ctx.Err())
	}
	// The first page's Ack, unanswered, is for the caller to send again.
	pl, ok := errors.AsType[*client.PageLeft](err)
	switch {
	case !ok:
		t.Fatalf("DrainWatched: %#v, not a PageLeft", err)
	case answerAck && len(pl.Unacked) != 0:
		t.Fatalf("the first page's Ack was answered, yet %d refs are left unacked", len(pl.Unacked))
	case !answerAck && (len(pl.Unacked) != 2 || pl.Unacked[0] != (client.Ref{1}) || pl.Unacked[1] != (client.Ref{2})):
		t.Fatalf("unacked %x, want the first page's refs", pl.Unacked)
	}
	if len(got) != 2 || !bytes.Equal(got[0], msgs[0]) || !bytes.Equal(got[1], msgs[1]) {
		t.Fatalf("took %d messages, want the first page's 2", len(got))
	}
	// Envelope 3 whole; of 4 what was written of it (the writer stopped:
	// all of it was read), less the frames' heads.
	head := relay.FrameHeaderSize + 4 + 32 + relay.RefSize + 8
	want4 := int(r.written.Load()) - 2*head - len(envs[2])
	if c := pl.Came; len(c) != 2 || c[0].Seq != 3 || c[0].Ref != (client.Ref{3}) || c[0].Total != len(envs[2]) || !bytes.Equal(c[0].Data, envs[2]) ||
		c[1].Seq != 4 || c[1].Ref != (client.Ref{4}) || c[1].Total != len(envs[3]) || len(c[1].Data) != want4 || !bytes.Equal(c[1].Data, envs[3][:want4]) {
		t.Fatalf("came %d envelopes (%+v), want envelope 3 whole and %d bytes of 4", len(c), seqsOf(c), want4)
	}
	last := seen[len(seen)-1]
	if last.Bytes < 8<<10 || last.Idle >= last.Since || last.Read <= last.Bytes || last.After != 2 {
		t.Fatalf("the watch saw %+v last", last)
	}
	r.ackedFirstPage(t)
}

// leavingRelay is drainLeavingPage's relay: it answers the first Fetch
// with envelopes 1 and 2 at once, and the second with 3 and 4 after a
// wait (for the first page's Ack's answer, if answerAck), slowly, and
// never all of 4; it answers Acks only if answerAck.
type leavingRelay struct {
	envs       [][]byte
	answerAck  bool
	ackDone    chan struct{}
	firstWrite atomic.Int64 // unix nanoseconds
	written    atomic.Int64 // of the second page
	mu         sync.Mutex
	acked      [][relay.RefSize]byte
}

func (r *leavingRelay) deliver(req uint32, seq uint64) []byte {
	return relay.AppendFrame(nil, relay.Deliver{Req: req, Mailbox: [32]byte{1}, Ref: [relay.RefSize]byte{byte(seq)}, Seq: seq, Envelope: r.envs[seq-1]})
}

func (r *leavingRelay) serve(sc transport.Conn, typ relay.FrameType, p []byte, req uint32) bool {
	switch typ {
	case relay.FrameFetch:
		if m, _ := relay.ParseFetch(p); m.After == 0 { // the first page: envelopes 1 and 2
			sc.Write(append(r.deliver(req, 1), r.deliver(req, 2)...))
			sc.Write(relay.AppendFrame(nil, relay.Result{Req: req, Body: relay.CountBody(2)}))
			return true
		}
		go r.slowPage(sc, req)
	case relay.FrameAck: // unanswered, a leaving Drain does not wait for it
		m, _ := relay.ParseAck(p)
		r.mu.Lock()
		r.acked = append(r.acked, m.Refs...)
		r.mu.Unlock()
		if r.answerAck {
			sc.Write(relay.AppendFrame(nil, relay.Result{Req: req, Body: relay.CountBody(len(m.Refs))}))
			close(r.ackDone)
		}
	}
	return true
}

// ackedFirstPage waits until the relay was sent the Ack of the first
// page's two envelopes, and fails t if anything else was acked.
func (r *leavingRelay) ackedFirstPage(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r.mu.Lock()
		n := len(r.acked)
		r.mu.Unlock()
		if n == 2 {
			break
		}
		if n > 2 || time.Now().After(deadline) { // a deadlock guard
			t.Fatalf("%d envelopes acked, want the first page's 2", n)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.acked[0] != [relay.RefSize]byte{1} || r.acked[1] != [relay.RefSize]byte{2} {
		t.Fatalf("acked %x, want the first page's", r.acked)
	}
}

// slowPage writes the second page: envelopes 3 and 4, 2 KiB at a time,
// up to half of 4.
func (r *leavingRelay) slowPage(sc transport.Conn, req uint32) {
	b3 := r.deliver(req, 3)
	b := append(b3, r.deliver(req, 4)...)
	if r.answerAck {
		select {
		case <-r.ackDone:
		case <-time.After(20 * time.Second): // a deadlock guard
			return
		}
	}
	time.Sleep(300 * time.Millisecond)
	r.firstWrite.Store(time.Now().UnixNano())
	for i := 0; i < len(b3)+(len(b)-len(b3))/2; i += 2 << 10 {
		if _, err := sc.Write(b[i : i+2<<10]); err != nil {
			return
		}
		r.written.Add(2 << 10)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDrainWatchedThenLanes: behind a censor that throttles each flow, a
// Drain whose watch leaves the page once 32 KiB of it came (as recv's
// does at under 16 KiB/s) leaves every envelope on the relay, and
// DrainLanes from a new session then takes them all, whole and in
// order, asking only for the rest of what came of the page left. A watch that never says to leave lets a Drain take them all.
func TestDrainWatchedThenLanes(t *testing.T) {
	w := newPartsWorld(t)
	w.stall = 10 * time.Second
	w.mb.SetRule(censortest.Throttle(16 << 10))
	msgs := randomMsgs(60<<10, 100, 60<<10)
	for _, m := range msgs {
		w.send(t, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a deadlock guard
	defer cancel()
	var got [][]byte
	in := w.inbox(t, &got)
	c, err := w.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var last client.PageProgress
	err = in.DrainWatched(ctx, c, w.box.Owner, w.box.ID, func(p client.PageProgress) bool {
		last = p
		return p.Bytes >= 32<<10
	})
	c.Close()
	if !errors.Is(err, client.ErrPageLeft) || len(got) != 0 {
		t.Fatalf("DrainWatched: %v, %d taken", err, len(got))
	}
	t.Logf("left the page at %+v (%.1f KB/s)", last, float64(last.Bytes)/last.Since.Seconds()/1000)
	pl, _ := errors.AsType[*client.PageLeft](err)
	if n := w.waiting(t); n != len(msgs) {
		t.Fatalf("%d envelopes on the relay after the page was left, want %d", n, len(msgs))
	}
	first, err := w.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// What came of the page left is not asked for again: of its first
	// envelope, past the first probe's 4 KiB; of any other, past the
	// 128 bytes a probe checks it by.
	kept := 0
	for i, b := range pl.Came {
		kept += max(0, len(b.Data)-min(b.Total, map[bool]int{true: 4 << 10, false: 128}[i == 0]))
	}
	var st client.LanesStats
	if _, err := in.DrainLanes(ctx, first, w.dial, w.box.Owner, w.box.ID, client.LanesConfig{Lanes: 4, Have: pl.Came, Stats: &st}); err != nil {
		t.Fatal(err)
	}
	w.allTaken(t, got, msgs)
	t.Logf("came of the page: %v (seq, bytes, size); the lanes kept %d bytes", seqsOf(pl.Came), st.Kept)
	if len(pl.Came) == 0 || len(pl.Came[0].Data) < last.Bytes || st.Kept != kept {
		t.Fatalf("came %v of the page, %d bytes kept by the lanes, want %d (the page left at %d bytes)", seqsOf(pl.Came), st.Kept, kept, last.Bytes)
	}

	// A watch that lets the page come.
	w.mb.SetRule(censortest.Throttle(64 << 10))
	for _, m := range msgs {
		w.send(t, m)
	}
	got = nil
	c, err = w.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	watched := 0
	if err := in.DrainWatched(ctx, c, w.box.Owner, w.box.ID, func(client.PageProgress) bool { watched++; return false }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(msgs) || w.waiting(t) != 0 {
		t.Fatalf("a watched Drain took %d of %d messages, left %d", len(got), len(msgs), w.waiting(t))
	}
	t.Logf("the watch was shown the page %d times", watched)
}

// seqsOf is what came of each envelope: sequence number, bytes, size.
func seqsOf(bs []client.Begun) [][3]int {
	var out [][3]int
	for _, b := range bs {
		out = append(out, [3]int{int(b.Seq), len(b.Data), b.Total})
	}
	return out
}
