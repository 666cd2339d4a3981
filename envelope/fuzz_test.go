package envelope

import (
	"bytes"
	"crypto/hpke"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Every decoder has a fuzz target. Seeds are golden files plus edge cases;
// `go test` runs the seeds, `go test -fuzz=FuzzX` explores. Each target checks
// that no input panics and that every failure matches a package sentinel.

func isOurs(err error, sentinels ...error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func addGoldenEnvelopes(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.env"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte{})
	f.Add([]byte{Version, byte(SuiteXWing)})
	f.Add(make([]byte, Bucket4K))
}

func FuzzParseHeader(f *testing.F) {
	addGoldenEnvelopes(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			if !isOurs(err, ErrMalformed, ErrVersion, ErrSuite) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		if !isBucket(len(b)) || h.Version != Version || !h.Suite.valid() {
			t.Fatalf("accepted invalid envelope header %+v len %d", h, len(b))
		}
	})
}

func FuzzOpen(f *testing.F) {
	addGoldenEnvelopes(f)
	recipient, err := ParseIdentity(mustReadF(f, "recipient.id"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := Open(recipient, b)
		if err != nil {
			if !isOurs(err, ErrMalformed, ErrVersion, ErrSuite, ErrDecrypt, ErrBadSender) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		if len(o.Payload) > MaxPayload(o.Suite, len(b)) {
			t.Fatal("payload larger than the bucket allows")
		}
	})
}

func FuzzParseCard(f *testing.F) {
	if raw, err := os.ReadFile(filepath.Join(goldenDir, "manifest.json")); err == nil {
		var m goldenManifest
		if json.Unmarshal(raw, &m) == nil {
			f.Add(m.Card)
		}
	}
	id, err := NewIdentity()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(id.Card([32]byte{1}, []string{"postern-relay1:x"}, []byte{1, 2}).String())
	f.Add(CardPrefix)
	f.Add("postern-card2:AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCard(s)
		if err != nil {
			if !isOurs(err, ErrCard, ErrChecksum, ErrVersion, ErrSuite) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		again, err := ParseCard(c.String())
		if err != nil || again.Mailbox != c.Mailbox {
			t.Fatalf("accepted card does not re-encode: %v", err)
		}
	})
}

// FuzzParseCardBody reaches the card decoder behind the checksum: the fuzzer
// supplies the body and the harness appends a valid checksum, which random
// mutation would almost never find. An accepted body must re-encode to
// exactly the same line (the encoding is unique).
func FuzzParseCardBody(f *testing.F) {
	id, err := NewIdentity()
	if err != nil {
		f.Fatal(err)
	}
	x := id.Card([32]byte{2}, []string{"a", "postern-relay1:x"}, []byte("cap"))
	x.Suites = []Suite{SuiteX25519}
	for _, c := range []*Card{id.Card([32]byte{1}, nil, nil), x} {
		raw, err := base64.RawURLEncoding.DecodeString(c.String()[len(CardPrefix):])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw[:len(raw)-4])
	}
	f.Add([]byte{})
	f.Add([]byte{cardVersion})
	f.Fuzz(func(t *testing.T, body []byte) {
		line := encodeRaw(body)
		c, err := ParseCard(line)
		if err != nil {
			if !isOurs(err, ErrCard, ErrChecksum, ErrVersion, ErrSuite) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		if again := c.String(); again != line {
			t.Fatalf("accepted body does not re-encode to itself:\n in  %s\n out %s", line, again)
		}
	})
}

func FuzzParseIdentity(f *testing.F) {
	f.Add(mustReadF(f, "recipient.id"))
	f.Add([]byte("postern-identity v1\n"))
	f.Add([]byte("postern-identity v9\nxwing AAAA\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentity(b)
		if err != nil {
			if !isOurs(err, ErrIdentity, ErrVersion) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		if _, err := id.Marshal(); err != nil {
			t.Fatal(err)
		}
	})
}

func mustReadF(f *testing.F, name string) []byte {
	b, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// joinerFixture is a real message split by SealMessage and opened again,
// the seed of FuzzJoinerAdd. Its msgid is replaced by a constant so that
// seeds and committed crashers replay the same way on every run; the rest
// of each fragment is byte for byte what SealMessage produced.
type joinerFixture struct {
	msg   []byte
	id    [16]byte
	frags [][]byte // opened fragment payloads, in index order
}

// Senders a FuzzJoinerAdd record can pick with its low two bits; 3 means
// the sender bytes follow in the input.
var (
	fuzzSenderReal  = bytes.Repeat([]byte{0xa1}, 32)
	fuzzSenderOther = bytes.Repeat([]byte{0xb2}, 32)
)

func newJoinerFixture(f *testing.F) *joinerFixture {
	alice, bob := newID(f), newID(f)
	card := bob.Card(randMailbox(f), nil, nil)
	chunk := MaxPayload(SuiteX25519, Bucket4K) - fragmentHeader
	fx := &joinerFixture{msg: make([]byte, 2*chunk+100)}
	for i := range fx.msg {
		fx.msg[i] = byte(i*7 + i>>8)
	}
	copy(fx.id[:], "fuzz-joiner-msg!")
	envs, err := SealMessage(card, alice, fx.msg, &Options{Suite: SuiteX25519, Bucket: Bucket4K})
	if err != nil {
		f.Fatal(err)
	}
	if len(envs) != 3 {
		f.Fatalf("SealMessage made %d envelopes, want 3", len(envs))
	}
	for i, env := range envs {
		o, err := Open(bob, env)
		if err != nil {
			f.Fatal(err)
		}
		if !o.Fragment || !bytes.Equal(o.Sender, alice.AuthKey()) || len(o.Payload) < fragmentHeader {
			f.Fatalf("fragment %d: fragment=%v, sender kept=%v", i, o.Fragment, bytes.Equal(o.Sender, alice.AuthKey()))
		}
		if i > 0 && !bytes.Equal(o.Payload[:16], fx.frags[0][:16]) {
			f.Fatal("fragments of one message carry different msgids")
		}
		fx.frags = append(fx.frags, o.Payload)
	}
	for i, p := range fx.frags {
		p = append([]byte(nil), p...)
		copy(p, fx.id[:])
		fx.frags[i] = p
	}
	return fx
}

// joinerRecord encodes one Add call of a FuzzJoinerAdd input:
//
//	flags   1 byte   bit 7: not a fragment; bits 2-6: pad, appended as
//	                 pad*2 KiB of zeros; bits 0-1: sender (0 anonymous,
//	                 1 fuzzSenderReal, 2 fuzzSenderOther, 3 inline)
//	[len    1 byte   inline sender length mod 40, then the sender bytes]
//	n       2 bytes  big endian payload length (cut to what is left)
//	payload n bytes
//
// An input is one byte (MaxPending = b%8, 0 meaning the default) followed
// by records.
func joinerRecord(sender byte, payload []byte) []byte {
	b := []byte{sender}
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	return append(b, payload...)
}

type joinerFed struct {
	key   string
	idx   int
	count int
	data  string
}

// FuzzJoinerAdd feeds arbitrary fragments to a Joiner. Invariants: no
// panic; every error is ErrFragment; at most MaxPending messages are held,
// none above MaxMessageSize; a completed message is, index by index, the
// data of fragments fed for that sender, msgid and count (never bytes from
// anywhere else); the real message completes to exactly what was split;
// and whatever came before, a fresh message still joins.
func FuzzJoinerAdd(f *testing.F) {
	fx := newJoinerFixture(f)
	rec := func(sender byte, payload []byte) []byte { return joinerRecord(sender, payload) }
	in := func(maxPending byte, recs ...[]byte) []byte {
		return append([]byte{maxPending}, bytes.Join(recs, nil)...)
	}
	f0, f1, f2 := fx.frags[0], fx.frags[1], fx.frags[2]
	f.Add(in(0, rec(1, f0), rec(1, f1), rec(1, f2)))
	f.Add(in(0, rec(1, f2), rec(1, f0), rec(1, f0), rec(1, f1)))
	f.Add(in(1, rec(1, f0), rec(2, f1), rec(1, f1), rec(1, f2), rec(0, f0)))
	f.Add(in(2, rec(0, f1), rec(1, f0), rec(0, f2), rec(0, f0), rec(1, f2), rec(1, f1)))
	f.Add(in(0, rec(1, f0), rec(0x81, []byte("whole")), rec(1, f1[:fragmentHeader]), rec(1, f2)))
	f.Add(in(3, append([]byte{3, 5}, "short\x00\x04xyzw"...)))
	f.Add(in(0))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		j := &Joiner{MaxPending: int(b[0] % 8)}
		maxPending := j.MaxPending
		if maxPending == 0 {
			maxPending = 64
		}
		realKey := string(fuzzSenderReal) + "|" + string(fx.id[:])
		realClean := true // only unmodified real fragments were fed under realKey
		var fed []joinerFed
		used := map[string]bool{}
		b = b[1:]
		for calls := 0; len(b) > 0 && calls < 512; calls++ {
			h := b[0]
			b = b[1:]
			var sender []byte
			switch h & 3 {
			case 1:
				sender = fuzzSenderReal
			case 2:
				sender = fuzzSenderOther
			case 3:
				if len(b) == 0 {
					return
				}
				n := min(int(b[0]%40), len(b)-1)
				sender, b = append([]byte{}, b[1:1+n]...), b[1+n:]
			}
			if len(b) < 2 {
				return
			}
			n := min(int(binary.BigEndian.Uint16(b)), len(b)-2)
			payload := append([]byte(nil), b[2:2+n]...)
			b = b[2+n:]
			if pad := int(h>>2) & 0x1f; pad > 0 {
				payload = append(payload, make([]byte, pad<<11)...)
			}
			o := &Opened{Sender: sender, Payload: payload, Fragment: h&0x80 == 0}

			msg, done, err := j.Add(o)
			checkJoiner(t, j, maxPending)
			if !o.Fragment {
				if err != nil || !done || !bytes.Equal(msg, payload) {
					t.Fatalf("whole envelope: done=%v err=%v, payload changed=%v", done, err, !bytes.Equal(msg, payload))
				}
				continue
			}
			if err != nil {
				if !errors.Is(err, ErrFragment) {
					t.Fatalf("unmatched error %v", err)
				}
				if done || msg != nil {
					t.Fatal("error with a message")
				}
			}
			if len(payload) < fragmentHeader {
				if err == nil {
					t.Fatal("accepted a fragment shorter than its header")
				}
				continue
			}
			key := string(sender) + "|" + string(payload[:16])
			idx := int(binary.BigEndian.Uint16(payload[16:]))
			count := int(binary.BigEndian.Uint16(payload[18:]))
			used[key] = true
			if count < 2 || count > MaxFragments || idx >= count {
				if err == nil {
					t.Fatalf("accepted fragment %d of %d", idx, count)
				}
				continue
			}
			fed = append(fed, joinerFed{key, idx, count, string(payload[fragmentHeader:])})
			if key == realKey && !containsBytes(fx.frags, payload) {
				realClean = false
			}
			if !done {
				if msg != nil {
					t.Fatal("message returned with done=false")
				}
				continue
			}
			if !joinedFrom(fed, key, count, msg) {
				t.Fatalf("completed %d bytes that are not the fragments fed for their message", len(msg))
			}
			if key == realKey && realClean && !bytes.Equal(msg, fx.msg) {
				t.Fatalf("real message joined to %d different bytes", len(msg))
			}
		}

		// Whatever the input left behind, a new message still joins.
		var id [16]byte
		for k := 0; ; k++ {
			binary.BigEndian.PutUint64(id[:], uint64(k))
			if !used[string(fuzzSenderOther)+"|"+string(id[:])] {
				break
			}
		}
		want := []byte("fresh message, three parts")
		parts := [][]byte{want[:6], want[6:20], want[20:]}
		for n, i := range []int{2, 0, 1} {
			p := append(id[:], 0, byte(i), 0, 3)
			p = append(p, parts[i]...)
			msg, done, err := j.Add(&Opened{Sender: fuzzSenderOther, Payload: p, Fragment: true})
			checkJoiner(t, j, maxPending)
			if err != nil || done != (n == 2) {
				t.Fatalf("fresh message fragment %d: done=%v err=%v", i, done, err)
			}
			if done && !bytes.Equal(msg, want) {
				t.Fatalf("fresh message joined to %q", msg)
			}
		}
	})
}

// checkJoiner checks the Joiner's bounds: MaxPending messages, each below
// its count and MaxMessageSize, with size accounting that adds up.
func checkJoiner(t *testing.T, j *Joiner, maxPending int) {
	t.Helper()
	if len(j.pending) > maxPending || len(j.order) != len(j.pending) {
		t.Fatalf("%d pending, %d in order, MaxPending %d", len(j.pending), len(j.order), maxPending)
	}
	for _, k := range j.order {
		pt := j.pending[k]
		if pt == nil {
			t.Fatal("order names a message that is not pending")
		}
		size := 0
		for i, d := range pt.parts {
			if i < 0 || i >= pt.count {
				t.Fatalf("part %d of %d held", i, pt.count)
			}
			size += len(d)
		}
		if len(pt.parts) >= pt.count || size != pt.size || size > MaxMessageSize {
			t.Fatalf("pending message: %d of %d parts, %d bytes counted as %d", len(pt.parts), pt.count, size, pt.size)
		}
	}
}

func containsBytes(set [][]byte, b []byte) bool {
	for _, s := range set {
		if bytes.Equal(s, b) {
			return true
		}
	}
	return false
}

// joinedFrom reports whether msg is the concatenation, for i in 0..count-1,
// of the data of some fragment fed with key, index i and count.
func joinedFrom(fed []joinerFed, key string, count int, msg []byte) bool {
	cands := make([]map[string]bool, count)
	for _, fr := range fed {
		if fr.key == key && fr.count == count {
			if cands[fr.idx] == nil {
				cands[fr.idx] = map[string]bool{}
			}
			cands[fr.idx][fr.data] = true
		}
	}
	reach := map[int]bool{0: true}
	for i := 0; i < count; i++ {
		next := map[int]bool{}
		for off := range reach {
			for d := range cands[i] {
				if bytes.HasPrefix(msg[off:], []byte(d)) {
					next[off+len(d)] = true
				}
			}
		}
		reach = next
	}
	return reach[len(msg)]
}

// FuzzOpenInner seals plaintext the fuzzer chooses, so that the AEAD
// opens and Open's checks of the inner plaintext run on it (FuzzOpen's
// random bytes never get past the AEAD): flags, payload length, padding,
// sender fields and tag. Open must never panic; it either fails with
// ErrMalformed or ErrBadSender, or returns a payload that is exactly the
// declared bytes, with a sender only for an authenticated envelope whose
// tag checked.
func FuzzOpenInner(f *testing.F) {
	id := newID(f)
	card := id.Card(randMailbox(f), nil, nil)
	pk, err := parsedPublicKey(SuiteX25519, card.X25519)
	if err != nil {
		f.Fatal(err)
	}
	header := make([]byte, HeaderSize)
	header[0], header[1] = Version, byte(SuiteX25519)
	copy(header[2:], card.Mailbox[:])
	enc0, _, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), SuiteX25519.info())
	if err != nil {
		f.Fatal(err)
	}
	innerLen := Bucket4K - HeaderSize - len(enc0) - aeadOverhead
	good := make([]byte, innerFixed+5)
	binary.BigEndian.PutUint32(good[81:85], 5)
	copy(good[innerFixed:], "hello")
	f.Add(good)
	f.Add(append([]byte{flagFragment}, good[1:]...))
	f.Add(append([]byte{flagAuth}, good[1:]...)) // an auth flag with no valid tag
	f.Add(append([]byte{0x80}, good[1:]...))     // an unknown flag
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > innerLen {
			in = in[:innerLen]
		}
		inner := make([]byte, innerLen)
		copy(inner, in)
		enc, s, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), SuiteX25519.info())
		if err != nil {
			t.Fatal(err)
		}
		ct, err := s.Seal(header, inner)
		if err != nil {
			t.Fatal(err)
		}
		env := append(append(bytes.Clone(header), enc...), ct...)
		o, err := Open(id, env)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadSender) {
				t.Fatalf("Open: %v, want ErrMalformed or ErrBadSender", err)
			}
			return
		}
		n := int(binary.BigEndian.Uint32(inner[81:85]))
		if !bytes.Equal(o.Payload, inner[innerFixed:innerFixed+n]) {
			t.Fatalf("payload of %d bytes, declared %d", len(o.Payload), n)
		}
		if o.Sender != nil && inner[0]&flagAuth == 0 {
			t.Fatal("a sender for an envelope without the auth flag")
		}
		if inner[0]&flagAuth != 0 {
			t.Fatal("an authenticated envelope with a tag nobody computed opened")
		}
		if o.Fragment != (inner[0]&flagFragment != 0) {
			t.Fatal("fragment flag not as sealed")
		}
		want := o.ID
		if o.Fragment {
			want = maskMessageID([IDSize]byte(o.Payload[:IDSize]), Bucket4K)
		}
		if o.MessageID != want {
			t.Fatal("message id is neither the envelope id nor the fragments' unmasked id")
		}
	})
}
