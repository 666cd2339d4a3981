package main

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
)

// TestSharedReplayKeepsAppends: recv --follow on several relays keeps one
// replay file. What one inbox loaded or appended must survive another
// inbox's rewrite of the file (with the union of what each holds), or a
// message taken from the first relay, not yet acked, is taken again after
// a crash.
func TestSharedReplayKeepsAppends(t *testing.T) {
	shared := &sharedReplay{file: client.ReplayFile(filepath.Join(t.TempDir(), "id.replay")), parts: make([][][envelope.IDSize]byte, 2)}
	var a, b, c, l [envelope.IDSize]byte
	a[0], b[0], c[0], l[0] = 1, 2, 3, 4
	if err := shared.file.Save([][envelope.IDSize]byte{l}); err != nil { // an earlier run's
		t.Fatal(err)
	}
	first, second := replayPart{shared, 0}, replayPart{shared, 1}
	for _, p := range []replayPart{first, second} {
		if ids, err := p.Load(); err != nil || len(ids) != 1 {
			t.Fatalf("load: %x, %v", ids, err)
		}
	}
	if err := first.Append([][envelope.IDSize]byte{b}); err != nil {
		t.Fatal(err)
	}
	mine := [][envelope.IDSize]byte{c} // the second inbox's list, without l
	if err := second.Save(mine); err != nil {
		t.Fatal(err)
	}
	mine[0] = a // the inbox's slice is its own
	ids, err := shared.file.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range [][envelope.IDSize]byte{l, b, c} {
		if !slices.Contains(ids, id) {
			t.Fatalf("after the second inbox's save the file holds %x: %x is lost", ids, id)
		}
	}
	if err := first.Save(nil); err != nil {
		t.Fatal(err)
	}
	if ids, err = shared.file.Load(); err != nil || len(ids) != 1 || ids[0] != c {
		t.Fatalf("after the first inbox saved none: %x, %v; want the second's c alone", ids, err)
	}
}
