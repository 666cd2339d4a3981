package envelope

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
)

// TestMessageIDAcrossSealings: one message sealed into each bucket with
// the same Options.MessageID opens with that MessageID in every envelope
// of every sealing, whole (its envelope id is the message id) or
// fragmented (each fragment with an envelope id of its own), and the
// fragments' ids on the wire differ from one bucket to
// another (a reader grouping fragments by that id alone must not mix two
// sealings). Each sealing joins back into the message.
func TestMessageIDAcrossSealings(t *testing.T) {
	alice, bob := newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, size := range []int{100, 20 << 10, 200 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			msg := randBytes(size)
			var mid [IDSize]byte
			rand.Read(mid[:])
			wire := map[[IDSize]byte]int{} // fragment id on the wire -> bucket
			for _, bucket := range Buckets {
				envs, err := SealMessage(card, alice, msg, &Options{Bucket: bucket, MessageID: mid})
				if errors.Is(err, ErrPayloadTooLarge) {
					continue // more fragments than a message may have
				}
				if err != nil {
					t.Fatal(err)
				}
				var j Joiner
				var got []byte
				envIDs := map[[IDSize]byte]bool{}
				for i, env := range envs {
					o, err := Open(bob, env)
					if err != nil {
						t.Fatal(err)
					}
					if o.MessageID != mid {
						t.Fatalf("bucket %d, envelope %d of %d: message id %x, sealed with %x", bucket, i, len(envs), o.MessageID, mid)
					}
					if envIDs[o.ID] {
						t.Fatalf("bucket %d: envelope id %x used twice", bucket, o.ID)
					}
					envIDs[o.ID] = true
					if !o.Fragment && o.ID != mid {
						t.Fatalf("bucket %d: a whole envelope's id is not the message id", bucket)
					}
					if o.Fragment {
						w := [IDSize]byte(o.Payload[:IDSize])
						if b, ok := wire[w]; ok && b != bucket {
							t.Fatalf("fragments of buckets %d and %d carry the same message id on the wire", b, bucket)
						}
						wire[w] = bucket
						if o.ID == mid {
							t.Fatalf("bucket %d: a fragment's envelope id is the message id", bucket)
						}
					}
					if m, done, err := j.Add(o); err != nil {
						t.Fatal(err)
					} else if done {
						got = m
					}
				}
				if !bytes.Equal(got, msg) {
					t.Fatalf("bucket %d: joined %d bytes of %d", bucket, len(got), len(msg))
				}
			}
		})
	}
}

// TestMessageIDRandomByDefault: without Options.MessageID every message
// gets an id of its own, shared by all its fragments.
func TestMessageIDRandomByDefault(t *testing.T) {
	alice, bob := newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	msg := randBytes(20 << 10)
	ids := map[[IDSize]byte]bool{}
	for range 2 {
		envs, err := SealMessage(card, alice, msg, &Options{Bucket: Bucket4K})
		if err != nil {
			t.Fatal(err)
		}
		var first [IDSize]byte
		for i, env := range envs {
			o, err := Open(bob, env)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first = o.MessageID
			} else if o.MessageID != first {
				t.Fatal("fragments of one sealing carry different message ids")
			}
		}
		if first == ([IDSize]byte{}) || ids[first] {
			t.Fatalf("message id %x: zero or used before", first)
		}
		ids[first] = true
	}
}

// TestShortFragmentRefused: a fragment too short to carry its header does
// not open (it has no message id).
func TestShortFragmentRefused(t *testing.T) {
	bob := newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, n := range []int{0, 1, fragmentHeader - 1} {
		env, err := seal(card, nil, make([]byte, n), flagFragment, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Open(bob, env); !errors.Is(err, ErrMalformed) {
			t.Errorf("a fragment of %d bytes: %v, want ErrMalformed", n, err)
		}
	}
	env, err := seal(card, nil, make([]byte, fragmentHeader), flagFragment, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bob, env); err != nil {
		t.Fatalf("a fragment holding its header only: %v", err)
	}
}
