package https

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/postern/postern/transport"
)

// windowClock is a test's engine clock: it stands still unless the test
// moves it on (advance), so that the DATA before an update came at once,
// or over as long as the test says.
type windowClock struct{ ns atomic.Int64 }

func (c *windowClock) now() time.Time          { return engineEpoch.Add(time.Duration(c.ns.Load())) }
func (c *windowClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// windowRelay starts a relay on the engine whose clock is c.
func windowRelay(t *testing.T, c *windowClock) (*relay, *h2Front) {
	tr := engineTransport()
	tr.frontClock = &clock{now: c.now}
	r := startRelay(t, tr, nil)
	return r, frontOf(t, r)
}

// writeForever writes to c until a write fails.
func writeForever(c transport.Conn) {
	buf := make([]byte, 16<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
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
	go writeForever(client)
	if _, err := io.ReadFull(server, make([]byte, read)); err != nil {
		t.Fatal(err)
	}
	return client, s
}

// budgetHeld fails t unless f's budget lacks exactly what s's window holds
// past the stock one.
func budgetHeld(t *testing.T, f *h2Front, s *h2Session) {
	t.Helper()
	s.mu.Lock()
	extra := s.winStream - f.stock.streamWindow
	s.mu.Unlock()
	if got, want := f.windows.available(), engineWindowBudget-extra; got != want {
		t.Errorf("budget %d while the session's window is %d past the stock one, want %d", got, extra, want)
	}
}

// waitQueued waits until n bytes are queued unread on s.
func waitQueued(t *testing.T, s *h2Session, n int64) {
	t.Helper()
	for guard := time.Now(); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		var queued int64
		for _, c := range s.queue {
			queued += int64(c.end - c.off)
		}
		s.mu.Unlock()
		if queued >= n {
			return
		}
		if time.Since(guard) > time.Minute { // a deadlock guard, not a measurement
			t.Fatalf("%d bytes queued, waiting for %d", queued, n)
		}
	}
}

// waitSpent waits until the client has used all the credit the relay's
// windows gave it and all it sent is queued unread or owed back to it
// (the window is exactly that), and returns the stream window and the
// bytes queued then. (The updates return what was read when half a
// window is owed, so a little more than half: how much depends on the
// sizes of the DATA payloads, as they came.)
func waitSpent(t *testing.T, s *h2Session) (win, queued int64) {
	t.Helper()
	for guard := time.Now(); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		win, owed, left := s.winStream, s.owedStream, s.recvStream
		queued = 0
		for _, c := range s.queue {
			queued += int64(c.end - c.off)
		}
		s.mu.Unlock()
		if left == 0 && queued+owed == win {
			return win, queued
		}
		if time.Since(guard) > time.Minute { // a deadlock guard, not a measurement
			t.Fatalf("window %d: %d bytes of credit left, %d queued, %d owed", win, left, queued, owed)
		}
	}
}

// budgetUntouched fails t unless f's window budget is whole.
func budgetUntouched(t *testing.T, f *h2Front) {
	t.Helper()
	if got := f.windows.available(); got != engineWindowBudget {
		t.Errorf("budget %d, want %d untouched", got, engineWindowBudget)
	}
}

// waitBudget waits until the front's window budget is want.
func waitBudget(t *testing.T, f *h2Front, want int64) {
	t.Helper()
	for guard := time.Now(); f.windows.available() != want; time.Sleep(time.Millisecond) {
		if time.Since(guard) > time.Minute {
			t.Fatalf("window budget %d, want %d", f.windows.available(), want)
		}
	}
	if want == f.windows.size { // all given back: by the sources that took it
		f.windows.mu.Lock()
		defer f.windows.mu.Unlock()
		if len(f.windows.held) != 0 {
			t.Fatalf("the whole budget is back, but %d source(s) still hold some", len(f.windows.held))
		}
	}
}

// TestWindowPoolShares: past half of the pool, a source takes only while
// it holds nothing or within a quarter; what it gives back lets it take
// again.
func TestWindowPoolShares(t *testing.T) {
	var p windowPool
	const mib = 1 << 20
	p.reset(20 * mib)
	a, b, c := [32]byte{1}, [32]byte{2}, [32]byte{3}
	for i, step := range []struct {
		src  [32]byte
		n    int64
		want bool
		why  string
	}{
		{a, 9 * mib, true, "11 MiB left: more than half"},
		{a, 1 * mib, true, "exactly half left: not past half"},
		{a, 2 * mib, false, "past half, and a would hold 12 MiB of a 5 MiB share"},
		{b, 3 * mib, true, "b holds nothing yet"},
		{b, 1 * mib, true, "b holds 4 MiB, within its share"},
		{b, 2 * mib, false, "b would hold more than its share"},
		{c, 6 * mib, true, "c holds nothing yet: it may take more than a quarter"},
		{c, 1, false, "the pool holds no more"},
	} {
		if got := p.take(step.src, step.n); got != step.want {
			t.Fatalf("step %d: take(%d) = %v, want %v: %s", i, step.n, got, step.want, step.why)
		}
	}
	p.give(a, 10*mib)
	if !p.take(a, 2*mib) {
		t.Fatal("a could not take after giving back")
	}
	p.give(a, 2*mib)
	p.give(b, 4*mib)
	p.give(c, 6*mib)
	if p.available() != 20*mib || len(p.held) != 0 {
		t.Fatalf("after every give: %d left, %d sources holding", p.available(), len(p.held))
	}
}

// A session whose client sends half a window at once, which the relay
// reads at once, gets engineWindow,
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
	if queued <= stock {
		t.Errorf("%d bytes queued unread: no more than the stock window", queued)
	}
	budgetHeld(t, f, s)
	client.Close()
	waitBudget(t, f, engineWindowBudget)
}

// A session whose client sent its DATA slower than engineGrowRate keeps
// the stock windows, and the budget is not touched: over seconds, and over
// hours (where the rate's arithmetic would overflow uncapped).
func TestEngineWindowStaysForSlowUpload(t *testing.T) {
	for _, gap := range []time.Duration{4 * time.Second, 5 * time.Hour, 9 * time.Hour} {
		t.Run(gap.String(), func(t *testing.T) {
			c := &windowClock{}
			r, f := windowRelay(t, c)
			stock := f.stock.streamWindow
			client, server := acceptOne(t, r)
			s := server.(*h2Session)
			go writeForever(client)
			waitQueued(t, s, stock) // the window's worth came
			c.advance(gap)          // ... over gap: at 4 s, 256 KiB/s
			const read = 768 << 10
			if _, err := io.ReadFull(server, make([]byte, read)); err != nil {
				t.Fatal(err)
			}
			if win, _ := waitSpent(t, s); win != stock {
				t.Fatalf("stream window %d, want the stock %d", win, stock)
			}
			budgetUntouched(t, f)
		})
	}
}

// A backlog that came slowly and that the relay then reads at once does
// not grow the windows: the rate is the client's, not the relay's reads.
// (The update that falls due while the backlog is read finds it slow; the
// next, due as the relay reads the backlog's last bytes and the little
// that came at once after it, finds too little come since to judge.)
func TestEngineWindowIgnoresBacklog(t *testing.T) {
	c := &windowClock{}
	r, f := windowRelay(t, c)
	stock := f.stock.streamWindow
	client, server := acceptOne(t, r)
	s := server.(*h2Session)
	if _, err := client.Write(make([]byte, stock)); err != nil { // all the credit, and no more
		t.Fatal(err)
	}
	waitQueued(t, s, stock)
	c.advance(10 * time.Second)
	if _, err := io.ReadFull(server, make([]byte, stock)); err != nil { // one update falls due
		t.Fatal(err)
	}
	const more = 64 << 10
	if _, err := client.Write(make([]byte, more)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, more)); err != nil { // and the next
		t.Fatal(err)
	}
	s.mu.Lock()
	win, owed := s.winStream, s.owedStream
	s.mu.Unlock()
	if owed >= stock/2-more {
		t.Fatalf("%d bytes owed: the second update did not fall due", owed)
	}
	if win != stock {
		t.Fatalf("stream window %d after reading a slow backlog, want the stock %d", win, stock)
	}
	budgetUntouched(t, f)
}

// A grown session whose DATA then comes slowly gives its extra window
// back, by withholding it from the updates it owes.
func TestEngineWindowShrinksWhenSlow(t *testing.T) {
	c := &windowClock{}
	r, f := windowRelay(t, c)
	const read = 768 << 10
	client, s := upload(t, r, read)
	if win, _ := waitSpent(t, s); win != engineWindow {
		t.Fatalf("stream window %d, want %d", win, engineWindow)
	}
	c.advance(10 * time.Second)
	// The next update falls due when half the grown window was read.
	if _, err := io.ReadFull(s, make([]byte, engineWindow/2)); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	win := s.winStream
	s.mu.Unlock()
	// It owed half the window (and at most a payload more) and withholds
	// all of that.
	if win > engineWindow/2 || win < engineWindow/2-16384 {
		t.Fatalf("stream window %d after a slow half window, want %d less what was read past it", win, engineWindow/2)
	}
	budgetHeld(t, f, s)
	client.Close()
	waitBudget(t, f, engineWindowBudget)
}

// With budget for one grown session, a second keeps the stock windows
// until the first ends; a third then grows.
func TestEngineWindowBudget(t *testing.T) {
	r, f := windowRelay(t, &windowClock{})
	stock := f.stock.streamWindow
	one := int64(engineWindow) - stock
	f.windows.reset(one)
	const read = 768 << 10
	first, s1 := upload(t, r, read)
	if win, _ := waitSpent(t, s1); win != engineWindow {
		t.Fatalf("first session's window %d, want %d", win, engineWindow)
	}
	_, s2 := upload(t, r, read)
	if win, _ := waitSpent(t, s2); win != stock {
		t.Fatalf("second session's window %d with the budget spent, want the stock %d", win, stock)
	}
	if s1.src == ([32]byte{}) || s1.src != s2.src {
		t.Fatalf("two sessions of one client counted as sources %x and %x", s1.src, s2.src)
	}
	first.Close()
	waitBudget(t, f, one)
	_, s3 := upload(t, r, read)
	if win, _ := waitSpent(t, s3); win != engineWindow {
		t.Fatalf("third session's window %d once the first ended, want %d", win, engineWindow)
	}
	if got := f.windows.available(); got != 0 {
		t.Errorf("budget %d, want 0", got)
	}
}

// engineOn returns a session on the engine, with the engine's clock
// standing still, whose client sent frames; readLoop reads them from the
// session's in-memory connection, whose out holds what the engine wrote.
func engineOn(t *testing.T, frames []byte) (*h2Session, *flightConn) {
	f := testFront(t)
	c := &windowClock{}
	f.now = c.now
	tc := &flightConn{step: 1 << 20}
	ff := &firstFlight{tc: tc, sendWin: h2DefaultWindow,
		peer: peerSettings{initialWindow: h2DefaultWindow, maxFrame: h2MaxFrame}}
	s := newH2Session(f, tc, 1, nil, ff)
	s.left = frames
	return s, tc
}

// windowUpdates returns the stream and increment of each WINDOW_UPDATE in
// out.
func windowUpdates(out []byte) (res [][2]uint32) {
	for _, fr := range splitFrames(out) {
		if fr[3] == frameWindowUpdate {
			res = append(res, [2]uint32{binary.BigEndian.Uint32(fr[5:9]), binary.BigEndian.Uint32(fr[9:13])})
		}
	}
	return res
}

// Padding is returned to the windows at once, but it is not DATA the
// client sent for the relay: half a window of it, at once, grows nothing.
func TestEnginePaddingDoesNotGrow(t *testing.T) {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	for range 4096 { // 1 MiB of padding, no data
		fr.WriteDataPadded(1, false, nil, make([]byte, 255))
	}
	s, tc := engineOn(t, b.Bytes())
	s.readLoop()
	noGrowth(t, s, tc.out.Bytes())
}

// noGrowth fails t unless out holds WINDOW_UPDATEs, none past the stock
// window, and s's front has its whole budget.
func noGrowth(t *testing.T, s *h2Session, out []byte) {
	t.Helper()
	ups := windowUpdates(out)
	if len(ups) == 0 {
		t.Fatal("no WINDOW_UPDATE: the DATA was not returned to the windows")
	}
	for _, u := range ups {
		if u[1] > uint32(max(s.f.stock.streamWindow, s.f.stock.connWindow)) {
			t.Fatalf("WINDOW_UPDATE %v: the windows grew", u)
		}
	}
	budgetUntouched(t, s.f)
}

// dataFrames is n DATA frames of 16 KiB on the session's stream.
func dataFrames(n int) []byte {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	for range n {
		fr.WriteData(1, false, make([]byte, 16384))
	}
	return b.Bytes()
}

// After Close (its RST_STREAM sent), DATA still in flight goes back to the
// connection's window only: no frame on the reset stream, and no growth.
func TestEngineNoStreamUpdateAfterClose(t *testing.T) {
	s, tc := engineOn(t, dataFrames(48)) // 768 KiB: more than half a window
	s.Close()
	n := tc.out.Len()
	s.readLoop()
	ups := windowUpdates(tc.out.Bytes()[n:])
	if len(ups) == 0 {
		t.Fatal("the connection's window was not returned")
	}
	for _, u := range ups {
		if u[0] != 0 {
			t.Fatalf("WINDOW_UPDATE %v on the stream Close reset", u)
		}
	}
}

// A session closed with DATA read and more queued does not grow when the
// DATA still coming is dropped and returned to the connection's window,
// although what was queued before came fast enough.
func TestEngineClosedDoesNotGrow(t *testing.T) {
	s, tc := engineOn(t, dataFrames(48)) // 768 KiB queued, at once
	s.readLoop()
	if _, err := io.ReadFull(s, make([]byte, 256<<10)); err != nil { // owed, not yet returned
		t.Fatal(err)
	}
	s.Close()
	n := tc.out.Len()
	s.left = dataFrames(16) // 256 KiB more, dropped: the connection's update falls due
	s.readLoop()
	noGrowth(t, s, tc.out.Bytes()[n:])
}

// A grown session whose client ends its stream gives the extra back at
// once, less what its unread DATA past the stock window still holds, while
// the session lives on; that comes back when the session ends.
func TestEngineWindowBackAtEndOfStream(t *testing.T) {
	r, f := windowRelay(t, &windowClock{})
	stock := f.stock.streamWindow
	client, server := acceptOne(t, r)
	if _, err := client.Write(make([]byte, stock)); err != nil { // the stock credit
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 768<<10)); err != nil { // grows
		t.Fatal(err)
	}
	s := server.(*h2Session)
	s.mu.Lock()
	win := s.winStream
	s.mu.Unlock()
	if win != engineWindow {
		t.Fatalf("stream window %d, want %d", win, engineWindow)
	}
	if _, err := client.Write(make([]byte, 1<<20)); err != nil { // within the grown credit
		t.Fatal(err)
	}
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var queued int64
	for guard := time.Now(); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		eof := s.rEOF
		queued = 0
		for _, c := range s.queue {
			queued += int64(c.end - c.off)
		}
		s.mu.Unlock()
		if eof {
			break
		}
		if time.Since(guard) > time.Minute { // a deadlock guard
			t.Fatal("the end of the stream did not come")
		}
	}
	if queued <= stock {
		t.Fatalf("%d bytes queued at the end of the stream: the test needs more than the stock window", queued)
	}
	if got, want := f.windows.available(), engineWindowBudget-(queued-stock); got != want {
		t.Fatalf("budget %d at the end of the stream with %d bytes unread, want %d", got, queued, want)
	}
	// The session is still there: the relay's side can still write.
	if _, err := server.Write([]byte("x")); err != nil {
		t.Fatalf("the session ended: %v", err)
	}
	if _, err := io.ReadFull(client, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	server.Close()
	waitBudget(t, f, engineWindowBudget)
}

// A session refused (the relay at its session cap answers with its cover
// site) fails at Dial with ClassAuth also when early data went with the
// request: the relay's answer, and the stream's reset behind it, come
// after the early write, never between the headers and it.
func TestEarlyDataRefusedIsAuth(t *testing.T) {
	for _, stock := range []bool{false, true} {
		t.Run(map[bool]string{false: "engine", true: "stockh2"}[stock], func(t *testing.T) {
			tr := &Transport{stockH2: stock, MaxSessions: 1}
			if !stock {
				tr = engineTransport()
				tr.MaxSessions = 1
			}
			r := startRelay(t, tr, nil)
			acceptOne(t, r) // the one session the cap allows
			for i := range 50 {
				ctx, cancel := context.WithTimeout(transport.WithEarlyData(context.Background(), []byte("early")), 20*time.Second)
				c, err := (&Transport{}).Dial(ctx, r.ep)
				cancel()
				if c != nil {
					c.Close()
					t.Fatalf("dial %d: a session past the cap", i)
				}
				if transport.ClassOf(err) != transport.ClassAuth {
					t.Fatalf("dial %d: %v (class %v), want ClassAuth", i, err, transport.ClassOf(err))
				}
			}
		})
	}
}
