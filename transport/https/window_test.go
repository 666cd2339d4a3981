package https

import (
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

// windowClock is a test's engine clock: it stands still, so that every
// half window is consumed "at once", unless step is set, when each reading
// moves it on by step, so that none is.
type windowClock struct {
	ns   atomic.Int64
	step time.Duration
}

func (c *windowClock) now() time.Time { return engineEpoch.Add(time.Duration(c.ns.Add(int64(c.step)))) }

// windowRelay starts a relay on the engine whose clock is c.
func windowRelay(t *testing.T, c *windowClock) (*relay, *h2Front) {
	tr := engineTransport()
	tr.frontClock = &clock{now: c.now}
	r := startRelay(t, tr, nil)
	return r, frontOf(t, r)
}

// upload opens a session whose client writes without end (until the
// session closes), reads read bytes of it on the relay side, which then
// stops reading, and returns the relay's end.
func upload(t *testing.T, r *relay, read int) (transport.Conn, *h2Session) {
	t.Helper()
	client, server := acceptOne(t, r)
	s, ok := server.(*h2Session)
	if !ok {
		t.Fatalf("the session is a %T, not the engine's", server)
	}
	go func() {
		buf := make([]byte, 16<<10)
		for {
			if _, err := client.Write(buf); err != nil {
				return
			}
		}
	}()
	if _, err := io.ReadFull(server, make([]byte, read)); err != nil {
		t.Fatal(err)
	}
	return client, s
}

// waitSpent waits until the client has used all the credit the relay's
// windows gave it, and returns the stream window and the bytes queued
// unread then.
func waitSpent(t *testing.T, s *h2Session) (win, queued int64) {
	t.Helper()
	for guard := time.Now(); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		win, spent := s.winStream, s.recvStream == 0
		queued = 0
		for _, c := range s.queue {
			queued += int64(c.end - c.off)
		}
		s.mu.Unlock()
		if spent {
			return win, queued
		}
		if time.Since(guard) > time.Minute { // a deadlock guard, not a measurement
			t.Fatalf("the client has not used its credit: %d bytes queued, window %d", queued, win)
		}
	}
}

// waitBudget waits until the front's window budget is want.
func waitBudget(t *testing.T, f *h2Front, want int64) {
	t.Helper()
	for guard := time.Now(); f.windowBudget.Load() != want; time.Sleep(time.Millisecond) {
		if time.Since(guard) > time.Minute {
			t.Fatalf("window budget %d, want %d", f.windowBudget.Load(), want)
		}
	}
}

// A session that consumes half its window at once gets engineWindow,
// taken from the budget and given back when it ends; the client can then
// have that much in flight, not the stock server's 1 MiB.
func TestEngineWindowGrowsForFastUpload(t *testing.T) {
	r, f := windowRelay(t, &windowClock{})
	stock := f.stock.streamWindow
	if stock >= engineWindow {
		t.Fatalf("the stock window %d is not below engineWindow", stock)
	}
	const read = 768 << 10 // half the stock window and more: one WINDOW_UPDATE
	client, s := upload(t, r, read)
	win, queued := waitSpent(t, s)
	if win != engineWindow {
		t.Fatalf("stream window %d, want %d", win, engineWindow)
	}
	// Credit given: the window, and the half of it returned by the update
	// (read-512 KiB is owed, not yet returned).
	if want := engineWindow + int64(read-(read-stock/2)) - read; queued != want {
		t.Errorf("%d bytes queued unread, want %d", queued, want)
	}
	if got, want := f.windowBudget.Load(), int64(engineWindowBudget-(engineWindow-stock)); got != want {
		t.Errorf("budget %d while the session holds its window, want %d", got, want)
	}
	client.Close()
	waitBudget(t, f, engineWindowBudget)
}

// A session that takes longer than engineGrowWithin to consume half its
// window keeps the stock windows, and the budget is not touched.
func TestEngineWindowStaysForSlowUpload(t *testing.T) {
	r, f := windowRelay(t, &windowClock{step: 2 * engineGrowWithin})
	stock := f.stock.streamWindow
	const read = 768 << 10
	_, s := upload(t, r, read)
	win, queued := waitSpent(t, s)
	if win != stock {
		t.Fatalf("stream window %d, want the stock %d", win, stock)
	}
	if want := stock + stock/2 - read; queued != want {
		t.Errorf("%d bytes queued unread, want %d", queued, want)
	}
	if got := f.windowBudget.Load(); got != engineWindowBudget {
		t.Errorf("budget %d, want %d untouched", got, engineWindowBudget)
	}
}

// With budget for one grown session, a second keeps the stock windows
// until the first ends; a third then grows.
func TestEngineWindowBudget(t *testing.T) {
	r, f := windowRelay(t, &windowClock{})
	stock := f.stock.streamWindow
	one := int64(engineWindow) - stock
	f.windowBudget.Store(one)
	const read = 768 << 10
	first, s1 := upload(t, r, read)
	if win, _ := waitSpent(t, s1); win != engineWindow {
		t.Fatalf("first session's window %d, want %d", win, engineWindow)
	}
	_, s2 := upload(t, r, read)
	if win, _ := waitSpent(t, s2); win != stock {
		t.Fatalf("second session's window %d with the budget spent, want the stock %d", win, stock)
	}
	first.Close()
	waitBudget(t, f, one)
	_, s3 := upload(t, r, read)
	if win, _ := waitSpent(t, s3); win != engineWindow {
		t.Fatalf("third session's window %d once the first ended, want %d", win, engineWindow)
	}
	if got := f.windowBudget.Load(); got != 0 {
		t.Errorf("budget %d, want 0", got)
	}
}
