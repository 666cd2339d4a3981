package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/censortest"
)

// fakeBox is a relay's mailbox that answers FetchPart and Ack alone, over
// as many sessions as are dialed to it, with envelopes at the sequence
// numbers a test chooses: gaps, envelopes that go away, answers out of
// order.
type fakeBox struct {
	key   ed25519.PrivateKey
	mu    sync.Mutex
	envs  []fakeEnv // in seq order
	acked []client.Ref
	// served, if set, is called (under mu) after each part is answered
	// with data: it may change envs.
	served func(f *fakeBox, seq uint64, off int)
	// answer, if set, replaces the answer to the nth FetchPart (from 0).
	answer func(n int, m relay.FetchPart) (relay.Part, bool)
	parts  int
	dials  atomic.Int64
}

type fakeEnv struct {
	seq  uint64
	ref  client.Ref
	data []byte
}

func newFakeBox() *fakeBox {
	_, key, _ := ed25519.GenerateKey(nil)
	return &fakeBox{key: key}
}

// add puts envs, sealed ones or any bytes, at seqs.
func (f *fakeBox) add(seqs []uint64, envs [][]byte) {
	for i, e := range envs {
		var ref client.Ref
		rand.Read(ref[:])
		f.envs = append(f.envs, fakeEnv{seq: seqs[i], ref: ref, data: e})
	}
}

// dial opens a session to the box.
func (f *fakeBox) dial(t *testing.T) func(context.Context) (*client.Client, error) {
	return func(ctx context.Context) (*client.Client, error) {
		f.dials.Add(1)
		cc, sc := relaytest.Pipe(t)
		t.Cleanup(func() { sc.Close() })
		go f.serve(sc)
		return client.New(ctx, cc, client.WithRelayKey(f.key.Public().(ed25519.PublicKey)))
	}
}

func (f *fakeBox) serve(sc transport.Conn) {
	relay.ReadFrame(sc)
	sc.Write(relay.AppendFrame(nil, relay.ServerHello{Version: relay.ProtocolVersion}))
	for {
		typ, p, err := relay.ReadFrame(sc)
		if err != nil {
			return
		}
		req, _ := relay.RequestID(p)
		var body []byte
		switch typ {
		case relay.FrameFetchPart:
			m, _ := relay.ParseFetchPart(p)
			if part, ok := f.part(m); ok {
				body = part.Append(nil)
			}
		case relay.FrameAck:
			m, _ := relay.ParseAck(p)
			f.mu.Lock()
			for _, r := range m.Refs {
				f.acked = append(f.acked, r)
				f.envs = slices.DeleteFunc(f.envs, func(e fakeEnv) bool { return e.ref == r })
			}
			f.mu.Unlock()
			body = relay.CountBody(len(m.Refs))
		}
		sc.Write(relay.AppendFrame(nil, relay.Result{Req: req, Body: body}))
	}
}

// part answers m as a relay does: part of the first envelope past
// m.After.
func (f *fakeBox) part(m relay.FetchPart) (relay.Part, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.parts
	f.parts++
	if f.answer != nil {
		if p, ok := f.answer(n, m); ok || p.Seq != 0 {
			return p, ok
		}
	}
	for _, e := range f.envs {
		if e.seq <= m.After {
			continue
		}
		off := min(int(m.Offset), len(e.data))
		k := min(len(e.data)-off, int(m.Max), relay.MaxPart)
		p := relay.Part{Ref: e.ref, Seq: e.seq, Total: uint32(len(e.data)), Data: bytes.Clone(e.data[off : off+k])}
		if k > 0 && f.served != nil {
			f.served(f, e.seq, off)
		}
		return p, true
	}
	return relay.Part{}, false
}

// ackedRefs is the refs acked so far, in order.
func (f *fakeBox) ackedRefs() []client.Ref {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.acked)
}

// sealed seals n messages of the given sizes to a new identity's card
// and returns the identity and each message's envelopes (one each).
func sealed(t *testing.T, sizes ...int) (*envelope.Identity, [][]byte, [][]byte) {
	t.Helper()
	id := mustIdentity(t)
	card := id.Card([32]byte{1}, nil, nil)
	var msgs, envs [][]byte
	for _, n := range sizes {
		msg := make([]byte, n)
		rand.Read(msg)
		es, err := envelope.SealMessage(card, nil, msg, &envelope.Options{Suite: envelope.SuiteX25519})
		if err != nil || len(es) != 1 {
			t.Fatalf("sealing %d bytes: %d envelopes, %v", n, len(es), err)
		}
		msgs, envs = append(msgs, msg), append(envs, es[0])
	}
	return id, msgs, envs
}

// drainLanes runs DrainLanes on f with lanes sessions, the first dialed
// first, and returns the messages taken, how many envelopes it put
// together and how many sessions joined beside the first.
func drainLanes(t *testing.T, f *fakeBox, id *envelope.Identity, lanes int) ([][]byte, int, int, error) {
	t.Helper()
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
	dial := f.dial(t)
	first, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	var joined atomic.Int64
	n, err := in.DrainLanes(ctx, first, dial, f.key, [32]byte{1}, client.LanesConfig{Lanes: lanes, Joined: func() { joined.Add(1) }})
	return got, n, int(joined.Load()), err
}

// TestDrainLanesInOrderAcrossGaps: envelopes at numbers with gaps (one
// longer than the window) come whole, in order, over three sessions once
// the work is more than the first keeps busy, and each is acked; parts
// of one envelope go over several sessions at once.
func TestDrainLanesInOrderAcrossGaps(t *testing.T) {
	id, msgs, envs := sealed(t, 100, 40<<10, 200, 30<<10, 3000, 50, 45<<10, 10)
	f := newFakeBox()
	seqs := []uint64{1000, 1001, 1003, 1004, 1005, 1040, 1041, 1100}
	f.add(seqs, envs)
	var mu sync.Mutex
	parts := map[uint64]int{} // envelopes' parts with data served
	f.served = func(_ *fakeBox, seq uint64, _ int) {
		mu.Lock()
		parts[seq]++
		mu.Unlock()
	}
	got, n, joined, err := drainLanes(t, f, id, 3)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(envs) || len(got) != len(msgs) {
		t.Fatalf("put together %d envelopes, took %d messages; want %d", n, len(got), len(msgs))
	}
	for i := range msgs {
		if !bytes.Equal(got[i], msgs[i]) {
			t.Fatalf("message %d: %d bytes, not the %d sent (or out of order)", i, len(got[i]), len(msgs[i]))
		}
	}
	acked := f.ackedRefs()
	for i, e := range f.envs {
		t.Fatalf("envelope %d (seq %d) left unacked; acked %d", i, e.seq, len(acked))
	}
	if joined != 2 || f.dials.Load() != 3 {
		t.Fatalf("%d sessions joined, %d dialed; want 2 beside the first", joined, f.dials.Load())
	}
	if parts[1001] < 3 {
		t.Fatalf("a 40 KiB envelope came in %d parts", parts[1001])
	}
}

// TestDrainLanesSmallStaysOne: a mailbox whose waiting envelopes are
// fewer bytes than two parts opens no session beside the first; an empty
// one asks once.
func TestDrainLanesSmallStaysOne(t *testing.T) {
	id, msgs, envs := sealed(t, 100, 2000)
	f := newFakeBox()
	f.add([]uint64{7, 8}, envs)
	got, n, joined, err := drainLanes(t, f, id, 4)
	if err != nil || n != 2 || len(got) != 2 || !bytes.Equal(got[1], msgs[1]) {
		t.Fatalf("took %d messages (%d envelopes), %v", len(got), n, err)
	}
	if joined != 0 || f.dials.Load() != 1 {
		t.Fatalf("%d sessions joined for two small envelopes", joined)
	}
	f.parts = 0
	got, n, joined, err = drainLanes(t, f, id, 4)
	if err != nil || n != 0 || len(got) != 0 || joined != 0 || f.parts != 1 {
		t.Fatalf("an empty mailbox: %d messages, %d joined, %d questions, %v", len(got), joined, f.parts, err)
	}
}

// TestDrainLanesEnvelopeGone: an envelope acked elsewhere after its first
// part was served is skipped (not taken, not acked again); the ones
// after it come.
func TestDrainLanesEnvelopeGone(t *testing.T) {
	id, msgs, envs := sealed(t, 40<<10, 45<<10, 100)
	f := newFakeBox()
	f.add([]uint64{50, 51, 52}, envs)
	f.served = func(f *fakeBox, seq uint64, off int) {
		if seq == 50 {
			f.envs = slices.DeleteFunc(f.envs, func(e fakeEnv) bool { return e.seq == 50 })
		}
	}
	got, n, _, err := drainLanes(t, f, id, 3)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 || len(got) != 2 || !bytes.Equal(got[0], msgs[1]) || !bytes.Equal(got[1], msgs[2]) {
		t.Fatalf("took %d messages (%d envelopes), want the two after the one gone", len(got), n)
	}
	if len(f.ackedRefs()) != 2 {
		t.Fatalf("acked %d envelopes", len(f.ackedRefs()))
	}
}

// TestDrainLanesRefusesMalformed: a relay whose answers contradict what
// was asked ends DrainLanes with relay.ErrMalformed, whatever else is
// out, rather than asking for ever.
func TestDrainLanesRefusesMalformed(t *testing.T) {
	ref := client.Ref{9}
	for name, answer := range map[string]func(int, relay.FetchPart) (relay.Part, bool){
		"not past the cursor": func(n int, m relay.FetchPart) (relay.Part, bool) {
			return relay.Part{Ref: ref, Seq: m.After, Total: 10}, true
		},
		"another total": func(n int, m relay.FetchPart) (relay.Part, bool) {
			if m.Offset == relay.MaxFrameSize {
				return relay.Part{Ref: ref, Seq: m.After + 1, Total: 40 << 10}, true
			}
			return relay.Part{Ref: ref, Seq: m.After + 1, Total: 30 << 10, Data: make([]byte, min(int(m.Max), 30<<10-int(m.Offset)))}, true
		},
		"another envelope in its place": func(n int, m relay.FetchPart) (relay.Part, bool) {
			r := ref
			r[1] = byte(n)
			if m.Offset == relay.MaxFrameSize {
				return relay.Part{Ref: r, Seq: m.After + 1, Total: 8 << 10}, true
			}
			return relay.Part{Ref: r, Seq: m.After + 1, Total: 8 << 10, Data: make([]byte, min(int(m.Max), 8<<10-int(m.Offset)))}, true
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeBox()
			f.answer = answer
			_, _, _, err := drainLanes(t, f, mustIdentity(t), 3)
			if !errors.Is(err, relay.ErrMalformed) {
				t.Fatalf("DrainLanes = %v, want ErrMalformed", err)
			}
		})
	}
}

// TestDrainLanesOldRelay: a relay from before parts refuses the first
// question; DrainLanes says so (the caller drains whole) and opens
// nothing beside the first.
func TestDrainLanesOldRelay(t *testing.T) {
	w := newPartsWorld(t)
	w.send(t, []byte("hello"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	c, err := w.r.DialTCP(ctx, w.mb.Addr(), w.stall, relay.FrameFetchPart)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got [][]byte
	_, err = w.inbox(t, &got).DrainLanes(ctx, c, w.dial, w.box.Owner, w.box.ID, client.LanesConfig{Lanes: 4})
	if !errors.Is(err, relay.ErrUnknownFrame) || len(got) != 0 || w.sessions.Load() != 0 || w.waiting(t) != 1 {
		t.Fatalf("DrainLanes on an old relay: %v, %d taken, %d dialed", err, len(got), w.sessions.Load())
	}
}

// drainThrough stores msgs and drains them with DrainLanes (lanes
// sessions), the first and the others dialed through w.dial, checking
// they all come whole and in order and nothing is left (unless it
// fails); it returns how long the drain took, the most sessions the
// middlebox saw at once, and what it took.
func (w *partsWorld) drainThrough(t *testing.T, lanes int, dial func(context.Context) (*client.Client, error), msgs ...[]byte) (time.Duration, int, [][]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a deadlock guard
	defer cancel()
	for _, m := range msgs {
		w.send(t, m)
	}
	var got [][]byte
	in := w.inbox(t, &got)
	c, err := w.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w.mb.ResetPeak()
	start := time.Now()
	_, err = in.DrainLanes(ctx, c, dial, w.box.Owner, w.box.ID, client.LanesConfig{Lanes: lanes})
	took := time.Since(start)
	if err != nil {
		return took, w.mb.Peak(), got, err
	}
	if len(got) != len(msgs) {
		t.Fatalf("took %d messages, want %d", len(got), len(msgs))
	}
	for i := range msgs {
		if !bytes.Equal(got[i], msgs[i]) {
			t.Fatalf("message %d: not the one sent (or out of order)", i)
		}
	}
	if n := w.waiting(t); n != 0 {
		t.Fatalf("%d envelopes left on the relay", n)
	}
	return took, w.mb.Peak(), got, nil
}

func randomMsgs(sizes ...int) [][]byte {
	var out [][]byte
	for _, n := range sizes {
		m := make([]byte, n)
		rand.Read(m)
		out = append(out, m)
	}
	return out
}

// TestDrainLanesUnderFlowThrottle: behind a censor that throttles each
// flow, DrainLanes takes 300 KB over four sessions at once; with one
// (the baseline, timed in the same run) over one.
func TestDrainLanesUnderFlowThrottle(t *testing.T) {
	w := newPartsWorld(t)
	w.stall = 10 * time.Second
	w.mb.SetRule(censortest.Throttle(48 << 10))
	took, peak, _, err := w.drainThrough(t, 4, w.dial, randomMsgs(150<<10, 100, 150<<10)...)
	if err != nil {
		t.Fatal(err)
	}
	if peak < 2 {
		t.Fatalf("at most %d session(s) at once with four lanes", peak)
	}
	one, onePeak, _, err := w.drainThrough(t, 1, w.dial, randomMsgs(150<<10, 100, 150<<10)...)
	if err != nil {
		t.Fatal(err)
	}
	if onePeak != 1 {
		t.Fatalf("%d sessions at once with one lane", onePeak)
	}
	t.Logf("300 KB behind a per-flow throttle at 48 KiB/s: four lanes %v (%d at once), one %v", took, peak, one)
}

// TestDrainLanesLanesCut: sessions beside the first that a censor
// freezes after 20 KiB leave their parts to the others, and everything
// comes; when the first freezes too, DrainLanes fails with the stall and
// nothing it did not take is acked: a plain Drain then takes the rest.
func TestDrainLanesLanesCut(t *testing.T) {
	w := newPartsWorld(t)
	freezing := censortest.NewMiddlebox(t, w.r.ServeTCP(t, "test"))
	freezing.SetRule(censortest.FreezeAfter(20 << 10))
	lane := func(ctx context.Context) (*client.Client, error) {
		return w.r.DialTCP(ctx, freezing.Addr(), w.stall)
	}
	if _, _, _, err := w.drainThrough(t, 3, lane, randomMsgs(150<<10, 100, 60<<10)...); err != nil {
		t.Fatalf("lanes frozen beside a first that is not: %v", err)
	}
	w.mb.SetRule(censortest.FreezeAfter(20 << 10))
	msgs := randomMsgs(150<<10, 100)
	_, _, got, err := w.drainThrough(t, 3, lane, msgs...)
	if !errors.Is(err, transport.ErrStalled) {
		t.Fatalf("every session frozen: %v, want a stall", err)
	}
	w.mb.SetRule(censortest.Pass)
	before := len(got)
	c := w.r.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	if err := w.inbox(t, &got).Drain(ctx, c, w.box.Owner, w.box.ID); err != nil {
		t.Fatal(err)
	}
	if n := w.waiting(t); n != 0 {
		t.Fatalf("%d envelopes left", n)
	}
	for i, m := range msgs {
		if !slices.ContainsFunc(got, func(g []byte) bool { return bytes.Equal(g, m) }) {
			t.Fatalf("message %d never taken (%d before the stall, %d after)", i, before, len(got)-before)
		}
	}
	t.Logf("%d message(s) taken before the stall, %d after", before, len(got)-before)
}
