package main

import (
	"crypto/ed25519"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/transport/descriptor"
)

// TestLayerOpenerCodes: the relay's layer opener answers a copy of a layer
// being stored CodeBusy (the entry relay sends it again later), and a
// layer stored before CodeReplay (the entry relay drops it as delivered);
// a layer whose envelope was not stored opens again.
func TestLayerOpenerCodes(t *testing.T) {
	id, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	d := relayDescriptor(t, id)
	o, err := forward.NewOpener(id, d.RelayKey, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	bob, _ := envelope.NewIdentity()
	env, err := envelope.Seal(bob.Card([32]byte{1}, nil, nil), nil, []byte("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := forward.Seal(d, 1, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	l := layerOpener{o}
	_, got, done, err := l.Open(layer)
	if err != nil || string(got) != string(env) {
		t.Fatalf("open: %v", err)
	}
	if _, _, _, err := l.Open(layer); !errors.Is(err, relay.ErrBusy) {
		t.Fatalf("a copy while the first is stored: %v, want CodeBusy", err)
	}
	done(false)
	if _, _, done, err = l.Open(layer); err != nil {
		t.Fatalf("a layer not stored, again: %v", err)
	}
	done(true)
	if _, _, _, err := l.Open(layer); !errors.Is(err, relay.ErrReplay) {
		t.Fatalf("a layer stored, again: %v, want CodeReplay", err)
	}
}

// TestSourceShare: a client address may fill a sixteenth of the outbox,
// at least 16 MiB (two of the largest messages) and at most all of it.
func TestSourceShare(t *testing.T) {
	for _, tc := range []struct{ outbox, want int64 }{
		{0, 16 << 20}, // the default, 256 MiB
		{1 << 30, 64 << 20},
		{64 << 20, 16 << 20},
		{8 << 20, 8 << 20},
	} {
		if got := sourceShare(tc.outbox); got != tc.want {
			t.Errorf("sourceShare(%d) = %d, want %d", tc.outbox, got, tc.want)
		}
	}
}

// relayDescriptor is a signed descriptor of a relay whose envelope key is
// id's, with one endpoint on loopback that nothing listens on.
func relayDescriptor(t *testing.T, id *envelope.Identity) *descriptor.Descriptor {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(nil)
	d := &descriptor.Descriptor{EnvelopeSuite: uint8(envelope.SuiteXWing), EnvelopeKey: id.Public().XWing,
		Endpoints: []descriptor.Endpoint{{Transport: "https", Addr: "127.0.0.1:1", Path: "/p", Key: make([]byte, 32)}},
		Issued:    time.Now().Add(-time.Minute), Expires: time.Now().Add(time.Hour)}
	line, err := d.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	if d, err = descriptor.Parse(line, time.Now()); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestLinkDialerPublicOnly: a relay's direct dials for clients (links to
// home relays, tunnels) go only to public addresses unless private peers
// are allowed, but an upstream, which the operator named, is dialed
// wherever it is.
func TestLinkDialerPublicOnly(t *testing.T) {
	id, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	home, up := relayDescriptor(t, id), relayDescriptor(t, id)
	d := linkDialer{upstreams: []*descriptor.Descriptor{up}}
	if !d.direct(home).PublicOnly || d.direct(up).PublicOnly {
		t.Fatal("public only: to a client's home relay, not to an upstream")
	}
	d.private = true
	if d.direct(home).PublicOnly {
		t.Fatal("private peers allowed, yet public only")
	}
}

// TestOpenRoutesOnce: dials of one process share one route memory per
// file, so that two dials at once do not each save the whole file over
// what the other learnt.
func TestOpenRoutesOnce(t *testing.T) {
	dir := t.TempDir()
	a, err := openRoutes(filepath.Join(dir, "routes"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := openRoutes(filepath.Join(dir, "routes"))
	c, _ := openRoutes(filepath.Join(dir, "other"))
	if a != b || a == c {
		t.Fatal("one memory per file, and one only")
	}
}
