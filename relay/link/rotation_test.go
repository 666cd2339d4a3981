package link_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/transport/descriptor"
)

// rotationCase is a forward queued at an entry relay for a mailbox with a
// send capability, which its owner rotates (rotations times) before the
// entry relay reaches the home relay; the layer carries the capability
// capOf names: "old" (the one the sender was given with the id the
// envelope names), "new" (the last rotation's), "other" or "none".
type rotationCase struct {
	name      string
	rotations int
	capOf     string
	delivered bool // the home relay stores it in the last mailbox; else it refuses it
}

var rotationCases = []rotationCase{
	{"old capability, one rotation", 1, "old", true},
	{"old capability, two rotations", 2, "old", true},
	{"the new mailbox's capability", 1, "new", false},
	{"another capability", 1, "other", false},
	{"no capability", 1, "none", false},
}

// errHomeDown is the entry relay's dial failing while the home relay is
// out of reach.
var errHomeDown = errors.New("home relay unreachable")

// rotationRig is a home relay and an entry relay, each serving a real
// loopback listener, with the entry relay's forwarder dialing the home
// relay's; the home relay is out of reach (down) until told otherwise.
// Both relays' logs, and every byte the home relay sends on a link, are
// kept; so is the local address of every connection to either relay.
type rotationRig struct {
	t                   *testing.T
	ctx                 context.Context
	stopForwarder       context.CancelFunc
	home, entry         *relaytest.Relay
	homeDesc            *descriptor.Descriptor
	homeLine, entryLine string
	homeAddr, entryAddr string
	entryKey            ed25519.PrivateKey
	q                   *memQueue
	down                atomic.Bool
	dials               atomic.Int32
	homeLogs, entryLogs lockedBuf
	linkRx              lockedBuf // what the home relay answered on links

	mu       sync.Mutex
	events   map[string]int
	addrs    []string       // local addresses of connections to either relay
	sessions map[string]int // sessions that came up, by relay address
	clients  []*client.Client
}

func newRotationRig(t *testing.T, st store.Store) *rotationRig {
	r := &rotationRig{t: t, q: &memQueue{}, events: map[string]int{}, sessions: map[string]int{}}
	r.down.Store(true)
	debug := &slog.HandlerOptions{Level: slog.LevelDebug}
	r.home, r.homeDesc, r.homeLine = homeRelayWith(t, st,
		server.Config{Logger: slog.New(slog.NewTextHandler(&r.homeLogs, debug))}, nil)
	r.homeAddr = r.home.ServeTCP(t, "tcp")
	_, r.entryKey, _ = ed25519.GenerateKey(nil)
	r.entryLine, _ = signedDescriptor(t, r.entryKey, "entry")
	entryLog := slog.New(slog.NewTextHandler(&r.entryLogs, debug))
	fw := link.NewForwarder(link.ForwarderConfig{Queue: r.q, Dest: forward.Dest, Dial: r.dial,
		Observe: func(e string) { r.mu.Lock(); r.events[e]++; r.mu.Unlock() },
		Log:     entryLog, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	r.entry = relaytest.New(t, store.Options{}, server.Config{Forwarder: fw, Logger: entryLog})
	r.entryAddr = r.entry.ServeTCP(t, "tcp")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	t.Cleanup(cancel)
	r.ctx = ctx
	fctx, stop := context.WithCancel(ctx)
	r.stopForwarder = stop
	runForwarder(fctx, t, fw)
	return r
}

// dial is the entry relay's way to the home relay: refused while it is
// down, else a link session over a new loopback connection.
func (r *rotationRig) dial(ctx context.Context, _ *descriptor.Descriptor) (*client.Client, error) {
	r.dials.Add(1)
	if r.down.Load() {
		return nil, errHomeDown
	}
	c, err := r.connect(ctx, r.homeAddr, r.home.Server.PublicKey(), &r.linkRx)
	if err != nil {
		return nil, err
	}
	if err := c.AuthenticateRelay(ctx, r.entryLine, r.entryKey); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// recordingConn copies what it reads into rec.
type recordingConn struct {
	*net.TCPConn
	rec *lockedBuf
}

func (c recordingConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	c.rec.Write(p[:n])
	return n, err
}

// connect opens a session to the relay with key key at addr and notes
// the connection's local address; what the relay sends is copied into
// rec if it is set.
func (r *rotationRig) connect(ctx context.Context, addr string, key ed25519.PublicKey, rec *lockedBuf) (*client.Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := conn.(*net.TCPConn)
	r.mu.Lock()
	r.addrs = append(r.addrs, tc.LocalAddr().String())
	r.mu.Unlock()
	var c *client.Client
	if rec != nil {
		c, err = client.New(ctx, recordingConn{tc, rec}, client.WithRelayKey(key))
	} else {
		c, err = client.New(ctx, tc, client.WithRelayKey(key))
	}
	if err != nil {
		tc.Close()
		return nil, err
	}
	r.mu.Lock()
	r.sessions[addr]++
	r.mu.Unlock()
	return c, nil
}

// client is connect for the test's own sessions, closed when it ends.
func (r *rotationRig) client(addr string, key ed25519.PublicKey) *client.Client {
	r.t.Helper()
	c, err := r.connect(r.ctx, addr, key, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	r.mu.Lock()
	r.clients = append(r.clients, c)
	r.mu.Unlock()
	return c
}

// rotationRun is one forward across rotations: the mailbox ids in turn
// (the one the envelope names first, the one it should end in last) with
// their owner keys and capabilities, and the envelope.
type rotationRun struct {
	owner  *client.Client // the owner's session to the home relay
	ids    [][32]byte
	owners []ed25519.PrivateKey
	caps   [][]byte
	mb     *relaytest.Mailbox
	env    []byte
}

func verifier(sendCap []byte) []byte { v := sha256.Sum256(sendCap); return v[:] }

func random32() []byte { b := make([]byte, 32); rand.Read(b); return b }

// newRun creates the mailbox (with a send capability) on the home relay
// and draws the ids, owner keys and capabilities of its rotations.
func (r *rotationRig) newRun(c rotationCase) *rotationRun {
	run := &rotationRun{owner: r.client(r.homeAddr, r.home.Server.PublicKey())}
	run.caps = [][]byte{random32()}
	run.mb = relaytest.NewMailbox(r.t, run.owner, verifier(run.caps[0]))
	run.ids, run.owners = [][32]byte{run.mb.ID}, []ed25519.PrivateKey{run.mb.Owner}
	for range c.rotations {
		_, owner, _ := ed25519.GenerateKey(nil)
		run.ids = append(run.ids, [32]byte(random32()))
		run.owners = append(run.owners, owner)
		run.caps = append(run.caps, random32())
	}
	run.env = run.mb.Seal(r.t, c.name)
	return run
}

// run forwards an envelope for a new mailbox through the entry relay
// while the home relay is down (acked: queued), lets the entry relay try
// and fail, rotates the mailbox, brings the home relay up and waits until
// the entry relay's queue is empty.
func (r *rotationRig) run(c rotationCase) *rotationRun {
	t := r.t
	t.Helper()
	run := r.newRun(c)
	layerCap := map[string][]byte{"old": run.caps[0], "new": run.caps[len(run.caps)-1], "other": random32()}[c.capOf]
	layer, err := forward.Seal(r.homeDesc, 1, layerCap, run.env)
	if err != nil {
		t.Fatal(err)
	}
	sender := r.client(r.entryAddr, r.entry.Server.PublicKey())
	if err := sender.Forward(r.ctx, r.homeLine, layer); err != nil {
		t.Fatal(err)
	}
	waitFor(r.ctx, t, "the entry relay tried the home relay", func() bool { return r.dials.Load() > 0 })
	if n := r.q.len(); n != 1 {
		t.Fatalf("the entry relay queues %d forwards, want the one it acked", n)
	}
	for i := 1; i < len(run.ids); i++ {
		moved, err := run.owner.Rotate(r.ctx, run.owners[i-1], run.ids[i-1], run.owners[i], run.ids[i], verifier(run.caps[i]))
		if err != nil || moved != 0 {
			t.Fatalf("rotation %d: %d envelopes moved (%v), want none: the forward is still queued", i, moved, err)
		}
	}
	r.down.Store(false)
	waitFor(r.ctx, t, "the forward left the entry relay's queue", func() bool { return r.q.len() == 0 })
	return run
}

// check checks where the forward went: into the last mailbox, counted
// delivered, if c.delivered; else refused and stored nowhere. Nothing is
// in the ids rotated away.
func (r *rotationRig) check(c rotationCase, run *rotationRun) {
	t := r.t
	t.Helper()
	r.mu.Lock()
	events := fmt.Sprint(r.events)
	delivered, refused, replay := r.events["delivered"], r.events["refused"], r.events["replay"]
	r.mu.Unlock()
	last := len(run.ids) - 1
	ds, err := run.owner.Fetch(r.ctx, run.owners[last], run.ids[last], 0)
	if err != nil {
		t.Fatalf("the new owner's fetch: %v", err)
	}
	want := 0
	if c.delivered {
		want = 1
		if delivered != 1 || refused != 0 || replay != 0 {
			t.Fatalf("entry relay's events %s, want one delivered and none refused", events)
		}
		if len(ds) != 1 || !bytes.Equal(ds[0].Envelope, run.env) {
			t.Fatalf("the new mailbox holds %d envelopes, want exactly the forwarded one", len(ds))
		}
		if o, err := envelope.Open(run.mb.Ident, ds[0].Envelope); err != nil || string(o.Payload) != c.name {
			t.Fatalf("the forwarded envelope does not open (%v)", err)
		}
	} else if refused != 1 || delivered != 0 || len(ds) != 0 {
		t.Fatalf("entry relay's events %s and %d envelopes in the new mailbox, want it refused and stored nowhere", events, len(ds))
	}
	for i, id := range run.ids[:last] {
		if _, err := r.home.Store.Mailbox(r.ctx, id); !errors.Is(err, store.ErrNoMailbox) {
			t.Fatalf("rotated-away id %d is still a mailbox (%v)", i, err)
		}
		if _, err := run.owner.Fetch(r.ctx, run.owners[i], id, 0); !errors.Is(err, relay.ErrNoMailbox) {
			t.Fatalf("fetch of rotated-away id %d: %v, want no such mailbox", i, err)
		}
	}
	if n := r.home.Store.Stats().Envelopes; n != want {
		t.Fatalf("the home relay holds %d envelopes, want %d", n, want)
	}
}

// TestForwardAcrossRotation: a forward an entry relay acked and queued for
// a mailbox with a send capability, which its owner rotated (new id,
// owner key and capability) before the entry relay reached the home
// relay, is stored in the new mailbox when it is delivered, with the
// capability the sender was given with the old id, through two rotations
// as through one; the entry relay counts it delivered and drops it from
// its queue, and nothing is left at the old ids. A layer with any other
// capability (the new mailbox's, another, none) is still refused and
// stored nowhere. Before dfbf4e1 the home relay answered "no such
// mailbox" for the old id, and the entry relay dropped the forward as
// refused: an envelope acked to its sender and stored nowhere. Over the
// memory store and the log store (their forwards are kept apart).
func TestForwardAcrossRotation(t *testing.T) {
	stores := []struct {
		name string
		open func(t *testing.T) store.Store
	}{
		{"memory", func(*testing.T) store.Store { return store.NewMemory(store.Options{}) }},
		{"log", func(t *testing.T) store.Store {
			st, err := boltstore.Open(t.TempDir(), store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return st
		}},
	}
	for _, s := range stores {
		for _, c := range rotationCases {
			t.Run(s.name+"/"+c.name, func(t *testing.T) {
				r := newRotationRig(t, s.open(t))
				r.check(c, r.run(c))
			})
		}
	}
}

// probe sends the home relay an envelope naming the rotated-away id
// with a wrong capability and with none, directly as a contact who has
// not had the new card would, and fetches the old id as its old owner,
// and returns the errors' texts.
func (r *rotationRig) probe(run *rotationRun) string {
	t := r.t
	t.Helper()
	c := r.client(r.homeAddr, r.home.Server.PublicKey())
	var texts []string
	for _, sendCap := range [][]byte{random32(), nil} {
		_, err := c.Send(r.ctx, run.mb.Seal(t, "direct"), sendCap)
		if !errors.Is(err, relay.ErrCapability) {
			t.Fatalf("a direct send to the old id with a wrong capability: %v, want refused for its capability", err)
		}
		texts = append(texts, err.Error())
	}
	if _, err := c.Fetch(r.ctx, run.owners[0], run.ids[0], 0); err != nil {
		texts = append(texts, err.Error())
	}
	return strings.Join(texts, "\n")
}

// endSessions closes the test's sessions and the entry relay's link, and
// waits until each relay has logged the end of every session it had.
func (r *rotationRig) endSessions() {
	r.mu.Lock()
	clients := r.clients
	r.mu.Unlock()
	for _, c := range clients {
		c.Close()
	}
	r.stopForwarder()
	ended := func(logs *lockedBuf, addr string) func() bool {
		return func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return strings.Count(logs.String(), "session ended") >= r.sessions[addr]
		}
	}
	waitFor(r.ctx, r.t, "the home relay logged its sessions' ends", ended(&r.homeLogs, r.homeAddr))
	waitFor(r.ctx, r.t, "the entry relay logged its sessions' ends", ended(&r.entryLogs, r.entryAddr))
}

// TestForwardAcrossRotationNoMetadata: following a rotated-away id, for a
// forward delivered and for one refused (a wrong capability), names
// neither the old nor the new mailbox id, nor the loopback address and
// port of any connection to either relay (the clients' and the entry
// relay's link) or of either relay, in either relay's log, in what the
// home relay answered the entry relay on the link, or in the errors the
// home relay returned to a client that sent or fetched for the old id. The
// forward is followed (or refused) first, which on the tree before
// dfbf4e1 it is not.
func TestForwardAcrossRotationNoMetadata(t *testing.T) {
	for _, c := range []rotationCase{rotationCases[0], rotationCases[3]} {
		t.Run(c.name, func(t *testing.T) {
			r := newRotationRig(t, store.NewMemory(store.Options{}))
			run := r.run(c)
			r.check(c, run)
			errTexts := r.probe(run)
			r.endSessions()
			needles := []relaytest.Needle{relaytest.BytesNeedle("the old mailbox id", run.ids[0][:]),
				relaytest.BytesNeedle("the new mailbox id", run.ids[1][:])}
			r.mu.Lock()
			addrs := append([]string(nil), r.addrs...)
			r.mu.Unlock()
			for _, a := range append(addrs, r.homeAddr, r.entryAddr) {
				needles = append(needles, relaytest.AddrNeedle("the address "+a, a))
			}
			if l := relaytest.FindLeaks("a planted line", []byte("mailbox="+hex.EncodeToString(run.ids[0][:])+" peer="+addrs[0]), needles); len(l) != 2 {
				t.Fatalf("the scanner found %v in a line with the old id and an address", l)
			}
			if !strings.Contains(r.entryLogs.String(), "failed") || strings.Count(r.homeLogs.String(), "session ended") < 3 {
				t.Fatalf("the logs hold less than they should: entry relay's:\n%s\nhome relay's:\n%s", r.entryLogs.String(), r.homeLogs.String())
			}
			for where, hay := range map[string]string{"the home relay's log": r.homeLogs.String(),
				"the entry relay's log": r.entryLogs.String(), "the home relay's answers on the link": r.linkRx.String(),
				"the errors returned to clients": errTexts} {
				if l := relaytest.FindLeaks(where, []byte(hay), needles); len(l) != 0 {
					t.Errorf("%s: %q", strings.Join(l, ", "), hay)
				}
			}
		})
	}
}
