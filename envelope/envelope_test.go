package envelope

import (
	"bytes"
	"crypto/hpke"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

func newID(t testing.TB) *Identity {
	t.Helper()
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func randMailbox(t testing.TB) [MailboxIDSize]byte {
	var m [MailboxIDSize]byte
	rand.Read(m[:])
	return m
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

var suites = []Suite{SuiteXWing, SuiteX25519}

func TestRoundTrip(t *testing.T) {
	alice, bob := newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, s := range suites {
		for _, bucket := range Buckets {
			for _, anon := range []bool{false, true} {
				for _, size := range []int{0, 1, MaxPayload(s, bucket)} {
					name := fmt.Sprintf("%s/%d/anon=%v/len=%d", s, bucket, anon, size)
					t.Run(name, func(t *testing.T) {
						from := alice
						if anon {
							from = nil
						}
						msg := randBytes(size)
						env, err := Seal(card, from, msg, &Options{Suite: s, Bucket: bucket})
						if err != nil {
							t.Fatal(err)
						}
						if len(env) != bucket {
							t.Fatalf("len = %d, want bucket %d", len(env), bucket)
						}
						mb, err := PeekMailbox(env)
						if err != nil || mb != card.Mailbox {
							t.Fatalf("PeekMailbox = %x, %v", mb[:4], err)
						}
						o, err := Open(bob, env)
						if err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(o.Payload, msg) {
							t.Fatal("payload differs")
						}
						if o.Suite != s || o.Mailbox != card.Mailbox || o.Fragment {
							t.Fatalf("opened header fields wrong: %+v", o)
						}
						if anon {
							if !o.Anonymous() {
								t.Fatal("anonymous envelope reported a sender")
							}
						} else if !bytes.Equal(o.Sender, alice.AuthKey()) {
							t.Fatal("sender key differs")
						}
					})
				}
			}
		}
	}
}

func TestSmallestBucketChosen(t *testing.T) {
	bob := newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, s := range suites {
		for i, bucket := range Buckets {
			max := MaxPayload(s, bucket)
			env, err := Seal(card, nil, make([]byte, max), &Options{Suite: s})
			if err != nil {
				t.Fatal(err)
			}
			if len(env) != bucket {
				t.Errorf("%s: payload %d sealed into %d, want %d", s, max, len(env), bucket)
			}
			if i+1 < len(Buckets) {
				env, err = Seal(card, nil, make([]byte, max+1), &Options{Suite: s})
				if err != nil {
					t.Fatal(err)
				}
				if len(env) != Buckets[i+1] {
					t.Errorf("%s: payload %d sealed into %d, want %d", s, max+1, len(env), Buckets[i+1])
				}
			}
		}
	}
}

func TestTooLarge(t *testing.T) {
	bob := newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	max := MaxPayload(SuiteXWing, Bucket64K)
	_, err := Seal(card, nil, make([]byte, max+1), nil)
	var tl *TooLargeError
	if !errors.Is(err, ErrPayloadTooLarge) || !errors.As(err, &tl) || tl.Max != max || tl.Size != max+1 {
		t.Fatalf("err = %v", err)
	}
	_, err = Seal(card, nil, make([]byte, MaxPayload(SuiteXWing, Bucket4K)+1), &Options{Bucket: Bucket4K})
	if !errors.Is(err, ErrPayloadTooLarge) {
		t.Fatalf("forced bucket: err = %v", err)
	}
	if _, err := Seal(card, nil, nil, &Options{Bucket: 5000}); !errors.Is(err, ErrBadBucket) {
		t.Fatalf("bad bucket: err = %v", err)
	}
	xonly := *card
	xonly.Suites = []Suite{SuiteX25519}
	if _, err := Seal(&xonly, nil, nil, &Options{Suite: SuiteXWing}); !errors.Is(err, ErrSuite) {
		t.Fatalf("unaccepted suite: err = %v", err)
	}
}

// TestTamper flips every single byte of 4 KiB envelopes, header, encapsulated
// key, ciphertext, tag and padding alike, and expects Open to fail each time.
func TestTamper(t *testing.T) {
	alice, bob := newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, s := range suites {
		for _, anon := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/anon=%v", s, anon), func(t *testing.T) {
				from := alice
				if anon {
					from = nil
				}
				// A short payload, so most of the ciphertext is padding.
				env, err := Seal(card, from, []byte("hello"), &Options{Suite: s, Bucket: Bucket4K})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := Open(bob, env); err != nil {
					t.Fatal(err)
				}
				for i := range env {
					mod := bytes.Clone(env)
					mod[i] ^= 0x01 << (i % 8)
					o, err := Open(bob, mod)
					if err == nil {
						t.Fatalf("flipping byte %d (of %d) went unnoticed: %+v", i, len(env), o)
					}
					if !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrSuite) {
						t.Fatalf("byte %d: unexpected error class %v", i, err)
					}
				}
			})
		}
	}
}

func TestWrongRecipient(t *testing.T) {
	alice, bob, eve := newID(t), newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, s := range suites {
		env, err := Seal(card, alice, []byte("for bob"), &Options{Suite: s})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Open(eve, env); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: eve opened bob's envelope: %v", s, err)
		}
		if _, err := Open(alice, env); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: sender opened its own envelope: %v", s, err)
		}
	}
}

func TestMalformedSizes(t *testing.T) {
	bob := newID(t)
	for _, n := range []int{0, 1, HeaderSize, Bucket4K - 1, Bucket4K + 1, Bucket16K - 1, Bucket64K + 1} {
		b := make([]byte, n)
		if n > 1 {
			b[0], b[1] = Version, byte(SuiteXWing)
		}
		if _, err := PeekMailbox(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("PeekMailbox(%d bytes) = %v", n, err)
		}
		if _, err := Open(bob, b); !errors.Is(err, ErrMalformed) {
			t.Errorf("Open(%d bytes) = %v", n, err)
		}
	}
	b := make([]byte, Bucket4K)
	b[0], b[1] = 2, byte(SuiteXWing)
	if _, err := PeekMailbox(b); !errors.Is(err, ErrVersion) {
		t.Errorf("version 2: %v", err)
	}
	b[0], b[1] = Version, 9
	if _, err := PeekMailbox(b); !errors.Is(err, ErrSuite) {
		t.Errorf("suite 9: %v", err)
	}
}

// manualSeal builds an envelope from an explicit inner plaintext, following
// the documented format independently of seal. Tests use it to play an
// attacker who controls every field.
func manualSeal(t *testing.T, card *Card, s Suite, bucket int, build func(header []byte, export func(string, int) ([]byte, error), inner []byte)) []byte {
	t.Helper()
	pk, err := s.kem().NewPublicKey(card.key(s))
	if err != nil {
		t.Fatal(err)
	}
	enc, snd, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), s.info())
	if err != nil {
		t.Fatal(err)
	}
	header := append([]byte{Version, byte(s)}, card.Mailbox[:]...)
	inner := make([]byte, bucket-HeaderSize-len(enc)-16)
	build(header, snd.Export, inner)
	ct, err := snd.Seal(header, inner)
	if err != nil {
		t.Fatal(err)
	}
	return append(append(header, enc...), ct...)
}

func TestManualSealMatchesFormat(t *testing.T) {
	alice, bob := newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	env := manualSeal(t, card, SuiteXWing, Bucket4K, func(header []byte, export func(string, int) ([]byte, error), inner []byte) {
		inner[0] = flagAuth
		rand.Read(inner[1:17])
		copy(inner[17:49], alice.AuthKey())
		tag, err := senderTag(alice, export, header, inner[:17], alice.AuthKey(), card.Auth, card.Auth)
		if err != nil {
			t.Fatal(err)
		}
		copy(inner[49:81], tag)
		binary.BigEndian.PutUint32(inner[81:85], 3)
		copy(inner[85:], "abc")
	})
	o, err := Open(bob, env)
	if err != nil {
		t.Fatalf("a hand-built envelope following the documented format does not open: %v", err)
	}
	if string(o.Payload) != "abc" || !bytes.Equal(o.Sender, alice.AuthKey()) {
		t.Fatalf("opened %+v", o)
	}
}

// TestImpersonation: mallory seals with her own key while claiming alice's
// public key as the sender. Open must refuse.
func TestImpersonation(t *testing.T) {
	alice, bob, mallory := newID(t), newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, s := range suites {
		env := manualSeal(t, card, s, Bucket4K, func(header []byte, export func(string, int) ([]byte, error), inner []byte) {
			inner[0] = flagAuth
			rand.Read(inner[1:17])
			copy(inner[17:49], alice.AuthKey())
			// Mallory can only use her own static secret with bob.
			tag, err := senderTag(mallory, export, header, inner[:17], alice.AuthKey(), card.Auth, card.Auth)
			if err != nil {
				t.Fatal(err)
			}
			copy(inner[49:81], tag)
			binary.BigEndian.PutUint32(inner[81:85], 5)
			copy(inner[85:], "hello")
		})
		if _, err := Open(bob, env); !errors.Is(err, ErrBadSender) {
			t.Errorf("%s: impersonation not caught: %v", s, err)
		}
		// A random tag fails too.
		env = manualSeal(t, card, s, Bucket4K, func(header []byte, export func(string, int) ([]byte, error), inner []byte) {
			inner[0] = flagAuth
			copy(inner[17:49], alice.AuthKey())
			rand.Read(inner[49:81])
		})
		if _, err := Open(bob, env); !errors.Is(err, ErrBadSender) {
			t.Errorf("%s: random tag not caught: %v", s, err)
		}
	}
}

// TestTagNotTransferable: bob (or anyone who got an inner plaintext) lifts
// alice's tag from one envelope into a fresh one. Open must refuse.
func TestTagNotTransferable(t *testing.T) {
	alice, bob := newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, s := range suites {
		env, err := Seal(card, alice, []byte("original"), &Options{Suite: s, Bucket: Bucket4K})
		if err != nil {
			t.Fatal(err)
		}
		// Decrypt the inner plaintext by hand with bob's key.
		enc := env[HeaderSize : HeaderSize+s.encSize()]
		r, err := hpke.NewRecipient(enc, bob.privateKey(s), hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), s.info())
		if err != nil {
			t.Fatal(err)
		}
		orig, err := r.Open(env[:HeaderSize], env[HeaderSize+s.encSize():])
		if err != nil {
			t.Fatal(err)
		}
		moved := manualSeal(t, card, s, Bucket4K, func(header []byte, _ func(string, int) ([]byte, error), inner []byte) {
			copy(inner, orig[:innerFixed]) // same flags, id, sender and tag
			binary.BigEndian.PutUint32(inner[81:85], 6)
			copy(inner[85:], "forged")
		})
		if _, err := Open(bob, moved); !errors.Is(err, ErrBadSender) {
			t.Errorf("%s: moved tag accepted: %v", s, err)
		}
	}
}

func TestInnerStrictness(t *testing.T) {
	bob := newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	cases := map[string]func(inner []byte){
		"unknown flag":        func(inner []byte) { inner[0] = 0x80 },
		"length beyond":       func(inner []byte) { binary.BigEndian.PutUint32(inner[81:85], uint32(len(inner))) },
		"nonzero padding":     func(inner []byte) { inner[len(inner)-1] = 1 },
		"anon with sender":    func(inner []byte) { inner[20] = 1 },
		"anon with tag bytes": func(inner []byte) { inner[60] = 1 },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			env := manualSeal(t, card, SuiteX25519, Bucket4K, func(_ []byte, _ func(string, int) ([]byte, error), inner []byte) {
				mod(inner)
			})
			if _, err := Open(bob, env); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestReplayCache(t *testing.T) {
	alice, bob := newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	env, err := Seal(card, alice, []byte("once"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := NewReplayCache(3)
	o, err := Open(bob, env)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Check(o.ID); err != nil {
		t.Fatal(err)
	}
	o2, err := Open(bob, env)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Check(o2.ID); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay not caught: %v", err)
	}
	// The cache is bounded: after capacity other ids, the first is forgotten.
	for i := 0; i < 3; i++ {
		var id [IDSize]byte
		id[0] = byte(i + 1)
		if err := rc.Check(id); err != nil {
			t.Fatal(err)
		}
	}
	if rc.Len() != 3 {
		t.Fatalf("Len = %d, want 3", rc.Len())
	}
	if err := rc.Check(o.ID); err != nil {
		t.Fatalf("forgotten id still reported: %v", err)
	}
}

func TestSealMessageSplitJoin(t *testing.T) {
	alice, bob := newID(t), newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, tc := range []struct {
		size   int
		bucket int
		parts  int
	}{
		{size: 100, parts: 1},
		{size: MaxPayload(SuiteXWing, Bucket64K), parts: 1},
		{size: MaxPayload(SuiteXWing, Bucket64K) + 1, parts: 2},
		{size: 300 << 10, parts: 5},
		{size: 20 << 10, bucket: Bucket4K, parts: 8},
	} {
		t.Run(fmt.Sprint(tc.size, "/", tc.bucket), func(t *testing.T) {
			msg := randBytes(tc.size)
			envs, err := SealMessage(card, alice, msg, &Options{Bucket: tc.bucket})
			if err != nil {
				t.Fatal(err)
			}
			if len(envs) != tc.parts {
				t.Fatalf("%d envelopes, want %d", len(envs), tc.parts)
			}
			var j Joiner
			var got []byte
			// Deliver in reverse order, with a duplicate fragment.
			if len(envs) > 1 {
				envs = append(envs, envs[0])
			}
			for i := len(envs) - 1; i >= 0; i-- {
				if tc.bucket != 0 && len(envs[i]) != tc.bucket {
					t.Fatalf("envelope %d is %d bytes", i, len(envs[i]))
				}
				o, err := Open(bob, envs[i])
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(o.Sender, alice.AuthKey()) {
					t.Fatal("fragment lost its sender")
				}
				m, done, err := j.Add(o)
				if err != nil {
					t.Fatal(err)
				}
				if done {
					if got != nil {
						t.Fatal("message completed twice")
					}
					got = m
				}
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("joined %d bytes, want %d", len(got), len(msg))
			}
		})
	}
	if _, err := SealMessage(card, alice, make([]byte, MaxMessageSize+1), nil); !errors.Is(err, ErrPayloadTooLarge) {
		t.Fatalf("oversize message: %v", err)
	}
}

func TestJoinerRejectsInconsistentFragments(t *testing.T) {
	var j Joiner
	frag := func(idx, count int) *Opened {
		p := make([]byte, fragmentHeader+3)
		binary.BigEndian.PutUint16(p[16:], uint16(idx))
		binary.BigEndian.PutUint16(p[18:], uint16(count))
		return &Opened{Fragment: true, Payload: p}
	}
	if _, _, err := j.Add(frag(0, 3)); err != nil {
		t.Fatal(err)
	}
	for _, o := range []*Opened{frag(1, 4), frag(3, 3), frag(0, 1), {Fragment: true, Payload: []byte{1}}} {
		if _, _, err := j.Add(o); !errors.Is(err, ErrFragment) {
			t.Errorf("accepted inconsistent fragment: %v", err)
		}
	}
}

// TestJoinerForget: a message forgotten part way keeps none of its
// fragments (the rest alone does not complete it); other messages, and
// other senders' with the same message id, are kept.
func TestJoinerForget(t *testing.T) {
	var j Joiner
	frag := func(sender string, msg byte, idx, count int) *Opened {
		p := make([]byte, fragmentHeader+1)
		p[0], p[fragmentHeader] = msg, byte(idx)
		binary.BigEndian.PutUint16(p[16:], uint16(idx))
		binary.BigEndian.PutUint16(p[18:], uint16(count))
		return &Opened{Sender: []byte(sender), Fragment: true, Payload: p}
	}
	for _, o := range []*Opened{frag("a", 1, 0, 2), frag("a", 2, 0, 2), frag("b", 1, 0, 2)} {
		if _, done, err := j.Add(o); done || err != nil {
			t.Fatal(done, err)
		}
	}
	j.Forget(&Opened{Sender: []byte("a"), Fragment: true, Payload: frag("a", 1, 0, 2).Payload[:16]})
	j.Forget(&Opened{Sender: []byte("c"), Fragment: true, Payload: frag("c", 1, 0, 2).Payload[:16]}) // nothing held
	if _, done, err := j.Add(frag("a", 1, 1, 2)); done || err != nil {
		t.Fatalf("a forgotten message completed (%v, %v)", done, err)
	}
	for _, o := range []*Opened{frag("a", 2, 1, 2), frag("b", 1, 1, 2)} {
		if msg, done, err := j.Add(o); !done || err != nil || !bytes.Equal(msg, []byte{0, 1}) {
			t.Fatalf("a message kept did not complete: %q, %v, %v", msg, done, err)
		}
	}
}

func TestMaxMessageFits(t *testing.T) {
	bob := newID(t)
	card := bob.Card(randMailbox(t), nil, nil)
	for _, s := range suites {
		if (MaxPayload(s, Bucket64K)-fragmentHeader)*MaxFragments < MaxMessageSize {
			t.Fatalf("%s: %d fragments cannot hold MaxMessageSize", s, MaxFragments)
		}
		envs, err := SealMessage(card, nil, make([]byte, MaxMessageSize), &Options{Suite: s})
		if err != nil || len(envs) > MaxFragments {
			t.Fatalf("%s: %d envelopes, %v", s, len(envs), err)
		}
	}
}
