package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/censortest"
)

// TestDrainPartsKeptAcrossRuns: an unfinished message's 64 KiB fragment
// waits on the relay, behind a censor that freezes flows at 16 KiB. A
// DrainParts with a HeldStore takes it in parts and keeps it; a new inbox
// (a new `recv`) with the same store starts out holding it and pages past
// it, where a new inbox without one fetches it whole again, part by part
// (the baseline, same run). When the rest of the message comes, a third
// new inbox fetches only the rest, takes the message, and acks the kept
// fragment too: nothing is left on the relay or in the store. Until
// 2026-12-06 every run of `recv` fetched the held fragments again.
func TestDrainPartsKeptAcrossRuns(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	msg, envs := w.unfinished(t, 100<<10)
	w.mb.SetRule(censortest.FreezeAfter(16 << 10))
	keep := client.HeldFile(filepath.Join(t.TempDir(), "held", "box"))
	drain := func(keep client.HeldStore, what string) (n int, sessions int64, got [][]byte, in *client.Inbox) {
		t.Helper()
		in = w.inbox(t, &got)
		w.sessions.Store(0)
		n, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{PerSession: 12 << 10, Keep: keep})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return n, w.sessions.Load(), got, in
	}
	if n, _, got, in := drain(keep, "the first run"); n != 1 || len(got) != 0 || in.HeldForTest() != 1 {
		t.Fatalf("the first run put together %d envelopes, took %d messages, holds %d; want the fragment held", n, len(got), in.HeldForTest())
	}
	if ds, err := keep.Load(); err != nil || len(ds) != 1 || !bytes.Equal(ds[0].Envelope, envs[0]) {
		t.Fatalf("kept after the first run: %d envelopes, %v; want the fragment", len(ds), err)
	}
	n, kept, got, in := drain(keep, "the second run")
	if n != 0 || len(got) != 0 || in.HeldForTest() != 1 {
		t.Fatalf("the second run put together %d envelopes (the fragment again?), took %d messages, holds %d", n, len(got), in.HeldForTest())
	}
	n, again, _, _ := drain(nil, "a run that keeps nothing")
	if n != 1 {
		t.Fatalf("a run that keeps nothing put together %d envelopes, want the fragment (test setup)", n)
	}
	t.Logf("sessions: %d starting out with the fragment kept, %d without", kept, again)
	// Kept, the one session asks which envelope comes next and pages
	// past it, then finds nothing more (one more if a session is cut
	// on a loaded machine).
	if kept > 2 || kept >= again {
		t.Fatalf("%d sessions with the fragment kept, %d without: it was fetched again", kept, again)
	}

	for _, env := range envs[1:] {
		if _, err := w.owner.Send(ctx, env, nil); err != nil {
			t.Fatal(err)
		}
	}
	n, _, got, in = drain(keep, "the run after the rest came")
	if n != len(envs)-1 || len(got) != 1 || !bytes.Equal(got[0], msg) || in.HeldForTest() != 0 {
		t.Fatalf("after the rest came: put together %d envelopes, took %d messages, holds %d; want %d, the message", n, len(got), in.HeldForTest(), len(envs)-1)
	}
	if left := w.waiting(t); left != 0 {
		t.Fatalf("%d envelopes left on the relay after the message was taken", left)
	}
	if ds, err := keep.Load(); err != nil || len(ds) != 0 {
		t.Fatalf("kept after the message was taken: %d envelopes, %v", len(ds), err)
	}
	if _, err := os.Stat(string(keep)); !os.IsNotExist(err) {
		t.Fatalf("the store's file is still there with nothing kept: %v", err)
	}
}

// TestKeptFragmentCompletesMessage: the inbox holds one fragment of a
// message (an earlier session of this run took it) and the store kept
// the other: starting out, DrainParts puts the message together, hands
// it over once, and acks both on its first session, which then finds
// nothing more; without that ack it would fetch the kept fragment from
// the relay, part by part, only to ack it.
func TestKeptFragmentCompletesMessage(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	msg, envs := w.unfinished(t, 100<<10)
	if len(envs) != 2 {
		t.Fatalf("%d envelopes, want 2 (test setup)", len(envs))
	}
	if _, err := w.owner.Send(ctx, envs[1], nil); err != nil {
		t.Fatal(err)
	}
	ds := w.fetchAll(t, 2)
	keep := keptFile(t, t.TempDir(), ds[:1])
	var got [][]byte
	in := w.inbox(t, &got)
	if refs, err := in.Handle(ds[1]); err != nil || len(refs) != 0 || in.HeldForTest() != 1 {
		t.Fatalf("the second fragment: %d refs to ack, %v, holds %d", len(refs), err, in.HeldForTest())
	}
	w.mb.SetRule(censortest.FreezeAfter(16 << 10))
	n, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{PerSession: 12 << 10, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !bytes.Equal(got[0], msg) || n != 0 {
		t.Fatalf("took %d messages, put together %d envelopes; want the message, and nothing fetched", len(got), n)
	}
	if left := w.waiting(t); left != 0 {
		t.Fatalf("%d envelopes left on the relay", left)
	}
	if s := w.sessions.Load(); s != 1 {
		t.Fatalf("%d sessions, want 1", s)
	}
}

// TestHeldFile: a HeldFile keeps what it was given, takes nothing cut
// short, changed, or not an envelope's size, and is removed when given
// nothing.
func TestHeldFile(t *testing.T) {
	f := client.HeldFile(filepath.Join(t.TempDir(), "dir", "held"))
	if ds, err := f.Load(); err != nil || len(ds) != 0 {
		t.Fatalf("a missing file: %d, %v", len(ds), err)
	}
	want := []client.Delivery{
		{Seq: 7, Ref: client.Ref{1}, Envelope: bytes.Repeat([]byte{1}, envelope.Bucket4K)},
		{Seq: 1 << 62, Ref: client.Ref{2, 3}, Envelope: bytes.Repeat([]byte{2}, envelope.Bucket64K)},
	}
	if err := f.Save(want); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(string(f)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the file: %v, %v", fi, err)
	}
	got, err := f.Load()
	if err != nil || len(got) != len(want) {
		t.Fatalf("loaded %d, %v", len(got), err)
	}
	for i := range want {
		if got[i].Seq != want[i].Seq || got[i].Ref != want[i].Ref || !bytes.Equal(got[i].Envelope, want[i].Envelope) {
			t.Fatalf("envelope %d loaded differs", i)
		}
	}
	data, err := os.ReadFile(string(f))
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{
		data[:len(data)-1],                   // cut short
		append(bytes.Clone(data), 0),         // longer
		flip(data, len(data)/2),              // an envelope's byte changed
		flip(data, 20),                       // a seq's
		flip(data, len(data)-1),              // the checksum's
		[]byte("postern held v1\n"),          // no checksum
		flip([]byte("postern held v1\n"), 0), // not the magic
	} {
		if _, err := client.ParseHeld(bad); err == nil {
			t.Fatalf("a damaged file of %d bytes parsed", len(bad))
		}
	}
	if _, err := client.AppendHeld(nil, []client.Delivery{{Envelope: make([]byte, 100)}}); err == nil {
		t.Fatal("an envelope of 100 bytes was written")
	}
	if err := f.Save(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(string(f)); !os.IsNotExist(err) {
		t.Fatalf("the file is still there with nothing kept: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 1
	return b
}

func FuzzParseHeld(f *testing.F) {
	one, err := client.AppendHeld(nil, []client.Delivery{{Seq: 3, Ref: client.Ref{9}, Envelope: make([]byte, envelope.Bucket4K)}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(one)
	none, _ := client.AppendHeld(nil, nil)
	f.Add(none)
	f.Add([]byte("postern held v1\n"))
	// Each input is tried as a file and as the body of one (with the
	// magic before it and its checksum after), so that the parser past
	// the checksum is fuzzed too.
	f.Fuzz(func(t *testing.T, b []byte) {
		body := append([]byte("postern held v1\n"), b...)
		sum := sha256.Sum256(body)
		for _, data := range [][]byte{b, append(body, sum[:]...)} {
			ds, err := client.ParseHeld(data)
			if err != nil {
				continue
			}
			back, err := client.AppendHeld(nil, ds)
			if err != nil || !bytes.Equal(back, data) {
				t.Fatalf("held envelopes do not re-encode: %v", err)
			}
		}
	})
}

// TestKeptWithinKeepHeld: a drain takes a message whose first fragment it
// held for a while, then holds the only fragment of each of two
// unfinished ones; with room for 100 KiB it keeps the first of those
// (the taken message's fragment no longer counts), not the second.
func TestKeptWithinKeepHeld(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	w.stored(t, 100<<10)
	_, first := w.unfinished(t, 100<<10)
	w.unfinished(t, 100<<10)
	keep := client.HeldFile(filepath.Join(t.TempDir(), "box"))
	var got [][]byte
	in := w.keepingInbox(t, 100<<10, &got)
	if _, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{Keep: keep}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || in.HeldForTest() != 2 {
		t.Fatalf("took %d messages, holds %d; want 1 and 2 (test setup)", len(got), in.HeldForTest())
	}
	ds, err := keep.Load()
	if err != nil || len(ds) != 1 || !bytes.Equal(ds[0].Envelope, first[0]) {
		t.Fatalf("kept %d envelopes (%v), want the first unfinished message's fragment", len(ds), err)
	}
}

// TestKeptThatDoesNotOpenIsNotAcked: a kept envelope that does not open
// (damaged where the checksum could not tell, or not for this identity)
// is skipped, and the envelope of its ref on the relay stays there: the
// kept copy is all it is.
func TestKeptThatDoesNotOpenIsNotAcked(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	w.unfinished(t, 100<<10)
	ds := w.fetchAll(t, 1)
	bad := ds[0]
	bad.Envelope = make([]byte, len(ds[0].Envelope))
	rand.Read(bad.Envelope)
	keep := keptFile(t, t.TempDir(), []client.Delivery{bad})
	var got [][]byte
	in := w.inbox(t, &got)
	if _, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{Keep: keep}); err != nil {
		t.Fatal(err)
	}
	if left := w.waiting(t); left != 1 || in.HeldForTest() != 1 {
		t.Fatalf("%d envelopes left on the relay, %d held; want the fragment, fetched from the relay", left, in.HeldForTest())
	}
}

// TestRestoreRecordsTaken: a kept fragment completes a message with one
// the inbox holds, and the drain then cannot reach the relay: the
// message was handed over, and is recorded as taken, so the next run
// acks its envelopes and does not hand it over again.
func TestRestoreRecordsTaken(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	_, envs := w.unfinished(t, 100<<10)
	if _, err := w.owner.Send(ctx, envs[1], nil); err != nil {
		t.Fatal(err)
	}
	ds := w.fetchAll(t, 2)
	dir := t.TempDir()
	keep := keptFile(t, dir, ds[:1])
	taken := 0
	inbox := func() *client.Inbox {
		return w.replayInbox(t, dir, func(client.Message) error { taken++; return nil })
	}
	in := inbox()
	if _, err := in.Handle(ds[1]); err != nil {
		t.Fatal(err)
	}
	down := func(context.Context) (*client.Client, error) { return nil, errors.New("no route") }
	if _, err := in.DrainParts(ctx, down, w.box.Owner, w.box.ID, client.PartsConfig{Keep: keep}); err == nil || taken != 1 {
		t.Fatalf("with the relay out of reach: %v, the message handed over %d times; want an error, once", err, taken)
	}
	if _, err := inbox().DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{Keep: keep}); err != nil {
		t.Fatal(err)
	}
	if left := w.waiting(t); taken != 1 || left != 0 {
		t.Fatalf("the next run: the message handed over %d times in all, %d envelopes left on the relay", taken, left)
	}
}

// TestRestoreRecordsTakenBeforeRefusal: two kept fragments each complete
// a message with one the inbox holds; the application takes the first
// and refuses the second. The first is recorded as taken all the same,
// so the next run hands over the second only (a reviewer's find: the
// first was handed over again).
func TestRestoreRecordsTakenBeforeRefusal(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	_, a := w.unfinished(t, 100<<10)
	_, b := w.unfinished(t, 100<<10)
	for _, env := range [][]byte{a[1], b[1]} {
		if _, err := w.owner.Send(ctx, env, nil); err != nil {
			t.Fatal(err)
		}
	}
	ds := w.fetchAll(t, 4)
	dir := t.TempDir()
	keep := keptFile(t, dir, ds[:2])
	taken, refuse := 0, true
	inbox := func() *client.Inbox {
		return w.replayInbox(t, dir, func(client.Message) error {
			if refuse && taken == 1 {
				return errors.New("disk full")
			}
			taken++
			return nil
		})
	}
	in := inbox()
	for _, d := range ds[2:] {
		if _, err := in.Handle(d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{Keep: keep}); err == nil || taken != 1 {
		t.Fatalf("the first run: %v, %d messages taken; want the refusal, after one", err, taken)
	}
	refuse = false
	if _, err := inbox().DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{}); err != nil {
		t.Fatal(err)
	}
	if left := w.waiting(t); taken != 2 || left != 0 {
		t.Fatalf("%d messages handed over in all, %d envelopes left; want 2 and none", taken, left)
	}
}

// fetchAll returns what the mailbox holds, straight from the relay, and
// fails the test unless that is n envelopes.
func (w *partsWorld) fetchAll(t *testing.T, n int) []client.Delivery {
	t.Helper()
	ds, err := w.owner.Fetch(context.Background(), w.box.Owner, w.box.ID, 0)
	if err != nil || len(ds) != n {
		t.Fatalf("fetch: %d envelopes, %v; want %d", len(ds), err, n)
	}
	return ds
}

// keptFile returns a HeldFile in dir that keeps ds.
func keptFile(t *testing.T, dir string, ds []client.Delivery) client.HeldFile {
	t.Helper()
	keep := client.HeldFile(filepath.Join(dir, "box"))
	if err := keep.Save(ds); err != nil {
		t.Fatal(err)
	}
	return keep
}

// replayInbox returns an inbox of the mailbox whose replay file is in dir
// (the same for every inbox made with dir: as runs of recv), handing
// messages to take.
func (w *partsWorld) replayInbox(t *testing.T, dir string, take func(client.Message) error) *client.Inbox {
	t.Helper()
	in, err := client.NewInbox(client.InboxConfig{Identity: w.box.Ident, Replay: client.ReplayFile(filepath.Join(dir, "replay")), Take: take})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// TestKeptFromWholeSession: a whole session (Drain) brings an unfinished
// message's fragment, and a DrainParts after it pages past it and keeps
// it, so the next run starts out holding it: the inbox keeps copies of
// what it holds whatever brought it. Until a reviewer's find only what a
// DrainParts took in parts was kept.
func TestKeptFromWholeSession(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	w.unfinished(t, 100<<10)
	keep := client.HeldFile(filepath.Join(t.TempDir(), "box"))
	var got [][]byte
	in := w.keepingInbox(t, client.MaxKeptBytes, &got)
	w.drainWhole(t, ctx, in, 1)
	if n, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{Keep: keep}); err != nil || n != 0 {
		t.Fatalf("DrainParts after the whole session: %v, put together %d envelopes", err, n)
	}
	if ds, err := keep.Load(); err != nil || len(ds) != 1 {
		t.Fatalf("kept %d envelopes (%v), want the fragment", len(ds), err)
	}
}

// TestResetForgetsKept: Reset (before an inbox takes another relay's
// deliveries, or a session from the mailbox's start) forgets the copies
// of what it held with what it held: a drain after it keeps nothing of
// them (a reviewer's test: without it, one relay's envelopes would be
// saved in another's file).
func TestResetForgetsKept(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	w.unfinished(t, 100<<10)
	var got [][]byte
	in := w.keepingInbox(t, client.MaxKeptBytes, &got)
	w.drainWhole(t, ctx, in, 1)
	// Another device takes the message, and the inbox goes on elsewhere.
	if _, err := w.owner.Ack(ctx, w.box.Owner, w.box.ID, w.fetchAll(t, 1)[0].Ref); err != nil {
		t.Fatal(err)
	}
	in.Reset()
	keep := client.HeldFile(filepath.Join(t.TempDir(), "box"))
	if _, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, client.PartsConfig{Keep: keep}); err != nil {
		t.Fatal(err)
	}
	if ds, err := keep.Load(); err != nil || len(ds) != 0 {
		t.Fatalf("kept %d envelopes (%v) after Reset, want none", len(ds), err)
	}
}

// keepingInbox returns an inbox of the mailbox that keeps copies of up to
// keepHeld bytes of what it holds, and appends the messages it takes to
// got.
func (w *partsWorld) keepingInbox(t *testing.T, keepHeld int, got *[][]byte) *client.Inbox {
	t.Helper()
	in, err := client.NewInbox(client.InboxConfig{Identity: w.box.Ident, KeepHeld: keepHeld,
		Take: func(m client.Message) error { *got = append(*got, m.Payload); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// drainWhole drains the mailbox into in in one session (Drain), and fails
// the test unless in then holds held envelopes.
func (w *partsWorld) drainWhole(t *testing.T, ctx context.Context, in *client.Inbox, held int) {
	t.Helper()
	c, err := w.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = in.Drain(ctx, c, w.box.Owner, w.box.ID)
	c.Close()
	if err != nil || in.HeldForTest() != held {
		t.Fatalf("Drain: %v, holds %d; want %d", err, in.HeldForTest(), held)
	}
}

// TestAddHeldMerges: AddHeld keeps what the file kept beside what the
// inbox holds, once each, in sequence order; SaveHeld replaces it.
func TestAddHeldMerges(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	w.unfinished(t, 100<<10)
	w.unfinished(t, 100<<10)
	ds := w.fetchAll(t, 2)
	other := ds[1]
	other.Ref[0]++ // an envelope the inbox will not hold
	other.Seq = 0
	keep := keptFile(t, t.TempDir(), []client.Delivery{ds[0], other})
	var got [][]byte
	in := w.keepingInbox(t, client.MaxKeptBytes, &got)
	w.drainWhole(t, ctx, in, 2)
	if err := in.AddHeld(keep); err != nil {
		t.Fatal(err)
	}
	kept, err := keep.Load()
	if err != nil || len(kept) != 3 || kept[0].Ref != other.Ref || kept[1].Ref != ds[0].Ref || kept[2].Ref != ds[1].Ref {
		t.Fatalf("after AddHeld: %d envelopes, %v; want the file's other one, then the two held", len(kept), err)
	}
	if err := in.SaveHeld(keep); err != nil {
		t.Fatal(err)
	}
	if kept, err := keep.Load(); err != nil || len(kept) != 2 {
		t.Fatalf("after SaveHeld: %d envelopes, %v; want the two held", len(kept), err)
	}
}
