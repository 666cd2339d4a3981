package h3

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/censortest"
)

// pathRTT is the round trip of the middlebox the window tests upload
// through: quic-go grows a window only when the application reads it
// faster than a few round trips, which on bare loopback it rarely does.
const pathRTT = 20 * time.Millisecond

// Each client of uploadThenStall writes chunks of chunk bytes, most bytes
// at the most.
const chunk, most = 16 << 10, 256 << 20

// stall is the outcome of uploadThenStall.
type stall struct {
	read, written int64 // by the relay's sessions, by the clients
	held          int64 // the most of the sessions' window pool held
	heap          int64 // the process's HeapInuse while stalled, after a GC
	windows       *windowBudget
}

// uploadThenStall uploads on n sessions, each on a QUIC connection of its
// own, through a middlebox with pathRTT, to a relay whose sessions read
// promptly until enough(read) and then stop reading, as a relay whose
// writes the client blocks does; one session at a time. It returns once
// every client's writes stayed blocked for a second, with its connection
// closed.
func uploadThenStall(tb testing.TB, tr *Transport, n int, enough func(read int64, w *windowBudget) bool) stall {
	r := startRelay(tb, tr, func(cfg *transport.ListenConfig) { cfg.MaxSessionsPerSource = 2 * n })
	mb := censortest.NewUDPMiddlebox(tb, r.ln.Addr().String())
	mb.SetRule(censortest.Latency(pathRTT))
	ep := r.ep
	ep.Addr = mb.Addr()
	windows := r.ln.(*listener).windows
	out := stall{windows: windows}

	stopped := make(chan int64, n)
	release := make(chan struct{})
	defer close(release)
	go func() {
		for range n {
			s, err := r.ln.Accept(tb.Context())
			if err != nil {
				tb.Error(err)
				stopped <- 0
				continue
			}
			go func() {
				defer s.Close()
				buf := make([]byte, 64<<10)
				var total int64
				for !enough(total, windows) {
					if total >= most/2 { // the client writes most at the most
						tb.Errorf("relay read %d bytes and still not enough (a window that never grew?)", total)
						break
					}
					n, err := s.Read(buf)
					total += int64(n)
					if err != nil {
						tb.Errorf("relay read after %d bytes: %v", total, err)
						break
					}
				}
				stopped <- total
				<-release // stop reading, keep the session open
			}()
		}
	}()

	// One session at a time grows its windows and stalls, as one source
	// would pin them: the next starts once the last one's relay side
	// stopped reading.
	var wrote atomic.Int64
	var conns []transport.Conn
	for range n {
		c := dialT(tb, ep)
		conns = append(conns, c)
		go func() {
			p := pattern(chunk, 7)
			for range most / chunk {
				n, err := c.Write(p)
				wrote.Add(int64(n))
				if err != nil {
					return // closed at the end
				}
			}
		}()
		out.read += <-stopped
	}
	// The clients' writes block once they have used the windows up: wait
	// until a second passes without a byte more (bounded: every second
	// either ends the wait or takes another chunk of the uploads).
	out.written = wrote.Load()
	for range n * most / chunk {
		if h, _, _ := windows.inUse(); h > out.held {
			out.held = h
		}
		time.Sleep(time.Second)
		now := wrote.Load()
		if now == out.written {
			break
		}
		out.written = now
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out.heap = int64(ms.HeapInuse)
	for _, c := range conns {
		c.Close()
	}
	return out
}

// TestWindowBudgetBoundsUnreadBytes: what a client can send ahead of a
// relay that stopped reading stays within the connection's initial
// window plus the listener's window budget, and the budget comes back
// when the connection ends. On the tree before the budget (quic-go's
// auto-tuning unbounded) the client got 4–6 MiB ahead here.
func TestWindowBudgetBoundsUnreadBytes(t *testing.T) {
	const (
		budget  = 1 << 20
		initial = 768 << 10 // quic-go's initial connection window
		slack   = 64 << 10  // what http3 reads ahead of the session
	)
	tr := &Transport{WindowBudget: budget}
	// The session reads until the budget lent its connection some window
	// (and at least 4 MiB came) before it stops.
	st := uploadThenStall(t, tr, 1, func(read int64, w *windowBudget) bool {
		used, _, _ := w.inUse()
		return used > 0 && read >= 4<<20
	})
	read, written, held, w := st.read, st.written, st.held, st.windows
	t.Logf("relay read %d B, client wrote %d B: %d B unread; budget held %d B", read, written, written-read, held)
	if held <= 0 || held > budget {
		t.Errorf("budget held %d B, want some and at most %d", held, budget)
	}
	if unread := written - read; unread > initial+budget+slack {
		t.Errorf("client got %d B ahead of the relay's reads, want at most the initial window plus the budget (%d B)", unread, initial+budget)
	}
	// The client closed its connection: the relay's end of it closes and
	// gives the budget back.
	waitFor(t, "the budget back after the connection closed", func() bool {
		used, _, conns := w.inUse()
		left := w.sessionLeft()
		return used == 0 && conns == 0 && left == budget
	})
}

// BenchmarkStalledUploads: sessions (POSTERN_STALL_SESSIONS, default 16),
// each on a QUIC connection of its own, upload through a middlebox with
// pathRTT, one after the other; each relay session reads 16 MiB promptly
// (quic-go's auto-tuning grows its windows meanwhile) and then stops. It
// reports what the clients got ahead of the relay's reads in all, and the
// process's live heap then (relay and clients; the clients hold little
// once their data is acknowledged), with quic-go's auto-tuning unbounded
// ("stock", as before the budget) and with the listener's budget
// (DefaultWindowBudget).
func BenchmarkStalledUploads(b *testing.B) {
	n := envCount("POSTERN_STALL_SESSIONS", 16)
	for _, bc := range []struct {
		name   string
		budget int64
	}{{"stock", 1 << 50}, {"budget", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			var st stall
			for b.Loop() {
				runtime.GC()
				st = uploadThenStall(b, &Transport{WindowBudget: bc.budget}, n, func(read int64, _ *windowBudget) bool {
					return read >= 16<<20
				})
			}
			b.ReportMetric(float64(st.written-st.read)/(1<<20), "unread-MiB")
			b.ReportMetric(float64(st.held)/(1<<20), "budget-MiB")
			b.ReportMetric(float64(st.heap)/(1<<20), "heap-MiB")
		})
	}
}

// TestCoverRequestsTakeNoSessionWindow: a client with no session that
// sends request bodies to the cover site grows its connection's window
// (quic-go counts a cancelled stream's unread body as read), but from the
// cover's pool: the sessions' pool stays whole. Drawing on one pool, such
// connections took 2.25 MiB each from the sessions (a reviewer's probe).
func TestCoverRequestsTakeNoSessionWindow(t *testing.T) {
	r := startRelay(t, nil, nil)
	mb := censortest.NewUDPMiddlebox(t, r.ln.Addr().String())
	mb.SetRule(censortest.Latency(pathRTT))
	w := r.ln.(*listener).windows
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close() // quic.Transport.Close leaves it
	qt := &quic.Transport{Conn: udp}
	defer qt.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	qc, err := plainDial(ctx, qt, mb.Addr(), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	cc := (&http3.Transport{}).NewClientConn(qc)
	body := bytes.Repeat([]byte{'x'}, 4<<20)
	var session, cover int64
	for range 32 { // bounded: until the window grew, 128 MiB at most
		rctx, rcancel := context.WithTimeout(t.Context(), 20*time.Second) // deadlock guard
		req, _ := http.NewRequestWithContext(rctx, "POST", "https://"+testSNI+"/", bytes.NewReader(body))
		res, err := cc.RoundTrip(req)
		if err != nil {
			rcancel()
			t.Fatalf("cover request: %v", err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		rcancel()
		if session, cover, _ = w.inUse(); session+cover > 0 {
			break
		}
	}
	left := w.sessionLeft()
	t.Logf("cover's pool lent %d B, sessions' pool %d B", cover, session)
	if session != 0 || left != DefaultWindowBudget {
		t.Fatalf("cover requests took %d B of the sessions' pool (%d B left)", session, left)
	}
	if cover == 0 {
		t.Fatal("the connection's window never grew: the test cannot tell the pools apart")
	}
}

// TestWindowShareBySource: past half of a pool, a source takes only
// while it holds nothing or within a quarter of it, counted over all its
// connections; other sources still take; what a source's connections held comes back when
// they end. The connections here are client ends dialled to two relays,
// and the source is the remote address, so each relay stands for one
// source.
func TestWindowShareBySource(t *testing.T) {
	const n = 4 << 20
	a, b := startRelay(t, nil, nil), startRelay(t, nil, nil)
	dial := func(addr string) *quic.Conn {
		t.Helper()
		qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), addr, &quic.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return qc
	}
	c := startRelay(t, nil, nil)
	a1, a2, b1, c1 := dial(a.ep.Addr), dial(a.ep.Addr), dial(b.ep.Addr), dial(c.ep.Addr)
	w := newWindowBudget(n, func(c *quic.Conn) (k [16]byte) { copy(k[:], c.RemoteAddr().String()); return k })
	for i, c := range []struct {
		conn  *quic.Conn
		delta uint64
		want  bool
		why   string
	}{
		{a2, 1 << 10, true, "the pool is whole"},
		{a1, 3 << 19, true, "half of the pool is left after it"},
		{a2, 3 << 18, false, "past half, and a's connections would hold 2.25 MiB of a 1 MiB share"},
		{b1, 3 << 18, true, "past half, and b holds 0.75 MiB of its 1 MiB share"},
		{b1, 1 << 19, false, "b would hold 1.25 MiB"},
		{b1, 1 << 18, true, "b holds its share, 1 MiB"},
		{c1, 5 << 18, true, "c holds nothing yet: it may take more than a quarter"},
		{c1, 1, false, "c holds more than its share"},
	} {
		if got := w.allow(c.conn, c.delta); got != c.want {
			t.Fatalf("step %d: allow(%d) = %v, want %v: %s", i, c.delta, got, c.want, c.why)
		}
	}
	// The sessions' pool is shared out apart from the cover's: exactly
	// half left is not past half; c, which holds more than its share of
	// the cover's pool, holds nothing of the sessions'.
	w.markSession(b1)
	w.markSession(c1)
	if !w.allow(b1, 1<<10) || !w.allow(b1, 2<<20-1<<10) || w.allow(b1, 1) || !w.allow(c1, 3<<19) {
		t.Fatal("the sessions' pool did not share as the cover's does")
	}
	if _, cover, _ := w.inUse(); cover != 1<<10+3<<19+1<<20+5<<18 {
		t.Fatalf("the cover's pool holds %d, want %d", cover, 1<<10+3<<19+1<<20+5<<18)
	}
	// a1 ends: what it held comes back, to the pool and to a's count, and
	// a takes again on a2 (which keeps a counted).
	a2held := func() int64 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.sources[w.source(a2)].cover
	}
	a1.CloseWithError(0, "")
	waitFor(t, "a1's window back", func() bool { _, cover, _ := w.inUse(); return cover == 1<<20+5<<18+1<<10 })
	if got := a2held(); got != 1<<10 {
		t.Fatalf("a holds %d of the cover's pool after a1 ended, want a2's 1 KiB", got)
	}
	if !w.allow(a2, 3<<18) {
		t.Fatal("a could not take once its first connection gave its window back")
	}
	a2.CloseWithError(0, "")
	b1.CloseWithError(0, "")
	c1.CloseWithError(0, "")
	waitFor(t, "every window back", func() bool {
		s, c, conns := w.inUse()
		w.mu.Lock()
		defer w.mu.Unlock()
		return s == 0 && c == 0 && conns == 0 && len(w.sources) == 0 && w.session == n && w.cover == n
	})
}

// TestWindowSourcesWired: the listener's window pools count a connection
// under the source its per-source limits counted its handshake as.
func TestWindowSourcesWired(t *testing.T) {
	r := startRelay(t, nil, nil)
	l := r.ln.(*listener)
	c := dialT(t, r.ep) // a session: its connection draws on the sessions' pool
	defer c.Close()
	want := l.conns.source(net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:1")))
	waitFor(t, "the session's connection in the window account", func() bool {
		l.windows.mu.Lock()
		defer l.windows.mu.Unlock()
		return len(l.windows.sources) == 1
	})
	l.windows.mu.Lock()
	defer l.windows.mu.Unlock()
	for k := range l.windows.sources {
		if k != want {
			t.Fatalf("window source %x, the limits' source of 127.0.0.1 %x", k, want)
		}
	}
}
