package client_test

import (
	"bytes"
	"context"
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
	ds, err := w.owner.Fetch(ctx, w.box.Owner, w.box.ID, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("fetch: %d, %v", len(ds), err)
	}
	keep := client.HeldFile(filepath.Join(t.TempDir(), "box"))
	if err := keep.Save(ds[:1]); err != nil {
		t.Fatal(err)
	}
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
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := client.ParseHeld(b)
		if err != nil {
			return
		}
		back, err := client.AppendHeld(nil, ds)
		if err != nil || !bytes.Equal(back, b) {
			t.Fatalf("held envelopes do not re-encode: %v", err)
		}
	})
}
