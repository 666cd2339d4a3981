package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
)

// sealings seals msg once per bucket with one message id, as a sender
// does when it seals a message again after a stall.
func sealings(t *testing.T, s *inboxSetup, from *envelope.Identity, msg []byte, buckets ...int) [][][]byte {
	t.Helper()
	var id [envelope.IDSize]byte
	rand.Read(id[:])
	var out [][][]byte
	for _, b := range buckets {
		envs, err := envelope.SealMessage(s.mb.Card, from, msg, &envelope.Options{Bucket: b, MessageID: id})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, envs)
	}
	return out
}

// takenOnce fails t unless the inbox took msg, once and nothing else, and
// left nothing on the relay.
func (s *inboxSetup) takenOnce(t *testing.T, msg []byte) {
	t.Helper()
	if len(s.taken) != 1 || !bytes.Equal(s.taken[0].Payload, msg) {
		t.Fatalf("took %d messages, want the message once", len(s.taken))
	}
	if n := s.waiting(t); n != 0 {
		t.Fatalf("%d envelopes left on the relay", n)
	}
}

// TestInboxTakesResealedMessageOnce: a message whose sender sealed it
// again into smaller envelopes (after a stall before any ack, the relay
// may have stored some or all of the first sealing) is taken once,
// whichever sealing comes first or whole, and every envelope of every
// sealing is acked: none is left on the relay, held for good as an
// unfinished message.
func TestInboxTakesResealedMessageOnce(t *testing.T) {
	alice, _ := envelope.NewIdentity()
	type part struct {
		sealing int
		n       int // envelopes of the sealing put on the relay, -1 all
	}
	for _, tc := range []struct {
		name    string
		size    int
		buckets []int
		put     []part
	}{
		{"whole then fragments", 20 << 10, []int{envelope.Bucket64K, envelope.Bucket4K}, []part{{0, -1}, {1, -1}}},
		{"fragments then whole", 20 << 10, []int{envelope.Bucket64K, envelope.Bucket4K}, []part{{1, -1}, {0, -1}}},
		{"whole 64K then whole 4K", 1 << 10, []int{envelope.Bucket64K, envelope.Bucket4K}, []part{{0, -1}, {1, -1}}},
		{"part of the first, then the second", 200 << 10, []int{envelope.Bucket64K, envelope.Bucket16K}, []part{{0, 1}, {1, -1}}},
		{"the second, then part of the first", 200 << 10, []int{envelope.Bucket64K, envelope.Bucket16K}, []part{{1, -1}, {0, 2}}},
		{"both whole, interleaved", 200 << 10, []int{envelope.Bucket64K, envelope.Bucket16K}, []part{{0, 2}, {1, 5}, {0, -1}, {1, -1}}},
		// Only across relays does the first sealing come after the second.
		{"part of the fragments, the whole, the rest", 20 << 10, []int{envelope.Bucket64K, envelope.Bucket4K}, []part{{1, 2}, {0, -1}, {1, -1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newInboxSetup(t)
			msg := make([]byte, tc.size)
			rand.Read(msg)
			seals := sealings(t, s, alice, msg, tc.buckets...)
			sent := make([]int, len(seals))
			for _, p := range tc.put {
				to := len(seals[p.sealing])
				if p.n >= 0 {
					to = p.n
				}
				for _, env := range seals[p.sealing][sent[p.sealing]:to] {
					if _, err := s.sender.Send(context.Background(), env, nil); err != nil {
						t.Fatal(err)
					}
				}
				sent[p.sealing] = max(sent[p.sealing], to)
			}
			in := s.inbox(t, nil)
			if err := in.Drain(context.Background(), s.owner, s.mb.Owner, s.mb.ID); err != nil {
				t.Fatal(err)
			}
			s.takenOnce(t, msg)
		})
	}
}

// TestInboxResealedAcrossRuns: a sealing that reaches the relay after
// another sealing of its message was taken, in an earlier run, is
// recognised from the replay file and acked without being taken.
func TestInboxResealedAcrossRuns(t *testing.T) {
	for _, size := range []int{1 << 10, 20 << 10, 200 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s := newInboxSetup(t)
			msg := make([]byte, size)
			rand.Read(msg)
			seals := sealings(t, s, nil, msg, envelope.Bucket4K, envelope.Bucket64K)
			file := client.ReplayFile(filepath.Join(t.TempDir(), "id.replay"))
			for _, envs := range seals {
				for _, env := range envs {
					if _, err := s.sender.Send(context.Background(), env, nil); err != nil {
						t.Fatal(err)
					}
				}
				in := s.inbox(t, file) // a new run
				if err := in.Drain(context.Background(), s.owner, s.mb.Owner, s.mb.ID); err != nil {
					t.Fatal(err)
				}
			}
			s.takenOnce(t, msg)
		})
	}
}

// TestInboxMessageIDsPerSender: a message id names a message of one
// sender: another sender's message with the same id (which it could only
// have by knowing the first's, from inside its envelope) is another
// message, neither taken for a copy nor able to make the first look
// taken, whole or in fragments, anonymous or not.
func TestInboxMessageIDsPerSender(t *testing.T) {
	s := newInboxSetup(t)
	alice, _ := envelope.NewIdentity()
	mallory, _ := envelope.NewIdentity()
	var id [envelope.IDSize]byte
	rand.Read(id[:])
	msgs := map[string][]byte{}
	put := func(name string, from *envelope.Identity, size, bucket int) {
		msg := make([]byte, size)
		rand.Read(msg)
		msgs[name] = msg
		envs, err := envelope.SealMessage(s.mb.Card, from, msg, &envelope.Options{Bucket: bucket, MessageID: id})
		if err != nil {
			t.Fatal(err)
		}
		for _, env := range envs {
			if _, err := s.sender.Send(context.Background(), env, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	put("mallory's fragments", mallory, 20<<10, envelope.Bucket4K)
	put("alice's", alice, 1<<10, envelope.Bucket4K)
	put("anonymous", nil, 1<<10, envelope.Bucket4K)
	put("mallory's again", mallory, 20<<10, envelope.Bucket16K) // the fragments' message sealed again: a copy
	in := s.inbox(t, nil)
	if err := in.Drain(context.Background(), s.owner, s.mb.Owner, s.mb.ID); err != nil {
		t.Fatal(err)
	}
	taken := map[string]bool{}
	for _, m := range s.taken {
		for name, msg := range msgs {
			if bytes.Equal(m.Payload, msg) {
				taken[name] = true
			}
		}
	}
	for _, name := range []string{"mallory's fragments", "alice's", "anonymous"} {
		if !taken[name] {
			t.Errorf("%s message not taken", name)
		}
	}
	if len(s.taken) != 3 {
		t.Errorf("took %d messages, want 3 (mallory's second sealing is a copy)", len(s.taken))
	}
}
