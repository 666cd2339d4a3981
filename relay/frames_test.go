package relay

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

var update = flag.Bool("update", false, "rewrite testdata/frames.golden")

// fill returns n bytes counting up from start, so fields are told apart in
// the golden vectors.
func fill(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func arr32(start byte) (a [32]byte) { copy(a[:], fill(start, 32)); return a }
func arr64(start byte) (a [64]byte) { copy(a[:], fill(start, 64)); return a }

// goldenMessages is one fixed message of every frame type, both
// directions.
func goldenMessages() []struct {
	name string
	msg  Message
} {
	return []struct {
		name string
		msg  Message
	}{
		{"client_hello", ClientHello{Min: 1, Max: 1}},
		{"server_hello", ServerHello{Version: 1, Challenge: arr32(0x40), MaxEnvelope: 65536}},
		{"create", Create{Req: 1, Mailbox: arr32(0x10), Owner: arr32(0x30), CapVerifier: fill(0xc0, 32), Sig: arr64(0x80)}},
		{"send", Send{Req: 2, Cap: fill(0xa0, 16), Envelope: fill(0x01, 40)}},
		{"subscribe", Subscribe{Req: 3, Mailbox: arr32(0x10), Sig: arr64(0x80)}},
		{"fetch", Fetch{Req: 4, Mailbox: arr32(0x10), Max: 256, After: 0x0102030405060708, Sig: arr64(0x80)}},
		{"ack", Ack{Req: 5, Mailbox: arr32(0x10), Refs: [][RefSize]byte{arr32(0x50), arr32(0x70)}, Sig: arr64(0x80)}},
		{"rotate", Rotate{Req: 6, Old: arr32(0x10), New: arr32(0x20), NewOwner: arr32(0x30), CapVerifier: nil, OldSig: arr64(0x80), NewSig: arr64(0x90)}},
		{"delete", Delete{Req: 7, Mailbox: arr32(0x10), Sig: arr64(0x80)}},
		{"ping", Ping{Req: 8, Data: []byte("ping")}},
		{"forward", Forward{Req: 9, Payload: fill(0x01, 8)}},
		{"descriptor", DescriptorRequest{Req: 10}},
		{"layer", Layer{Req: 11, Layer: fill(0x60, 12)}},
		{"tunnel_hello", TunnelHello{}},
		{"tunnel", Tunnel{Req: 12, Descriptor: "postern-relay1:AAAA"}},
		{"relay_auth", RelayAuth{Req: 13, Descriptor: "postern-relay1:BBBB", Sig: arr64(0x80)}},
		{"fetch_part", FetchPart{Req: 14, Mailbox: arr32(0x10), After: 0x0102030405060708, Offset: 4096, Max: 2048, Sig: arr64(0x80)}},
		{"subscribe_after", SubscribeAfter{Req: 15, Mailbox: arr32(0x10), After: 0x0102030405060708, Sig: arr64(0x80)}},
		{"result", Result{Req: 2, Code: CodeMailboxFull, Msg: "full", Body: fill(0x50, 4)}},
		{"deliver", Deliver{Req: 3, Mailbox: arr32(0x10), Ref: arr32(0x50), Seq: 42, Envelope: fill(0x01, 40)}},
		{"pong", Pong{Req: 8, Data: []byte("ping")}},
	}
}

// parsers decodes a payload by frame type.
var parsers = map[FrameType]func([]byte) (Message, error){
	FrameClientHello:    func(p []byte) (Message, error) { return ParseClientHello(p) },
	FrameServerHello:    func(p []byte) (Message, error) { return ParseServerHello(p) },
	FrameCreate:         func(p []byte) (Message, error) { return ParseCreate(p) },
	FrameSend:           func(p []byte) (Message, error) { return ParseSend(p) },
	FrameSubscribe:      func(p []byte) (Message, error) { return ParseSubscribe(p) },
	FrameFetch:          func(p []byte) (Message, error) { return ParseFetch(p) },
	FrameAck:            func(p []byte) (Message, error) { return ParseAck(p) },
	FrameRotate:         func(p []byte) (Message, error) { return ParseRotate(p) },
	FrameDelete:         func(p []byte) (Message, error) { return ParseDelete(p) },
	FramePing:           func(p []byte) (Message, error) { return ParsePing(p) },
	FrameForward:        func(p []byte) (Message, error) { return ParseForward(p) },
	FrameDescriptor:     func(p []byte) (Message, error) { return ParseDescriptorRequest(p) },
	FrameLayer:          func(p []byte) (Message, error) { return ParseLayer(p) },
	FrameTunnelHello:    func(p []byte) (Message, error) { return ParseTunnelHello(p) },
	FrameTunnel:         func(p []byte) (Message, error) { return ParseTunnel(p) },
	FrameRelayAuth:      func(p []byte) (Message, error) { return ParseRelayAuth(p) },
	FrameFetchPart:      func(p []byte) (Message, error) { return ParseFetchPart(p) },
	FrameSubscribeAfter: func(p []byte) (Message, error) { return ParseSubscribeAfter(p) },
	FrameResult:         func(p []byte) (Message, error) { return ParseResult(p) },
	FrameDeliver:        func(p []byte) (Message, error) { return ParseDeliver(p) },
	FramePong:           func(p []byte) (Message, error) { return ParsePong(p) },
}

func readGolden(t *testing.T) map[string][]byte {
	data, err := os.ReadFile("testdata/frames.golden")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hx, ok := strings.Cut(line, " ")
		b, err := hex.DecodeString(hx)
		if !ok || err != nil {
			t.Fatalf("bad golden line %q", line)
		}
		out[name] = b
	}
	return out
}

// TestGoldenFrames pins the wire bytes of every frame type: renumbering a
// frame, reordering a field or changing a width fails here.
func TestGoldenFrames(t *testing.T) {
	msgs := goldenMessages()
	if *update {
		var b strings.Builder
		b.WriteString("# One frame of every type: name, then the whole frame (type, length, payload) in hex.\n")
		for _, m := range msgs {
			fmt.Fprintf(&b, "%s %x\n", m.name, AppendFrame(nil, m.msg))
		}
		if err := os.WriteFile("testdata/frames.golden", []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden := readGolden(t)
	if len(golden) != len(parsers) || len(msgs) != len(parsers) {
		t.Fatalf("%d golden frames, %d messages, %d frame types", len(golden), len(msgs), len(parsers))
	}
	for _, m := range msgs {
		t.Run(m.name, func(t *testing.T) {
			want, ok := golden[m.name]
			if !ok {
				t.Fatal("no golden vector")
			}
			if got := AppendFrame(nil, m.msg); !bytes.Equal(got, want) {
				t.Fatalf("encoding changed:\n got %x\nwant %x", got, want)
			}
			ft, p, err := ReadFrame(bytes.NewReader(want))
			if err != nil || ft != m.msg.Type() {
				t.Fatalf("ReadFrame: type %#x, %v", ft, err)
			}
			back, err := parsers[ft](p)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalize(back), normalize(m.msg)) {
				t.Fatalf("decoded %+v, want %+v", back, m.msg)
			}
		})
	}
}

// normalize treats nil and empty byte slices alike.
func normalize(m Message) string {
	return fmt.Sprintf("%x", m.AppendPayload(nil)) + fmt.Sprintf("%T", m)
}

// TestGoldenSignature pins what an owner signs: changing SigContext or the
// layout of the signed bytes fails here.
func TestGoldenSignature(t *testing.T) {
	owner := ed25519.NewKeyFromSeed(fill(0x01, 32))
	relayKey := ed25519.NewKeyFromSeed(fill(0x21, 32)).Public().(ed25519.PublicKey)
	bind, ok := NewBinding(relayKey, arr32(0x40))
	if !ok {
		t.Fatal("NewBinding refused a 32-byte key")
	}
	m := Fetch{Req: 4, Mailbox: arr32(0x10), Max: 256, After: 7}
	got := Sign(owner, bind, m)

	if *update {
		if err := os.WriteFile("testdata/signature.golden", []byte(hex.EncodeToString(got[:])+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if hex.EncodeToString(got[:]) != goldenSig(t) {
		t.Fatalf("signature %x differs from testdata/signature.golden", got)
	}

	pub := owner.Public().(ed25519.PublicKey)
	if !Verify(pub, bind, m, got) {
		t.Fatal("own signature does not verify")
	}
	other := m
	other.After++
	if Verify(pub, bind, other, got) {
		t.Fatal("signature verifies for another request")
	}
	otherSession := bind
	otherSession.Challenge[0] ^= 1
	if Verify(pub, otherSession, m, got) {
		t.Fatal("signature verifies on another session")
	}
	// A relay that passes another relay's challenge to the client gets a
	// signature bound to its own key, which the other relay refuses.
	otherRelay := bind
	otherRelay.RelayKey[0] ^= 1
	if Verify(pub, otherRelay, m, got) {
		t.Fatal("signature verifies for another relay with the same challenge")
	}
	if _, ok := NewBinding(relayKey[:31], arr32(0x40)); ok {
		t.Fatal("NewBinding took a short key")
	}
}

// TestRelayAuthSignature: a link's proof verifies only under the signing
// relay's key, for the one peer and session it was made for, and is not
// interchangeable with an owner signature over the same binding.
func TestRelayAuthSignature(t *testing.T) {
	entry := ed25519.NewKeyFromSeed(fill(0x31, 32))
	entryPub := entry.Public().(ed25519.PublicKey)
	home := ed25519.NewKeyFromSeed(fill(0x21, 32)).Public().(ed25519.PublicKey)
	bind, _ := NewBinding(home, arr32(0x40))
	sig := SignRelayAuth(entry, bind)
	if !VerifyRelayAuth(entryPub, bind, sig) {
		t.Fatal("relay auth does not verify")
	}
	for name, b := range map[string]func(Binding) Binding{
		"other session": func(b Binding) Binding { b.Challenge[5] ^= 1; return b },
		"other peer":    func(b Binding) Binding { b.RelayKey[5] ^= 1; return b },
	} {
		if VerifyRelayAuth(entryPub, b(bind), sig) {
			t.Errorf("relay auth verifies for %s", name)
		}
	}
	if VerifyRelayAuth(home, bind, sig) || VerifyRelayAuth(entryPub[:31], bind, sig) {
		t.Error("relay auth verifies under another key")
	}
	if Verify(entryPub, bind, Ping{Req: 1}.asOwner(), sig) {
		t.Error("a relay auth signature is an owner signature")
	}
}

// ownerPing makes a Ping sign like an owner request, only to show that
// the two signature contexts do not overlap.
type ownerPing struct{ Ping }

func (p Ping) asOwner() OwnerRequest             { return ownerPing{p} }
func (p ownerPing) AppendSigned(b []byte) []byte { return p.AppendPayload(b) }

func goldenSig(t *testing.T) string {
	b, err := os.ReadFile("testdata/signature.golden")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestParseRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		t FrameType
		p []byte
	}{
		"hello bad magic":     {FrameClientHello, []byte("PSTX\x01\x01")},
		"hello long":          {FrameClientHello, []byte("PSTN\x01\x01\x00")},
		"create short":        {FrameCreate, make([]byte, 4+32+32)},
		"send cap too long":   {FrameSend, append([]byte{0, 0, 0, 1, MaxCapLen + 1}, make([]byte, MaxCapLen+1)...)},
		"ack too many refs":   {FrameAck, append(append(make([]byte, 36), 0x04, 0x01), make([]byte, 1025*32+64)...)},
		"ack count mismatch":  {FrameAck, append(append(make([]byte, 36), 0, 2), make([]byte, 32+64)...)},
		"ping data too long":  {FramePing, make([]byte, 4+MaxPingData+1)},
		"deliver no envelope": {FrameDeliver, make([]byte, 4+32+32+8)},
		"result short msg":    {FrameResult, []byte{0, 0, 0, 1, 0, 0, 0, 9, 'x'}},
		"rotate trailing":     {FrameRotate, make([]byte, 4+96+1+128+1)},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := parsers[tc.t](tc.p); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestReadFrameLimits(t *testing.T) {
	big := []byte{byte(FrameSend), 0xff, 0xff, 0xff, 0xff}
	if _, _, err := ReadFrame(bytes.NewReader(big)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
	short := []byte{byte(FramePing), 0, 0, 0, 8, 1, 2}
	if _, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(short))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short frame: %v", err)
	}
	if _, ok := RequestID([]byte{1, 2, 3}); ok {
		t.Fatal("RequestID of 3 bytes")
	}
	r, err := Result{Body: CountBody(7)}.Count()
	if err != nil || r != 7 {
		t.Fatalf("Count = %d, %v", r, err)
	}
	if _, err := (Result{Body: []byte{1}}).Count(); err == nil {
		t.Fatal("Count of a 1-byte body")
	}
	// A Result message longer than MaxResultMsg, which no encoder writes
	// (found by FuzzFrames: it re-encoded cut).
	long := binary.BigEndian.AppendUint16(make([]byte, 6), MaxResultMsg+1)
	long = append(long, bytes.Repeat([]byte{'x'}, MaxResultMsg+1)...)
	if _, err := ParseResult(long); err == nil {
		t.Fatal("ParseResult accepted a message longer than MaxResultMsg")
	}
	ok := binary.BigEndian.AppendUint16(make([]byte, 6), MaxResultMsg)
	ok = append(ok, bytes.Repeat([]byte{'x'}, MaxResultMsg)...)
	if m, err := ParseResult(ok); err != nil || len(m.Msg) != MaxResultMsg {
		t.Fatalf("ParseResult of a %d-byte message: %v", MaxResultMsg, err)
	}
}

// FuzzFrames feeds arbitrary bytes to the frame reader and every parser:
// nothing may panic, and whatever parses re-encodes to the same payload.
func FuzzFrames(f *testing.F) {
	for _, m := range goldenMessages() {
		f.Add(AppendFrame(nil, m.msg))
	}
	f.Add([]byte{0x11, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		ft, p, err := ReadFrame(bytes.NewReader(b))
		checkSeen(t, b, ft, p, err)
		if err != nil {
			return
		}
		for typ, parse := range parsers {
			m, err := parse(p)
			if err != nil {
				continue
			}
			if got := m.AppendPayload(nil); !bytes.Equal(got, p) {
				t.Fatalf("%#x as %#x: re-encodes to %x, read %x", ft, typ, got, p)
			}
		}
	})
}

// checkSeen reads b with ReadFrameSeen, a byte at a time and a few
// bytes at a time with the last ones' EOF, and fails t unless it reads
// what ReadFrame read (ft, p, err), telling seen of the payload as it
// came: once with nothing of it, then after each read, each time the
// same payload, its first got bytes read and got growing.
func checkSeen(t *testing.T, b []byte, ft FrameType, p []byte, err error) {
	t.Helper()
	for _, r := range []io.Reader{iotest.OneByteReader(bytes.NewReader(b)), iotest.DataErrReader(iotest.HalfReader(bytes.NewReader(b)))} {
		var buf []byte
		last := -1
		st, sp, serr := ReadFrameSeen(r, func(typ FrameType, p []byte, got int) {
			if last < 0 {
				buf = p
			}
			if typ != FrameType(b[0]) || !sameSlice(p, buf) || got <= last || got > len(p) ||
				(last < 0 && got != 0) || !bytes.Equal(p[:got], b[FrameHeaderSize:FrameHeaderSize+got]) {
				t.Fatalf("seen %#x, %d of %d bytes after %d", typ, got, len(p), last)
			}
			last = got
		})
		if st != ft || !bytes.Equal(sp, p) || (serr == nil) != (err == nil) || (err != nil && serr.Error() != err.Error()) {
			t.Fatalf("ReadFrameSeen: %#x, %x, %v; ReadFrame: %#x, %x, %v", st, sp, serr, ft, p, err)
		}
		if err == nil && (last != len(p) || !sameSlice(sp, buf)) {
			t.Fatalf("seen up to %d of %d bytes, or of another payload than returned", last, len(p))
		}
	}
}

// sameSlice reports whether a and b are the same bytes in memory.
func sameSlice(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// TestReadFrameSeen: a frame cut short is seen as far as it came.
func TestReadFrameSeen(t *testing.T) {
	frame := AppendFrame(nil, Ping{Req: 7, Data: []byte("abcdefgh")})
	for cut := 0; cut <= len(frame); cut++ {
		ft, p, err := ReadFrame(bytes.NewReader(frame[:cut]))
		checkSeen(t, frame[:cut], ft, p, err)
		if want := cut == len(frame); (err == nil) != want || (cut > 0 && cut < len(frame) && !errors.Is(err, io.ErrUnexpectedEOF)) {
			t.Fatalf("cut at %d: %v", cut, err)
		}
	}
}

// TestDeliverFrameHead: the head plus the envelope is the whole frame.
func TestDeliverFrameHead(t *testing.T) {
	for _, m := range goldenMessages() {
		d, ok := m.msg.(Deliver)
		if !ok {
			continue
		}
		got := append(d.AppendFrameHead(nil), d.Envelope...)
		if want := AppendFrame(nil, d); !bytes.Equal(got, want) {
			t.Fatalf("head+envelope %x, frame %x", got, want)
		}
		return
	}
	t.Fatal("no Deliver among the golden messages")
}

func TestForwardPayload(t *testing.T) {
	f := ForwardPayload{Descriptor: "postern-relay1:x", Layer: []byte("layer")}
	b := f.Append(nil)
	if hex.EncodeToString(b) != "0010"+hex.EncodeToString([]byte("postern-relay1:x"))+hex.EncodeToString([]byte("layer")) {
		t.Fatalf("encoding %x", b)
	}
	back, err := ParseForwardPayload(b)
	if err != nil || back.Descriptor != f.Descriptor || string(back.Layer) != "layer" {
		t.Fatalf("%+v, %v", back, err)
	}
	for _, bad := range [][]byte{nil, {0, 0}, {0, 1, 'x'}, {0, 9, 'x'}} {
		if _, err := ParseForwardPayload(bad); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%x: %v", bad, err)
		}
	}
}

// FuzzParsePart: a FetchPart answer's body parses without panicking, and
// whatever parses re-encodes to the same bytes.
func FuzzParsePart(f *testing.F) {
	f.Add(Part{Ref: arr32(0x50), Seq: 42, Total: 65536, Data: fill(0x01, 40)}.Append(nil))
	f.Add(Part{Ref: arr32(0x50), Seq: 1, Total: 0}.Append(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParsePart(b)
		if err != nil {
			return
		}
		if got := m.Append(nil); !bytes.Equal(got, b) {
			t.Fatalf("re-encodes to %x, read %x", got, b)
		}
	})
}
