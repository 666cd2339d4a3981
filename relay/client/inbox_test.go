package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
)

// inboxSetup is a relay, a mailbox, a sender session and an inbox
// collecting what it takes.
type inboxSetup struct {
	r      *relaytest.Relay
	mb     *relaytest.Mailbox
	owner  *client.Client
	sender *client.Client
	taken  []client.Message
	refuse error // Take returns this when set
}

func newInboxSetup(t *testing.T) *inboxSetup {
	s := &inboxSetup{r: relaytest.New(t, store.Options{}, server.Config{})}
	s.owner = s.r.Connect(t)
	s.sender = s.r.Connect(t)
	s.mb = relaytest.NewMailbox(t, s.owner, nil)
	return s
}

func (s *inboxSetup) inbox(t *testing.T, replay client.ReplayStore) *client.Inbox {
	in, err := client.NewInbox(client.InboxConfig{Identity: s.mb.Ident, Replay: replay, Take: func(m client.Message) error {
		if s.refuse != nil {
			return s.refuse
		}
		s.taken = append(s.taken, m)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func (s *inboxSetup) send(t *testing.T, from *envelope.Identity, msg []byte) {
	envs, err := envelope.SealMessage(s.mb.Card, from, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range envs {
		if _, err := s.sender.Send(context.Background(), env, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *inboxSetup) waiting(t *testing.T) int {
	m, err := s.r.Store.Mailbox(context.Background(), s.mb.ID)
	if err != nil {
		t.Fatal(err)
	}
	return m.Pending
}

func TestInboxDrainWholeAndSplitMessages(t *testing.T) {
	s := newInboxSetup(t)
	alice, _ := envelope.NewIdentity()
	big := bytes.Repeat([]byte("split across envelopes "), 10_000)
	s.send(t, nil, []byte("anonymous hello"))
	s.send(t, alice, big)
	in := s.inbox(t, nil)
	if err := in.Drain(context.Background(), s.owner, s.mb.Owner, s.mb.ID); err != nil {
		t.Fatal(err)
	}
	if len(s.taken) != 2 || string(s.taken[0].Payload) != "anonymous hello" || s.taken[0].Sender != nil ||
		!bytes.Equal(s.taken[1].Payload, big) || !bytes.Equal(s.taken[1].Sender, alice.Public().Auth) {
		t.Fatalf("took %d messages", len(s.taken))
	}
	if n := s.waiting(t); n != 0 {
		t.Fatalf("%d envelopes left on the relay after everything was taken", n)
	}
}

// TestInboxAcksOnlyWhatWasTaken: when the application refuses a message
// (stdout full, say), nothing of it is acked and the inbox stops.
func TestInboxAcksOnlyWhatWasTaken(t *testing.T) {
	s := newInboxSetup(t)
	s.send(t, nil, []byte("first"))
	s.send(t, nil, bytes.Repeat([]byte("x"), 100_000))
	s.refuse = errors.New("write /dev/stdout: no space left on device")
	in := s.inbox(t, nil)
	if err := in.Drain(context.Background(), s.owner, s.mb.Owner, s.mb.ID); !errors.Is(err, s.refuse) {
		t.Fatalf("Drain = %v, want the Take error", err)
	}
	all := s.waiting(t)
	if all < 3 {
		t.Fatalf("only %d envelopes left on the relay: something untaken was acked", all)
	}
	s.refuse = nil
	if err := in.Drain(context.Background(), s.owner, s.mb.Owner, s.mb.ID); err != nil {
		t.Fatal(err)
	}
	if len(s.taken) != 2 || s.waiting(t) != 0 {
		t.Fatalf("took %d, %d left", len(s.taken), s.waiting(t))
	}
}

// TestInboxReplayFile: a message taken whose ack never reached the relay
// is recognised when it comes again, in a new run, and acked without being
// taken twice.
func TestInboxReplayFile(t *testing.T) {
	s := newInboxSetup(t)
	ctx := context.Background()
	s.send(t, nil, []byte("exactly once"))
	file := client.ReplayFile(filepath.Join(t.TempDir(), "id.replay"))
	in := s.inbox(t, file)
	ds, err := s.owner.Fetch(ctx, s.mb.Owner, s.mb.ID, 0)
	if err != nil || len(ds) != 1 {
		t.Fatalf("fetch %d, %v", len(ds), err)
	}
	refs, err := in.Handle(ds[0])
	if err != nil || len(refs) != 1 || len(s.taken) != 1 {
		t.Fatalf("handle: %d refs, %d taken, %v", len(refs), len(s.taken), err)
	}
	// The session dies before the ack: the ack fails, the taken id is on disk.
	dead := s.r.Connect(t)
	dead.Close()
	if err := in.AckForTest(ctx, dead, s.mb.Owner, s.mb.ID, refs); err == nil {
		t.Fatal("ack on a closed session succeeded")
	}
	if ids, err := file.Load(); err != nil || len(ids) != 1 {
		t.Fatalf("replay file holds %d ids, %v", len(ids), err)
	}
	if s.waiting(t) != 1 {
		t.Fatal("test setup: the envelope must still wait on the relay")
	}
	// The next run sees it again, acks it, and does not take it twice.
	if err := s.inbox(t, file).Drain(ctx, s.owner, s.mb.Owner, s.mb.ID); err != nil {
		t.Fatal(err)
	}
	if len(s.taken) != 1 || s.waiting(t) != 0 {
		t.Fatalf("taken %d times, %d left on the relay", len(s.taken), s.waiting(t))
	}
}

// TestReplayFileTornAppend: a partial id at the end of a replay file is
// what a crash in the middle of an Append leaves. Load ignores it, and the
// next Append writes over it, so every id after it is whole.
func TestReplayFileTornAppend(t *testing.T) {
	f := client.ReplayFile(filepath.Join(t.TempDir(), "r"))
	var a, b, c [envelope.IDSize]byte
	a[0], b[0], c[0] = 1, 2, 3
	if err := f.Append([][envelope.IDSize]byte{a, b}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(string(f))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(string(f), data[:envelope.IDSize+5], 0o600) // b cut short
	ids, err := f.Load()
	if err != nil || len(ids) != 1 || ids[0] != a {
		t.Fatalf("torn file: %x, %v; want the whole id only", ids, err)
	}
	if err := f.Append([][envelope.IDSize]byte{c}); err != nil {
		t.Fatal(err)
	}
	ids, err = f.Load()
	if err != nil || len(ids) != 2 || ids[0] != a || ids[1] != c {
		t.Fatalf("after the next append: %x, %v; want a, c", ids, err)
	}
	if err := f.Save([][envelope.IDSize]byte{b}); err != nil {
		t.Fatal(err)
	}
	if ids, err = f.Load(); err != nil || len(ids) != 1 || ids[0] != b {
		t.Fatalf("after a save: %x, %v; want b", ids, err)
	}
}

func TestReplayFileErrors(t *testing.T) {
	dir := t.TempDir()
	f := client.ReplayFile(filepath.Join(dir, "r"))
	if ids, err := f.Load(); err != nil || ids != nil {
		t.Fatalf("missing file: %v, %v", ids, err)
	}
	s := newInboxSetup(t)
	_, err := client.NewInbox(client.InboxConfig{Identity: s.mb.Ident, Take: func(client.Message) error { return nil }, Replay: client.ReplayFile(dir)})
	if err == nil {
		t.Fatal("an inbox started on a replay file it cannot read")
	}
	dirAsFile := client.ReplayFile(dir)
	if _, err := dirAsFile.Load(); err == nil {
		t.Fatal("reading a directory as replay file succeeded")
	}
	if err := client.ReplayFile(filepath.Join(dir, "missing", "r")).Save(nil); err == nil {
		t.Fatal("save into a missing directory succeeded")
	}
	if _, err := client.NewInbox(client.InboxConfig{}); err == nil {
		t.Fatal("NewInbox without identity")
	}
}

func TestInboxFollowStopsOnRefusal(t *testing.T) {
	s := newInboxSetup(t)
	s.send(t, nil, []byte("cannot show this"))
	s.refuse = errors.New("stdout closed")
	in := s.inbox(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dial := func(context.Context) (*client.Client, error) { return s.r.Connect(t), nil }
	if err := in.Follow(ctx, dial, s.mb.Owner, s.mb.ID, nil); !errors.Is(err, s.refuse) {
		t.Fatalf("Follow = %v", err)
	}
	if s.waiting(t) != 1 {
		t.Fatal("the refused message was acked")
	}
}

// TestDeliverForUnknownRequestDropped: Deliver frames that answer no
// subscription (a cancelled Fetch, or a relay pushing unasked) never reach
// Deliveries.
func TestDeliverForUnknownRequestDropped(t *testing.T) {
	cc, sc := relaytest.Pipe(t)
	defer sc.Close()
	go func() {
		relay.ReadFrame(sc)
		sc.Write(relay.AppendFrame(nil, relay.ServerHello{Version: relay.ProtocolVersion}))
		for i := 0; i < 10; i++ {
			sc.Write(relay.AppendFrame(nil, relay.Deliver{Req: 77, Seq: uint64(i), Envelope: []byte{1}}))
		}
		_, p, _ := relay.ReadFrame(sc)
		ping, _ := relay.ParsePing(p)
		sc.Write(relay.AppendFrame(nil, relay.Pong(ping)))
	}()
	c, err := client.New(context.Background(), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-c.Deliveries():
		t.Fatalf("unasked delivery seq %d queued", d.Seq)
	default:
	}
}

func FuzzParseReplay(f *testing.F) {
	f.Add(make([]byte, 2*envelope.IDSize))
	f.Add([]byte("odd"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, err := client.ParseReplay(b)
		if err != nil {
			return
		}
		var back []byte
		for _, id := range ids {
			back = append(back, id[:]...)
		}
		if !bytes.Equal(back, b) {
			t.Fatal("replay ids do not re-encode")
		}
	})
}

// TestInboxGivesUpOldestUnfinished: with MaxHeld unfinished messages held,
// a fragment of yet another one gives up the oldest (acking its fragments)
// instead of stalling the mailbox.
func TestInboxGivesUpOldestUnfinished(t *testing.T) {
	s := newInboxSetup(t)
	var warned []string
	in, err := client.NewInbox(client.InboxConfig{Identity: s.mb.Ident, MaxHeld: 2,
		Take: func(client.Message) error { return nil }, Warn: func(w string) { warned = append(warned, w) }})
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("y"), 100_000)
	var firsts []client.Delivery
	for i := 0; i < 3; i++ {
		envs, _ := envelope.SealMessage(s.mb.Card, nil, big, nil)
		if _, err := s.sender.Send(context.Background(), envs[0], nil); err != nil {
			t.Fatal(err)
		}
	}
	firsts, err = s.owner.Fetch(context.Background(), s.mb.Owner, s.mb.ID, 0)
	if err != nil || len(firsts) != 3 {
		t.Fatalf("fetched %d, %v", len(firsts), err)
	}
	var acks []client.Ref
	for _, d := range firsts {
		refs, err := in.Handle(d)
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, refs...)
	}
	if len(acks) != 1 || acks[0] != firsts[0].Ref || len(warned) != 1 {
		t.Fatalf("acks %d, warnings %q", len(acks), warned)
	}
	// Garbage that does not open is acked at once, with a warning.
	refs, err := in.Handle(client.Delivery{Ref: client.Ref{1}, Envelope: []byte("junk")})
	if err != nil || len(refs) != 1 || len(warned) != 2 {
		t.Fatalf("junk: %d refs, %v, warnings %q", len(refs), err, warned)
	}
}

// TestInboxFollowReleasesFragmentsTakenElsewhere: an inbox that holds a
// fragment of a message when another inbox takes that message (Taken,
// then Wake) gives the fragment up and acks it, after a Sync, without a
// delivery or a new session to prompt it; a fragment of another message
// stays held.
func TestInboxFollowReleasesFragmentsTakenElsewhere(t *testing.T) {
	// The other inbox took the same envelopes (Taken reports their ids),
	// or another sealing of the message (Taken reports its message id).
	for _, byMessage := range []bool{false, true} {
		t.Run(fmt.Sprintf("by message id %v", byMessage), func(t *testing.T) { testReleasesTakenElsewhere(t, byMessage) })
	}
}

func testReleasesTakenElsewhere(t *testing.T, byMessage bool) {
	s := newInboxSetup(t)
	envs, err := envelope.SealMessage(s.mb.Card, nil, bytes.Repeat([]byte("z"), 100_000), nil)
	if err != nil || len(envs) != 2 {
		t.Fatalf("sealed %d envelopes (%v), want 2", len(envs), err)
	}
	marker, err := envelope.SealMessage(s.mb.Card, nil, []byte("marker"), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := envelope.SealMessage(s.mb.Card, nil, bytes.Repeat([]byte("o"), 100_000), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The first fragments of two messages, then a message that shows
	// they were handled.
	for _, e := range [][]byte{envs[0], other[0], marker[0]} {
		if _, err := s.sender.Send(context.Background(), e, nil); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	elsewhere := map[[envelope.IDSize]byte]bool{}
	var syncs atomic.Int32
	took := make(chan client.Message, 4)
	wake := make(chan struct{}, 1)
	in, err := client.NewInbox(client.InboxConfig{Identity: s.mb.Ident, Wake: wake,
		Take: func(m client.Message) error { took <- m; return nil },
		Sync: func() error { syncs.Add(1); return nil },
		Taken: func(id [envelope.IDSize]byte) bool {
			mu.Lock()
			defer mu.Unlock()
			return elsewhere[id]
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard: Follow pings each minute
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- in.Follow(ctx, func(context.Context) (*client.Client, error) { return s.r.Connect(t), nil }, s.mb.Owner, s.mb.ID, nil)
	}()
	select {
	case m := <-took:
		if string(m.Payload) != "marker" {
			t.Fatalf("took %d bytes before the marker", len(m.Payload))
		}
	case <-ctx.Done():
		t.Fatal("the marker never came")
	}
	for s.waiting(t) != 2 { // the marker's ack
		if ctx.Err() != nil {
			t.Fatalf("%d envelopes on the relay, want the two fragments", s.waiting(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := syncs.Load()
	// Another inbox takes the whole message.
	mu.Lock()
	for _, e := range envs {
		o, err := envelope.Open(s.mb.Ident, e)
		if err != nil {
			t.Fatal(err)
		}
		if byMessage {
			elsewhere[client.MessageKey(o)] = true // the same in every fragment
		} else {
			elsewhere[o.ID] = true
		}
	}
	mu.Unlock()
	wake <- struct{}{}
	for s.waiting(t) != 1 {
		if ctx.Err() != nil {
			t.Fatal("the held fragment of a message taken elsewhere was never acked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if syncs.Load() == before {
		t.Fatal("the fragment was acked without a Sync first")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := s.waiting(t); n != 1 {
		t.Fatalf("%d envelopes on the relay, want the other message's fragment, still held", n)
	}
	select {
	case m := <-took:
		t.Fatalf("took a message of %d bytes as well", len(m.Payload))
	default:
	}
}
