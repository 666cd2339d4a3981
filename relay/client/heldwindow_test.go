package client_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
)

// sealFragments seals msg to s's mailbox in 4 KiB fragments, from a new
// identity.
func (s *inboxSetup) sealFragments(t *testing.T, msg []byte) [][]byte {
	t.Helper()
	from, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	envs, err := envelope.SealMessage(s.mb.Card, from, msg, &envelope.Options{Bucket: envelope.Bucket4K})
	if err != nil {
		t.Fatal(err)
	}
	return envs
}

func (s *inboxSetup) put(t *testing.T, envs ...[]byte) {
	t.Helper()
	for _, env := range envs {
		if _, err := s.sender.Send(context.Background(), env, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// followTake follows s's mailbox until want messages were taken and
// left envelopes are still on the relay (or the deadlock guard ends the
// test), and returns the messages' sizes.
func (s *inboxSetup) followTake(t *testing.T, want, left int) []int {
	t.Helper()
	took := make(chan client.Message, want)
	in, err := client.NewInbox(client.InboxConfig{Identity: s.mb.Ident, Take: func(m client.Message) error { took <- m; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- in.Follow(ctx, func(context.Context) (*client.Client, error) { return s.r.Connect(t), nil }, s.mb.Owner, s.mb.ID, nil)
	}()
	var sizes []int
	for len(sizes) < want {
		select {
		case m := <-took:
			sizes = append(sizes, len(m.Payload))
		case <-ctx.Done():
			t.Fatalf("%d of %d messages taken; %d envelopes still on the relay", len(sizes), want, s.waiting(t))
		}
	}
	for s.waiting(t) != left { // the Acks go out after the messages were taken
		if ctx.Err() != nil {
			t.Fatalf("%d envelopes on the relay after %d messages were taken, want %d", s.waiting(t), want, left)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	return sizes
}

// Three senders' 100-fragment messages interleave on the relay: the first
// relay.MaxUnacked envelopes pushed hold about 85 fragments of each, none
// completes, and the relay had nothing more to push until Acks came that
// never would. Follow pages past the held fragments and takes all three,
// and the message sent after them.
func TestFollowInterleavedFragmentsComplete(t *testing.T) {
	s := newInboxSetup(t)
	chunk := envelope.MaxPayload(envelope.SuiteXWing, envelope.Bucket4K) - 20
	var msgs [3][][]byte
	for i := range msgs {
		msgs[i] = s.sealFragments(t, bytes.Repeat([]byte{byte('a' + i)}, 100*chunk))
		if len(msgs[i]) != 100 {
			t.Fatalf("%d fragments, want 100", len(msgs[i]))
		}
	}
	for k := range 100 {
		for i := range msgs {
			s.put(t, msgs[i][k])
		}
	}
	hello, err := envelope.Seal(s.mb.Card, nil, []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, hello)
	s.followTake(t, 4, 0)
}

// Fragments that never complete (anyone with the card can send them)
// fill the relay's window: a message sent after them still arrives.
func TestFollowPastFragmentsThatNeverComplete(t *testing.T) {
	s := newInboxSetup(t)
	chunk := envelope.MaxPayload(envelope.SuiteXWing, envelope.Bucket4K) - 20
	for _, n := range []int{127, 127, 2} {
		envs := s.sealFragments(t, bytes.Repeat([]byte("j"), 128*chunk))
		s.put(t, envs[:n]...) // never the last fragment
	}
	hello, err := envelope.Seal(s.mb.Card, nil, []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.put(t, hello)
	if sizes := s.followTake(t, 1, 256); sizes[0] != len("hello") {
		t.Fatalf("took a %d-byte message, want hello", sizes[0])
	}
}

// A flood of one-fragment messages from one sender (here anonymous) makes
// the inbox give up that sender's own oldest, not another sender's
// half-received message, whose first fragments would be acked (deleted).
func TestInboxFloodGivesUpItsOwn(t *testing.T) {
	s := newInboxSetup(t)
	var taken []client.Message
	in, err := client.NewInbox(client.InboxConfig{Identity: s.mb.Ident, Take: func(m client.Message) error { taken = append(taken, m); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	chunk := envelope.MaxPayload(envelope.SuiteXWing, envelope.Bucket4K) - 20
	alice := s.sealFragments(t, bytes.Repeat([]byte("a"), 2*chunk+1))
	seq := uint64(0)
	handle := func(env []byte) []client.Ref {
		seq++
		refs, err := in.Handle(client.Delivery{Ref: client.Ref{byte(seq), byte(seq >> 8)}, Seq: seq, Envelope: env})
		if err != nil {
			t.Fatal(err)
		}
		return refs
	}
	handle(alice[0])
	handle(alice[1])
	aliceRefs := map[client.Ref]bool{{1, 0}: true, {2, 0}: true}
	for range 100 {
		junk, err := envelope.SealMessage(s.mb.Card, nil, bytes.Repeat([]byte("j"), 2*chunk), &envelope.Options{Bucket: envelope.Bucket4K})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range handle(junk[0]) {
			if aliceRefs[r] {
				t.Fatal("a fragment of Alice's message was given up (acked) for another sender's flood")
			}
		}
	}
	handle(alice[2])
	if len(taken) != 1 || len(taken[0].Payload) != 2*chunk+1 {
		t.Fatalf("took %d messages, want Alice's", len(taken))
	}
}

// Paging fetches envelopes the relay has already pushed and that still
// wait in the Client's queue; handed over again after the pass they were
// taken twice once the replay cache (here small) had forgotten them. Each
// message is taken once, and the session holds.
func TestFollowPagingTakesEachOnce(t *testing.T) {
	s := newInboxSetup(t)
	chunk := envelope.MaxPayload(envelope.SuiteXWing, envelope.Bucket4K) - 20
	for range 2 {
		envs := s.sealFragments(t, bytes.Repeat([]byte("j"), 127*chunk))
		s.put(t, envs[:100]...) // never complete: 200 held
	}
	const n = 1500
	for i := range n {
		env, err := envelope.Seal(s.mb.Card, nil, []byte(fmt.Sprint(i)), &envelope.Options{Bucket: envelope.Bucket4K})
		if err != nil {
			t.Fatal(err)
		}
		s.put(t, env)
	}
	taken := map[string]int{}
	var mu sync.Mutex
	in, err := client.NewInbox(client.InboxConfig{Identity: s.mb.Ident, ReplayCap: 200, Take: func(m client.Message) error {
		mu.Lock()
		defer mu.Unlock()
		taken[string(m.Payload)]++
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	sessions := 0
	done := make(chan error, 1)
	go func() {
		done <- in.Follow(ctx, func(context.Context) (*client.Client, error) { sessions++; return s.r.Connect(t), nil }, s.mb.Owner, s.mb.ID, nil)
	}()
	for s.waiting(t) != 200 {
		if ctx.Err() != nil {
			t.Fatalf("%d envelopes on the relay, want the 200 held", s.waiting(t))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	twice := 0
	for _, k := range taken {
		if k > 1 {
			twice++
		}
	}
	if len(taken) != n || twice > 0 || sessions != 1 {
		t.Fatalf("%d of %d messages taken, %d of them more than once, over %d sessions", len(taken), n, twice, sessions)
	}
}
