package client

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/postern/postern/envelope"
)

// countingReplay is a ReplayFile that counts its Appends and Saves.
type countingReplay struct {
	ReplayFile
	appends, saves int
}

func (c *countingReplay) Append(ids [][envelope.IDSize]byte) error {
	c.appends++
	return c.ReplayFile.Append(ids)
}

func (c *countingReplay) Save(ids [][envelope.IDSize]byte) error {
	c.saves++
	return c.ReplayFile.Save(ids)
}

// TestReplayLogAppends: a replay log records what each save adds by
// appending it, and rewrites the file with the ids it keeps only once the
// file would hold more than twice as many, so a save costs what it adds
// (it rewrote every id kept, 256 KiB at the default 16,384, each time).
// The file stays within twice the ids kept, and every id kept is known
// again after a reload.
func TestReplayLogAppends(t *testing.T) {
	const limit, fresh, saves = 64, 10, 40
	path := filepath.Join(t.TempDir(), "replay")
	st := &countingReplay{ReplayFile: ReplayFile(path)}
	rl, err := loadReplayLog(st, limit)
	if err != nil {
		t.Fatal(err)
	}
	all := randomIDs(fresh * saves)
	for i := range saves {
		for _, id := range all[i*fresh : (i+1)*fresh] {
			rl.add(id)
		}
		if err := rl.save(); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if n := fi.Size() / envelope.IDSize; n > 2*limit || n < int64(min((i+1)*fresh, limit)) {
			t.Fatalf("after save %d the file holds %d ids; want %d to %d", i+1, n, min((i+1)*fresh, limit), 2*limit)
		}
	}
	// 400 ids through a file of at most 128: a rewrite at least every 64
	// appended, and appends for the rest.
	if st.saves < fresh*saves/(2*limit) || st.saves > fresh*saves/limit || st.appends+st.saves != saves {
		t.Fatalf("%d appends and %d rewrites for %d saves", st.appends, st.saves, saves)
	}
	again, err := loadReplayLog(st, limit)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range all[len(all)-limit:] {
		if !again.contains(id) {
			t.Fatalf("id %x, one of the last %d added, unknown after a reload", id, limit)
		}
	}
	if err := again.save(); err != nil || st.saves+st.appends != saves {
		t.Fatal("a reload with nothing new wrote to the file")
	}
}
