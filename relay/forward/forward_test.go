package forward

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
)

// relayFixture is a home relay: its envelope identity, Ed25519 key and the
// descriptor fields Seal reads.
type relayFixture struct {
	id   *envelope.Identity
	pub  ed25519.PublicKey
	desc *descriptor.Descriptor
}

func newRelay(t testing.TB, suite envelope.Suite, id *envelope.Identity) relayFixture {
	t.Helper()
	if id == nil {
		var err error
		if id, err = envelope.NewIdentity(); err != nil {
			t.Fatal(err)
		}
	}
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	key := id.Public().XWing
	if suite == envelope.SuiteX25519 {
		key = id.Public().X25519
	}
	return relayFixture{id: id, pub: pub, desc: &descriptor.Descriptor{
		RelayKey: pub, EnvelopeSuite: uint8(suite), EnvelopeKey: key,
	}}
}

func (r relayFixture) opener(t testing.TB, epoch uint32, replayCap int) *Opener {
	t.Helper()
	o, err := NewOpener(r.id, r.pub, epoch, replayCap)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// newEnvelope seals an anonymous envelope of the given bucket to a fresh
// recipient.
func newEnvelope(t testing.TB, bucket int) []byte {
	t.Helper()
	rcpt, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	var mb [envelope.MailboxIDSize]byte
	rand.Read(mb[:])
	env, err := envelope.Seal(rcpt.Card(mb, nil, nil), nil, []byte("hello"), &envelope.Options{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func mustSeal(t testing.TB, r relayFixture, epoch uint32, sendCap, env []byte) []byte {
	t.Helper()
	layer, err := Seal(r.desc, epoch, sendCap, env)
	if err != nil {
		t.Fatal(err)
	}
	return layer
}

var suites = []envelope.Suite{envelope.SuiteXWing, envelope.SuiteX25519}

func TestMaxLayer(t *testing.T) {
	if MaxLayer != 41+1120+16+1+64+65536 {
		t.Fatalf("MaxLayer = %d", MaxLayer)
	}
	if HeaderSize != 41 {
		t.Fatalf("HeaderSize = %d", HeaderSize)
	}
}

func TestRoundTrip(t *testing.T) {
	caps := [][]byte{nil, bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{9}, MaxCapLen)}
	for _, s := range suites {
		r := newRelay(t, s, nil)
		o := r.opener(t, 42, 0)
		for _, bucket := range envelope.Buckets {
			env := newEnvelope(t, bucket)
			for _, c := range caps {
				t.Run(fmt.Sprintf("%s/%d/cap%d", s, bucket, len(c)), func(t *testing.T) {
					layer := mustSeal(t, r, 42, c, env)
					want := HeaderSize + encSize(s) + tagSize + plainFixed + bucket
					if len(layer) != want || len(layer) > MaxLayer {
						t.Fatalf("layer is %d bytes, want %d (MaxLayer %d)", len(layer), want, MaxLayer)
					}
					if dest, err := Dest(layer); err != nil || dest != RelayHash(r.pub) {
						t.Fatalf("Dest = %x, %v", dest, err)
					}
					gotCap, gotEnv, err := openStored(o, layer)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(gotCap, c) || !bytes.Equal(gotEnv, env) {
						t.Fatal("opened Send differs")
					}
				})
			}
		}
	}
}

func TestMaxLayerReached(t *testing.T) {
	r := newRelay(t, envelope.SuiteXWing, nil)
	layer := mustSeal(t, r, 1, nil, newEnvelope(t, envelope.Bucket64K))
	if len(layer) != MaxLayer {
		t.Fatalf("X-Wing 64K layer is %d bytes, MaxLayer %d", len(layer), MaxLayer)
	}
	if _, err := Dest(append(layer, 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("layer over MaxLayer: %v", err)
	}
}

func TestReplay(t *testing.T) {
	r := newRelay(t, envelope.SuiteX25519, nil)
	o := r.opener(t, 1, 0)
	layer := mustSeal(t, r, 1, nil, newEnvelope(t, envelope.Bucket4K))
	if _, _, err := openStored(o, layer); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openStored(o, layer); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay: %v", err)
	}
	// A second seal of the same Send is a new layer, not a replay.
	if _, _, err := openStored(o, mustSeal(t, r, 1, nil, newEnvelope(t, envelope.Bucket4K))); err != nil {
		t.Fatal(err)
	}
}

// openStored opens layer as a relay that then stores its envelope does.
func openStored(o *Opener, layer []byte) (sendCap, env []byte, err error) {
	sendCap, env, done, err := o.Open(layer)
	if err == nil {
		done(true)
	}
	return sendCap, env, err
}

// TestReplayOnlyOnceStored: a layer whose envelope the relay did not
// store (a full mailbox, a failed write) opens again when its entry relay
// sends it again, which takes ErrReplay as delivered; a copy that comes
// while the first is being stored is ErrInFlight; done counts once.
func TestReplayOnlyOnceStored(t *testing.T) {
	r := newRelay(t, envelope.SuiteX25519, nil)
	o := r.opener(t, 1, 0)
	layer := mustSeal(t, r, 1, nil, newEnvelope(t, envelope.Bucket4K))
	_, _, done, err := o.Open(layer)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := o.Open(layer); !errors.Is(err, ErrInFlight) {
		t.Fatalf("a copy while the first is being stored: %v", err)
	}
	done(false)
	done(true) // too late: done counts once
	_, _, done, err = o.Open(layer)
	if err != nil {
		t.Fatalf("a layer not stored, sent again: %v", err)
	}
	done(true)
	done(false) // too late
	if _, _, _, err := o.Open(layer); !errors.Is(err, ErrReplay) {
		t.Fatalf("a layer stored, sent again: %v", err)
	}
}

func TestReplayEviction(t *testing.T) {
	r := newRelay(t, envelope.SuiteX25519, nil)
	o := r.opener(t, 1, 2)
	env := newEnvelope(t, envelope.Bucket4K)
	l1, l2, l3 := mustSeal(t, r, 1, nil, env), mustSeal(t, r, 1, nil, env), mustSeal(t, r, 1, nil, env)
	for _, l := range [][]byte{l1, l2, l3} {
		if _, _, err := openStored(o, l); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range [][]byte{l2, l3} {
		if _, _, err := openStored(o, l); !errors.Is(err, ErrReplay) {
			t.Fatalf("recent layer replayed: %v", err)
		}
	}
	// l1 was evicted: the cache is bounded, the store's dedupe covers this.
	if _, _, err := openStored(o, l1); err != nil {
		t.Fatalf("evicted layer: %v", err)
	}
	// The cache now holds l3 and l1 only: l1 is refused, l2 (evicted) opens.
	if _, _, err := openStored(o, l1); !errors.Is(err, ErrReplay) {
		t.Fatalf("l1 just remembered: %v", err)
	}
	if _, _, err := openStored(o, l2); err != nil {
		t.Fatalf("l2 should have been evicted by a cache of 2: %v", err)
	}
}

func TestConcurrentOpen(t *testing.T) {
	r := newRelay(t, envelope.SuiteX25519, nil)
	o := r.opener(t, 1, 4)
	env := newEnvelope(t, envelope.Bucket4K)
	layers := [][]byte{mustSeal(t, r, 1, nil, env), mustSeal(t, r, 1, nil, env)}
	var mu sync.Mutex
	opened := map[int]int{}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			_, _, err := openStored(o, layers[g%2])
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				opened[g%2]++
			case !errors.Is(err, ErrReplay) && !errors.Is(err, ErrInFlight):
				t.Errorf("open: %v", err)
			}
		})
	}
	wg.Wait()
	if opened[0] != 1 || opened[1] != 1 {
		t.Fatalf("opened %v, want each layer exactly once", opened)
	}
}

func TestWrongRelay(t *testing.T) {
	// B and C share one envelope key, so only the binding to the relay key
	// keeps a layer for B from opening at C.
	b := newRelay(t, envelope.SuiteXWing, nil)
	c := newRelay(t, envelope.SuiteXWing, b.id)
	oc := c.opener(t, 5, 0)
	layer := mustSeal(t, b, 5, nil, newEnvelope(t, envelope.Bucket4K))
	if _, _, err := openStored(oc, layer); !errors.Is(err, ErrWrongRelay) {
		t.Fatalf("C opened B's layer: %v", err)
	}
	rewritten := bytes.Clone(layer)
	hc := RelayHash(c.pub)
	copy(rewritten[9:41], hc[:])
	if d, _ := Dest(rewritten); d != hc {
		t.Fatal("rewrite did not change Dest")
	}
	if _, _, err := openStored(oc, rewritten); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("rewritten layer at C: %v", err)
	}
	if _, _, err := openStored(b.opener(t, 5, 0), layer); err != nil {
		t.Fatalf("B: %v", err)
	}
}

func TestWrongEpoch(t *testing.T) {
	r := newRelay(t, envelope.SuiteX25519, nil)
	o := r.opener(t, 8, 0)
	layer := mustSeal(t, r, 7, nil, newEnvelope(t, envelope.Bucket4K))
	if _, _, err := openStored(o, layer); !errors.Is(err, ErrWrongEpoch) {
		t.Fatalf("old epoch: %v", err)
	}
	rewritten := bytes.Clone(layer)
	binary.BigEndian.PutUint32(rewritten[5:9], 8)
	if _, _, err := openStored(o, rewritten); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("epoch rewritten: %v", err)
	}
	if _, _, err := openStored(r.opener(t, 7, 0), layer); err != nil {
		t.Fatal(err)
	}
}

func TestWrongKey(t *testing.T) {
	r := newRelay(t, envelope.SuiteXWing, nil)
	other, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	o, err := NewOpener(other, r.pub, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := openStored(o, mustSeal(t, r, 1, nil, newEnvelope(t, envelope.Bucket4K))); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("wrong envelope key: %v", err)
	}
}

func TestEveryByteFlip(t *testing.T) {
	for _, s := range suites {
		t.Run(s.String(), func(t *testing.T) {
			r := newRelay(t, s, nil)
			o := r.opener(t, 3, 0)
			layer := mustSeal(t, r, 3, []byte("cap"), newEnvelope(t, envelope.Bucket4K))
			for i := range layer {
				flipped := bytes.Clone(layer)
				flipped[i] ^= 0x01
				if _, _, err := openStored(o, flipped); err == nil {
					t.Fatalf("flip at byte %d opened", i)
				}
			}
			// Failed opens are not remembered.
			if _, _, err := openStored(o, layer); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLengths(t *testing.T) {
	r := newRelay(t, envelope.SuiteX25519, nil)
	o := r.opener(t, 3, 0)
	layer := mustSeal(t, r, 3, nil, newEnvelope(t, envelope.Bucket4K))
	for n := range len(layer) {
		if _, err := Dest(layer[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("Dest of %d-byte prefix: %v", n, err)
		}
		if _, _, err := openStored(o, layer[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("Open of %d-byte prefix: %v", n, err)
		}
	}
	if _, _, err := openStored(o, append(bytes.Clone(layer), 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: %v", err)
	}
}

// sealRaw seals an arbitrary plaintext with a correct header, to reach the
// checks after decryption.
func sealRaw(t *testing.T, r relayFixture, epoch uint32, plain []byte) []byte {
	t.Helper()
	hdr := append([]byte(Magic), r.desc.EnvelopeSuite)
	hdr = binary.BigEndian.AppendUint32(hdr, epoch)
	h := RelayHash(r.pub)
	hdr = append(hdr, h[:]...)
	sealed, err := envelope.SealTo(envelope.Suite(r.desc.EnvelopeSuite), r.desc.EnvelopeKey, layerInfo(r.pub, epoch), hdr, plain)
	if err != nil {
		t.Fatal(err)
	}
	return append(hdr, sealed...)
}

func TestBadPlaintext(t *testing.T) {
	r := newRelay(t, envelope.SuiteX25519, nil)
	o := r.opener(t, 1, 0)
	env := newEnvelope(t, envelope.Bucket4K)
	plain := func(caplen byte, pad byte, env []byte) []byte {
		p := make([]byte, plainFixed)
		p[0] = caplen
		p[plainFixed-1] = pad
		return append(p, env...)
	}
	badVersion := bytes.Clone(env)
	badVersion[0] = 9
	badSuite := bytes.Clone(env)
	badSuite[1] = 9
	cases := map[string][]byte{
		"caplen over limit":      plain(MaxCapLen+1, 0, env),
		"non-zero padding":       plain(3, 1, env),
		"not an envelope":        plain(0, 0, badVersion),
		"unknown envelope suite": plain(0, 0, badSuite),
	}
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			if _, _, err := openStored(o, sealRaw(t, r, 1, p)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
	if _, _, err := openStored(o, sealRaw(t, r, 1, plain(0, 0, env))); err != nil {
		t.Fatalf("well-formed raw layer: %v", err)
	}
}

func TestSealErrors(t *testing.T) {
	r := newRelay(t, envelope.SuiteXWing, nil)
	env := newEnvelope(t, envelope.Bucket4K)
	with := func(f func(d *descriptor.Descriptor)) *descriptor.Descriptor {
		d := *r.desc
		f(&d)
		return &d
	}
	cases := []struct {
		name    string
		d       *descriptor.Descriptor
		cap     []byte
		env     []byte
		want    error
		mention string
	}{
		{"nil descriptor", nil, nil, env, ErrDescriptor, "no descriptor"},
		{"no envelope key", with(func(d *descriptor.Descriptor) { d.EnvelopeKey, d.EnvelopeSuite = nil, 0 }), nil, env, ErrDescriptor, "no envelope key"},
		{"unknown suite", with(func(d *descriptor.Descriptor) { d.EnvelopeSuite = 3 }), nil, env, ErrDescriptor, "suite 3"},
		{"suite zero with key", with(func(d *descriptor.Descriptor) { d.EnvelopeSuite = 0 }), nil, env, ErrDescriptor, "suite 0"},
		{"key of other suite", with(func(d *descriptor.Descriptor) { d.EnvelopeSuite = 2 }), nil, env, ErrDescriptor, "envelope key"},
		{"short relay key", with(func(d *descriptor.Descriptor) { d.RelayKey = d.RelayKey[:31] }), nil, env, ErrDescriptor, "relay key"},
		{"cap too long", r.desc, make([]byte, MaxCapLen+1), env, ErrMalformed, "capability"},
		{"no envelope", r.desc, nil, nil, ErrMalformed, "envelope"},
		{"truncated envelope", r.desc, nil, env[:len(env)-1], ErrMalformed, "envelope"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			layer, err := Seal(c.d, 1, c.cap, c.env)
			if err == nil || layer != nil {
				t.Fatal("sealed")
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.mention) {
				t.Fatalf("error %q, want %v mentioning %q", err, c.want, c.mention)
			}
		})
	}
}

func TestNewOpenerErrors(t *testing.T) {
	r := newRelay(t, envelope.SuiteX25519, nil)
	if _, err := NewOpener(nil, r.pub, 1, 0); err == nil {
		t.Fatal("nil identity accepted")
	}
	if _, err := NewOpener(r.id, r.pub[:16], 1, 0); err == nil {
		t.Fatal("short relay key accepted")
	}
}

// TestErrorsHideMailbox collects the error of every refusal path and checks
// none names the envelope's mailbox or the capability.
func TestErrorsHideMailbox(t *testing.T) {
	b := newRelay(t, envelope.SuiteX25519, nil)
	c := newRelay(t, envelope.SuiteX25519, b.id)
	env := newEnvelope(t, envelope.Bucket4K)
	mb, err := envelope.PeekMailbox(env)
	if err != nil {
		t.Fatal(err)
	}
	sendCap := bytes.Repeat([]byte{0xa5}, 32)
	layer := mustSeal(t, b, 1, sendCap, env)
	var errs []error
	add := func(_, _ []byte, err error) { errs = append(errs, err) }
	ob := b.opener(t, 1, 0)
	add(openStored(c.opener(t, 1, 0), layer))
	add(openStored(b.opener(t, 2, 0), layer))
	add(openStored(ob, layer))
	add(openStored(ob, layer))
	for i := 0; i < len(layer); i += 7 {
		f := bytes.Clone(layer)
		f[i] ^= 0x80
		add(openStored(ob, f))
	}
	add(openStored(ob, layer[:len(layer)-1]))
	_, err = Seal(b.desc, 1, make([]byte, 65), env)
	errs = append(errs, err)
	noKey := *b.desc
	noKey.EnvelopeKey, noKey.EnvelopeSuite = nil, 0
	_, err = Seal(&noKey, 1, sendCap, env)
	errs = append(errs, err)
	_, err = Seal(b.desc, 1, sendCap, env[:100])
	errs = append(errs, err)

	var secrets []string
	for _, v := range [][]byte{mb[:], sendCap} {
		secrets = append(secrets, hex.EncodeToString(v), strings.ToUpper(hex.EncodeToString(v)),
			base64.StdEncoding.EncodeToString(v), base64.URLEncoding.EncodeToString(v),
			base64.RawStdEncoding.EncodeToString(v), base64.RawURLEncoding.EncodeToString(v),
			string(v))
	}
	for i, err := range errs {
		if i == 2 {
			if err != nil {
				t.Fatalf("first open at B: %v", err)
			}
			continue
		}
		if err == nil {
			t.Fatalf("case %d: no error", i)
		}
		for _, s := range secrets {
			if strings.Contains(err.Error(), s) {
				t.Fatalf("error %q contains a mailbox id or capability", err)
			}
		}
	}
}
