package forward

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
)

// The golden vector: one X-Wing layer around a 4 KiB envelope, sealed once
// and committed with the relay's envelope identity, so that a change to the
// layer format fails this test. Regenerate only for a deliberate format
// change, which must also change Magic:
//
//	POSTERN_UPDATE_GOLDEN=1 go test ./relay/forward -run TestGolden
const goldenFile = "testdata/layer.golden"

type golden struct {
	id       *envelope.Identity
	relayKey ed25519.PublicKey
	epoch    uint32
	sendCap  []byte
	envHash  []byte
	mailbox  []byte
	layer    []byte
}

func readGolden(tb testing.TB) golden {
	tb.Helper()
	raw, err := os.ReadFile(goldenFile)
	if err != nil {
		tb.Fatal(err)
	}
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, _ := strings.Cut(line, " ")
		fields[k] = v
	}
	unhex := func(k string) []byte {
		b, err := hex.DecodeString(fields[k])
		if err != nil || fields[k] == "" && k != "cap" {
			tb.Fatalf("golden field %q: %v", k, err)
		}
		return b
	}
	var g golden
	if g.id, err = envelope.ParseIdentity(unhex("identity")); err != nil {
		tb.Fatal(err)
	}
	epoch, err := strconv.ParseUint(fields["epoch"], 10, 32)
	if err != nil {
		tb.Fatal(err)
	}
	g.relayKey, g.epoch, g.sendCap = unhex("relay-key"), uint32(epoch), unhex("cap")
	g.envHash, g.mailbox, g.layer = unhex("envelope-sha256"), unhex("mailbox"), unhex("layer")
	return g
}

func writeGolden(t *testing.T) {
	id, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	r := newRelay(t, envelope.SuiteXWing, id)
	env := newEnvelope(t, envelope.Bucket4K)
	mb, _ := envelope.PeekMailbox(env)
	sendCap := []byte("golden send capability, 32 bytes")
	const epoch = 0x01020304
	layer := mustSeal(t, r, epoch, sendCap, env)
	idText, err := id.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	envHash := sha256.Sum256(env)
	var b bytes.Buffer
	b.WriteString("# Forward layer golden vector (see golden_test.go). Test keys only.\n")
	fmt.Fprintf(&b, "identity %x\n", idText)
	fmt.Fprintf(&b, "relay-key %x\n", []byte(r.pub))
	fmt.Fprintf(&b, "epoch %d\n", epoch)
	fmt.Fprintf(&b, "cap %x\n", sendCap)
	fmt.Fprintf(&b, "envelope-sha256 %x\n", envHash[:])
	fmt.Fprintf(&b, "mailbox %x\n", mb[:])
	fmt.Fprintf(&b, "layer %x\n", layer)
	if err := os.WriteFile(goldenFile, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestGolden(t *testing.T) {
	if os.Getenv("POSTERN_UPDATE_GOLDEN") == "1" {
		writeGolden(t)
	}
	g := readGolden(t)
	if dest, err := Dest(g.layer); err != nil || dest != RelayHash(g.relayKey) {
		t.Fatalf("Dest = %x, %v", dest, err)
	}
	o, err := NewOpener(g.id, g.relayKey, g.epoch, 0)
	if err != nil {
		t.Fatal(err)
	}
	sendCap, env, err := openStored(o, g.layer)
	if err != nil {
		t.Fatalf("golden layer no longer opens: %v", err)
	}
	envHash := sha256.Sum256(env)
	mb, err := envelope.PeekMailbox(env)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sendCap, g.sendCap) || !bytes.Equal(envHash[:], g.envHash) || !bytes.Equal(mb[:], g.mailbox) {
		t.Fatal("golden layer opens to another Send")
	}
	// Sealing the same Send again gives the same header and length.
	home := &descriptor.Descriptor{RelayKey: g.relayKey, EnvelopeSuite: uint8(envelope.SuiteXWing), EnvelopeKey: g.id.Public().XWing}
	again, err := Seal(home, g.epoch, sendCap, env)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != len(g.layer) || !bytes.Equal(again[:HeaderSize], g.layer[:HeaderSize]) {
		t.Fatal("Seal no longer produces the golden header or length")
	}
}
