package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/transport"
)

// TestFollowLeavesPush: a Follow whose Leave says to leave while the
// subscription pushes an envelope closes the session at once, tells Left
// what came (the envelope pushed whole and not yet handed over, and the
// first bytes of the one coming, none of them handed to the inbox or
// acked) and the refs of the Acks whose answers had not come, and dials
// again at once: no backoff (an hour here), no Lost. Leave is shown the
// envelope being pushed, never one that came whole. An Ack answered
// before the session was closed, though not yet seen by Follow, leaves
// no refs unacked.
func TestFollowLeavesPush(t *testing.T) {
	t.Run("ack unanswered", func(t *testing.T) { followLeavingPush(t, false) })
	t.Run("ack answered", func(t *testing.T) { followLeavingPush(t, true) })
}

// followLeavingPush is TestFollowLeavesPush, with the Ack of envelopes 1
// and 2 answered (while Follow waits in Leave) or never.
func followLeavingPush(t *testing.T, answerAck bool) {
	id, msgs, envs := sealed(t, 100, 200, 40<<10, 40<<10)
	_, key, _ := ed25519.GenerateKey(nil)
	r := &pushRelay{envs: envs, acked: make(chan struct{}), more: make(chan struct{}), half: len(envs[3]) / 2, answer: answerAck}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	var got [][]byte
	in, err := client.NewInbox(client.InboxConfig{Identity: id, Take: func(m client.Message) error {
		got = append(got, m.Payload)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var first *client.Client
	var dials, lost atomic.Int64
	cfg := in.FollowConfig(func(ctx context.Context) (*client.Client, error) {
		if dials.Add(1) > 1 {
			cancel() // dialed again: the test ends
			return nil, ctx.Err()
		}
		c, err := scriptedClient(ctx, t, key, r.serve)
		first = c
		return c, err
	}, key, [32]byte{1})
	cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
	cfg.Lost = func(error, time.Duration) { lost.Add(1) }
	var shown []client.Pushing
	cfg.Leave = func(p client.Pushing) bool {
		if p.Seq == 0 {
			return false // nothing being pushed
		}
		shown = append(shown, p)
		if len(shown) > 1 {
			t.Errorf("Leave asked again after it said to leave: %+v", p)
			return false
		}
		// Hold Follow here while the relay pushes the rest of envelope
		// 3 and begins 4: 3 is then whole and not handed over.
		close(r.more)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
			if q, ok := first.PushingForTest(); ok && q.Seq == 4 {
				return true
			}
			if time.Now().After(deadline) { // a deadlock guard
				t.Error("envelope 4 never began")
				return true
			}
		}
	}
	var left []*client.PageLeft
	cfg.Left = func(pl *client.PageLeft) { left = append(left, pl) }
	if err := client.Follow(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if dials.Load() != 2 || lost.Load() != 0 {
		t.Fatalf("%d dials and %d Lost after the leave, want a second dial at once and no Lost", dials.Load(), lost.Load())
	}
	if len(shown) != 1 || shown[0].Seq != 3 || shown[0].Total != len(envs[2]) || shown[0].Got <= 0 || shown[0].Got >= shown[0].Total {
		t.Fatalf("Leave was shown %+v, want envelope 3 of %d bytes, part of it come", shown, len(envs[2]))
	}
	if len(got) != 2 || !bytes.Equal(got[0], msgs[0]) || !bytes.Equal(got[1], msgs[1]) {
		t.Fatalf("took %d messages, want envelopes 1 and 2's", len(got))
	}
	if len(left) != 1 {
		t.Fatalf("Left told %d times, want once", len(left))
	}
	pl := left[0]
	if u := pl.Unacked; answerAck && len(u) != 0 {
		t.Fatalf("unacked %x, though their Ack was answered", u)
	} else if u := pl.Unacked; !answerAck && (len(u) != 2 || u[0] != (client.Ref{1}) || u[1] != (client.Ref{2})) {
		t.Fatalf("unacked %x, want the refs of 1 and 2, whose Ack was not answered", u)
	}
	c := pl.Came
	if len(c) != 2 || c[0].Seq != 3 || c[0].Ref != (client.Ref{3}) || c[0].Total != len(envs[2]) || !bytes.Equal(c[0].Data, envs[2]) ||
		c[1].Seq != 4 || c[1].Ref != (client.Ref{4}) || c[1].Total != len(envs[3]) || len(c[1].Data) == 0 || len(c[1].Data) > r.half ||
		!bytes.Equal(c[1].Data, envs[3][:len(c[1].Data)]) {
		t.Fatalf("came %+v, want envelope 3 whole and the first bytes of 4", seqsOf(c))
	}
}

// scriptedClient is a client of a session on loopback whose relay side
// answers the hello as a relay does, then each frame with each (see
// serveFrames), signing for key; the relay side is closed at t's end.
func scriptedClient(ctx context.Context, t *testing.T, key ed25519.PrivateKey, each func(sc transport.Conn, typ relay.FrameType, p []byte, req uint32) bool) (*client.Client, error) {
	cc, sc := relaytest.Pipe(t)
	t.Cleanup(func() { sc.Close() })
	go serveFrames(sc, func(typ relay.FrameType, p []byte, req uint32) bool { return each(sc, typ, p, req) })
	return client.New(ctx, cc, client.WithRelayKey(key.Public().(ed25519.PublicKey)))
}

// pushRelay is TestFollowLeavesPush's relay: it answers a Subscribe and
// pushes envelopes 1 and 2 at once; once their Ack came, the first
// 8 KiB of 3, 2 KiB at a time; once more is closed, the rest of 3, the
// Ack's answer (if answer) and half of 4 (half bytes of it), and nothing
// after.
type pushRelay struct {
	envs   [][]byte
	acked  chan struct{}
	more   chan struct{}
	answer bool
	once   sync.Once
	refs   int
	ackReq []uint32
	half   int
}

func (r *pushRelay) deliver(req uint32, seq uint64) []byte {
	return relay.AppendFrame(nil, relay.Deliver{Req: req, Mailbox: [32]byte{1}, Ref: [relay.RefSize]byte{byte(seq)}, Seq: seq, Envelope: r.envs[seq-1]})
}

func (r *pushRelay) serve(sc transport.Conn, typ relay.FrameType, p []byte, req uint32) bool {
	switch typ {
	case relay.FrameSubscribe:
		sc.Write(relay.AppendFrame(nil, relay.Result{Req: req}))
		sc.Write(append(r.deliver(req, 1), r.deliver(req, 2)...))
		go r.push(sc, req)
	case relay.FrameAck: // answered in push, if at all
		m, _ := relay.ParseAck(p)
		r.ackReq = append(r.ackReq, req)
		if r.refs += len(m.Refs); r.refs >= 2 {
			r.once.Do(func() { close(r.acked) })
		}
	}
	return true
}

// push pushes envelopes 3 and 4 as pushRelay says.
func (r *pushRelay) push(sc transport.Conn, req uint32) {
	select {
	case <-r.acked:
	case <-time.After(20 * time.Second): // a deadlock guard
		return
	}
	b3 := r.deliver(req, 3)
	b := append(b3, r.deliver(req, 4)...)
	const began = 8 << 10
	for i := 0; i < began; i += 2 << 10 {
		if _, err := sc.Write(b[i : i+2<<10]); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-r.more:
	case <-time.After(20 * time.Second): // a deadlock guard
		return
	}
	sc.Write(b[began:len(b3)])
	if r.answer {
		for _, req := range r.ackReq { // written before acked was closed
			sc.Write(relay.AppendFrame(nil, relay.Result{Req: req, Body: relay.CountBody(1)}))
		}
	}
	head := len(b3) - len(r.envs[2])
	sc.Write(b[len(b3) : len(b3)+head+r.half])
}

// TestDrainLanesHeldNotFetchedAgain: DrainLanes gives itself the copies
// the inbox keeps of the fragments it holds (InboxConfig.KeepHeld): a
// second pass, once the message's last fragment came, asks 128 bytes of
// each held one to check it by, where it fetched each whole again (a
// follower's lanes after every session). The first envelope is the
// exception: the first probe asks 4 KiB, its number not known. What was
// given counts for nothing toward the 32 KiB that open the sessions
// beside the first: the second pass, with 16 KiB to fetch, opens none.
// LanesStats.New counts the last fragment alone, and so it does when
// the inbox kept no copies and the held ones were fetched again.
func TestDrainLanesHeldNotFetchedAgain(t *testing.T) {
	t.Run("copies kept", func(t *testing.T) { drainHeldTwice(t, client.MaxKeptBytes) })
	t.Run("no copies", func(t *testing.T) { drainHeldTwice(t, 1) })
}

// drainHeldTwice is TestDrainLanesHeldNotFetchedAgain with an inbox's
// KeepHeld of keep.
func drainHeldTwice(t *testing.T, keep int) {
	id := mustIdentity(t)
	msg := make([]byte, 40<<10)
	rand.Read(msg)
	envs, err := envelope.SealMessage(id.Card([32]byte{1}, nil, nil), nil, msg, &envelope.Options{Suite: envelope.SuiteX25519, Bucket: envelope.Bucket16K})
	if err != nil || len(envs) < 3 {
		t.Fatalf("sealing: %d envelopes, %v", len(envs), err)
	}
	f := newFakeBox()
	last := len(envs) - 1
	seqs := make([]uint64, len(envs))
	for i := range seqs {
		seqs[i] = uint64(i + 1)
	}
	f.add(seqs[:last], envs[:last])
	var mu sync.Mutex
	var served map[uint64]int // bytes served, by envelope
	f.served = func(_ *fakeBox, seq uint64, _, n int) {
		mu.Lock()
		served[seq] += n
		mu.Unlock()
	}
	var got [][]byte
	in, err := client.NewInbox(client.InboxConfig{Identity: id, KeepHeld: keep, Take: func(m client.Message) error {
		got = append(got, m.Payload)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	var st client.LanesStats
	pass := func() {
		t.Helper()
		served = map[uint64]int{}
		first, err := f.dial(t)(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		if _, err := in.DrainLanes(ctx, first, f.dial(t), f.key, [32]byte{1}, client.LanesConfig{Lanes: 2, Stats: &st}); err != nil {
			t.Fatal(err)
		}
	}
	pass()
	if len(got) != 0 || in.HeldForTest() != last {
		t.Fatalf("first pass: took %d messages, holds %d envelopes; want none taken, %d held", len(got), in.HeldForTest(), last)
	}
	f.mu.Lock() // the first pass's sessions read envs under it
	f.add(seqs[last:], envs[last:])
	f.mu.Unlock()
	before := f.dials.Load()
	pass()
	if len(got) != 1 || !bytes.Equal(got[0], msg) {
		t.Fatalf("second pass: took %d messages, want the one sent", len(got))
	}
	if st.New != len(envs[last]) {
		t.Fatalf("second pass: %d bytes new, want the last fragment's %d", st.New, len(envs[last]))
	}
	if keep == 1 {
		return // nothing kept: the held ones came again whole
	}
	if n := f.dials.Load() - before; n != 1 {
		t.Fatalf("second pass: %d sessions, want the first alone", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if served[1] != 4<<10 || served[uint64(last+1)] != len(envs[last]) {
		t.Fatalf("second pass served %v of the first and the last envelope, want 4 KiB and %d", served, len(envs[last]))
	}
	for seq := uint64(2); seq <= uint64(last); seq++ {
		if served[seq] != 128 {
			t.Fatalf("second pass served %d bytes of held envelope %d, want 128 (its check)", served[seq], seq)
		}
	}
}

// TestPushingOnlySubscriptions: the envelope a Fetch's answer brings is
// not one a subscription pushes: FollowConfig.Leave, which a Follow
// paging past held envelopes asks while pages come, is never shown it
// (TestFollowLeavesPush shows it a push).
func TestPushingOnlySubscriptions(t *testing.T) {
	_, _, envs := sealed(t, 40<<10)
	_, key, _ := ed25519.GenerateKey(nil)
	const half = 20 << 10
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	c, err := scriptedClient(ctx, t, key, func(sc transport.Conn, typ relay.FrameType, p []byte, req uint32) bool {
		if typ == relay.FrameFetch {
			sc.Write(relay.AppendFrame(nil, relay.Deliver{Req: req, Mailbox: [32]byte{1}, Seq: 1, Envelope: envs[0]})[:half])
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Fetch(ctx, key, [32]byte{1}, 0)
	for c.ReadingDeliverForTest() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the Fetch's answer never began")
		}
		time.Sleep(time.Millisecond)
	}
	if p, ok := c.PushingForTest(); ok {
		t.Fatalf("a Fetch's answer shown as pushed: %+v", p)
	}
}

// TestInboxAwaited: Awaited names the message the last fragment handed
// over is of, while it is held, and the bytes of its fragments still to
// come, each as large as its largest envelope; a whole message between
// changes nothing; the last fragment, or a fragment of another message,
// does.
func TestInboxAwaited(t *testing.T) {
	id := mustIdentity(t)
	card := id.Card([32]byte{1}, nil, nil)
	seal := func(n int) [][]byte {
		msg := make([]byte, n)
		rand.Read(msg)
		envs, err := envelope.SealMessage(card, nil, msg, &envelope.Options{Suite: envelope.SuiteX25519, Bucket: envelope.Bucket16K})
		if err != nil {
			t.Fatal(err)
		}
		return envs
	}
	a, b, whole := seal(40<<10), seal(20<<10), seal(100)
	if len(a) != 3 || len(b) != 2 || len(whole) != 1 {
		t.Fatalf("sealed %d, %d and %d envelopes, want 3, 2 and 1", len(a), len(b), len(whole))
	}
	in, err := client.NewInbox(client.InboxConfig{Identity: id, Take: func(client.Message) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	seq := uint64(0)
	handle := func(env []byte) {
		t.Helper()
		seq++
		if _, err := in.Handle(client.Delivery{Ref: client.Ref{byte(seq)}, Seq: seq, Envelope: env}); err != nil {
			t.Fatal(err)
		}
	}
	key := func(env []byte) [envelope.IDSize]byte {
		o, err := envelope.Open(id, env)
		if err != nil {
			t.Fatal(err)
		}
		return client.MessageKey(o)
	}
	for i, step := range []struct {
		env  []byte
		want [envelope.IDSize]byte
		n    int
	}{
		{a[0], key(a[0]), 2 * envelope.Bucket16K},
		{whole[0], key(a[0]), 2 * envelope.Bucket16K},
		{b[0], key(b[0]), envelope.Bucket16K},
		{a[1], key(a[0]), envelope.Bucket16K},
		{a[2], [envelope.IDSize]byte{}, 0}, // complete
	} {
		handle(step.env)
		if got, n := in.Awaited(); got != step.want || n != step.n {
			t.Fatalf("step %d: awaited %d bytes of %x, want %d of %x", i, n, got[:4], step.n, step.want[:4])
		}
	}
}

// TestFollowLooksWhileComing: Follow asks Leave only while something
// comes: not while the subscription is idle, about every 250 ms while an
// envelope is pushed in part, at once after a delivery (a small envelope
// come whole in one read too: Leave judges what a fragment left to
// come), once when asked for (FollowConfig.Look), and no more once
// nothing comes. Each push is timed from the look that first saw it:
// Bytes counts what the session read after that look, and begins again
// at 0 with the next envelope.
func TestFollowLooksWhileComing(t *testing.T) {
	id, _, envs := sealed(t, 100, 100, 30<<10, 30<<10, 100)
	_, key, _ := ed25519.GenerateKey(nil)
	writes := make(chan []byte)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	subscribed := make(chan uint32, 1)
	serve := func(sc transport.Conn, typ relay.FrameType, p []byte, req uint32) bool {
		if typ == relay.FrameSubscribe {
			sc.Write(relay.AppendFrame(nil, relay.Result{Req: req}))
			subscribed <- req
			go func() {
				for b := range writes {
					sc.Write(b)
				}
			}()
		}
		return true // Acks are never answered: nothing else is read
	}
	var taken atomic.Int64
	in, err := client.NewInbox(client.InboxConfig{Identity: id, Take: func(client.Message) error { taken.Add(1); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	cfg := in.FollowConfig(func(ctx context.Context) (*client.Client, error) {
		return scriptedClient(ctx, t, key, serve)
	}, key, [32]byte{1})
	ask := make(chan struct{}, 1)
	cfg.Look = ask
	var mu sync.Mutex
	var looks []client.Pushing
	cfg.Leave = func(p client.Pushing) bool {
		mu.Lock()
		looks = append(looks, p)
		mu.Unlock()
		return false
	}
	go client.Follow(ctx, cfg)
	var req uint32
	select {
	case req = <-subscribed:
	case <-ctx.Done():
		t.Fatal("never subscribed")
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(looks)
	}
	look := func(i int) client.Pushing {
		mu.Lock()
		defer mu.Unlock()
		return looks[i]
	}
	// waitLook waits for a look after the first from that shows ok.
	waitLook := func(what string, from int, ok func(client.Pushing) bool) int {
		t.Helper()
		for ; ctx.Err() == nil; time.Sleep(5 * time.Millisecond) {
			mu.Lock()
			for i := from; i < len(looks); i++ {
				if ok(looks[i]) {
					mu.Unlock()
					return i
				}
			}
			mu.Unlock()
		}
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%s: never seen; looks %+v", what, looks[from:])
		return 0
	}
	frame := func(seq uint64) []byte {
		return relay.AppendFrame(nil, relay.Deliver{Req: req, Mailbox: [32]byte{1}, Ref: [relay.RefSize]byte{byte(seq)}, Seq: seq, Envelope: envs[seq-1]})
	}
	time.Sleep(time.Second) // four looks' time
	if n := count(); n != 0 {
		t.Fatalf("Leave asked %d times while nothing came", n)
	}
	f3, f4 := frame(3), frame(4)
	writes <- f3[:2<<10]
	first := waitLook("envelope 3's first look", 0, func(p client.Pushing) bool { return p.Seq == 3 })
	if p := look(first); p.Bytes != 0 || p.Got != 2<<10-relay.FrameHeaderSize-client.DeliverHeadForTest {
		t.Fatalf("envelope 3's first look: %+v, want nothing read since, 2 KiB of the frame come", p)
	}
	writes <- f3[2<<10 : 6<<10]
	i := waitLook("4 KiB more of envelope 3", first, func(p client.Pushing) bool { return p.Bytes != 0 })
	if p := look(i); p.Seq != 3 || p.Bytes != 4<<10 || p.Since <= 0 {
		t.Fatalf("after 4 KiB more of envelope 3: %+v, want 4 KiB read since its first look", p)
	}
	writes <- append(f3[6<<10:], f4[:2<<10]...)
	i = waitLook("envelope 4's first look", i, func(p client.Pushing) bool { return p.Seq == 4 })
	if p := look(i); p.Bytes != 0 {
		t.Fatalf("envelope 4's first look: %+v, want nothing read since", p)
	}
	writes <- f4[2<<10:]
	for ctx.Err() == nil && taken.Load() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(time.Second) // four looks' time
	n := count()
	time.Sleep(time.Second)
	if m := count(); m != n {
		t.Fatalf("Leave asked %d times in a second once nothing came", m-n)
	}
	writes <- frame(5)
	// It shows nothing being pushed, what was handed over last, and how
	// long since the session read.
	i = waitLook("a look after a small envelope came whole", n, func(client.Pushing) bool { return true })
	if p := look(i); p.Seq != 0 || p.Last != 5 || p.Idle < 0 || p.Idle > time.Minute {
		t.Fatalf("the look after envelope 5 came whole: %+v, want nothing in part, envelope 5 handed over last", p)
	}
	for ctx.Err() == nil && taken.Load() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	if taken.Load() != 3 {
		t.Fatalf("%d messages taken, want 3", taken.Load())
	}
	time.Sleep(time.Second) // the look after it done
	n = count()
	ask <- struct{}{}
	// A second or so since the session read anything (a ping's answer
	// would be sooner, but not none).
	i = waitLook("a look asked for (Look)", n, func(client.Pushing) bool { return true })
	if p := look(i); p.Seq != 0 || p.Idle <= 0 {
		t.Fatalf("the look asked for: %+v, want nothing in part and the time since the last read", p)
	}
}

// arrivingConn is a session's conn whose bytes beneath it last came at
// arrived (Unix nanoseconds; 0: long ago), as a TLS record begun
// reports them (transport.Arrivals).
type arrivingConn struct {
	transport.Conn
	arrived *atomic.Int64
}

func (c arrivingConn) Arrivals() (time.Time, bool) { return time.Unix(0, c.arrived.Load()), false }

// TestPushingBelow: a look shows how long since bytes last came to the
// session, beneath it too (Pushing.Below): under Idle while they come
// beneath (a record begun, not yet whole), and Idle where none came
// since the last read.
func TestPushingBelow(t *testing.T) {
	id, _, envs := sealed(t, 100)
	_, key, _ := ed25519.GenerateKey(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	var arrived atomic.Int64
	serve := func(sc transport.Conn, typ relay.FrameType, p []byte, req uint32) bool {
		if typ == relay.FrameSubscribe {
			sc.Write(relay.AppendFrame(nil, relay.Result{Req: req}))
			sc.Write(relay.AppendFrame(nil, relay.Deliver{Req: req, Mailbox: [32]byte{1}, Ref: [relay.RefSize]byte{1}, Seq: 1, Envelope: envs[0]}))
		}
		return true
	}
	in, err := client.NewInbox(client.InboxConfig{Identity: id, Take: func(client.Message) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	cfg := in.FollowConfig(func(ctx context.Context) (*client.Client, error) {
		cc, sc := relaytest.Pipe(t)
		t.Cleanup(func() { sc.Close() })
		go serveFrames(sc, func(typ relay.FrameType, p []byte, req uint32) bool { return serve(sc, typ, p, req) })
		return client.New(ctx, arrivingConn{cc, &arrived}, client.WithRelayKey(key.Public().(ed25519.PublicKey)))
	}, key, [32]byte{1})
	ask := make(chan struct{}, 1)
	cfg.Look = ask
	looks := make(chan client.Pushing, 16)
	cfg.Leave = func(p client.Pushing) bool { looks <- p; return false }
	go client.Follow(ctx, cfg)
	next := func(what string) client.Pushing {
		t.Helper()
		select {
		case p := <-looks:
			return p
		case <-ctx.Done():
			t.Fatalf("%s: no look", what)
			return client.Pushing{}
		}
	}
	next("the look after the delivery")
	time.Sleep(300 * time.Millisecond) // the session reads nothing meanwhile
	for len(looks) > 0 {
		<-looks // any other look before
	}
	arrived.Store(time.Now().UnixNano())
	ask <- struct{}{}
	if p := next("a look with bytes come beneath"); p.Idle < 300*time.Millisecond || p.Below >= p.Idle {
		t.Fatalf("bytes came beneath just now: %+v, want Below under Idle", p)
	}
	arrived.Store(0)
	ask <- struct{}{}
	if p := next("a look with none come beneath"); p.Below != p.Idle {
		t.Fatalf("nothing came beneath since the last read: %+v, want Below as Idle", p)
	}
}
