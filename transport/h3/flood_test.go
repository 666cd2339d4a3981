package h3

import (
	"bufio"
	"context"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

// One source (127.0.0.1) opens as many sessions as the listener lets it;
// a client from another source (127.0.0.3) still gets one. Before the
// per-source cap, the first source took the whole listener.
func TestOneSourceCannotLockOthersOut(t *testing.T) {
	const listenerCap, perSource = 32, 8
	r := startRelay(t, &Transport{MaxSessions: listenerCap}, func(c *transport.ListenConfig) {
		c.MaxSessionsPerSource = perSource
	})
	serveEcho(t, r.ln)
	hog := r.ep
	hog.LocalAddr = "127.0.0.1"
	opened := 0
	for range listenerCap + 1 { // bounded: the listener cap plus one
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		c, err := New().Dial(ctx, hog)
		cancel()
		if err != nil {
			if transport.ClassOf(err) != transport.ClassAuth {
				t.Fatalf("refused session: %v, want class auth (the cover site)", err)
			}
			break
		}
		t.Cleanup(func() { c.Close() })
		opened++
	}
	if opened != perSource {
		t.Fatalf("one source opened %d sessions, want its cap %d", opened, perSource)
	}
	if got := r.obs.Get(transport.OutcomeLimited); got != 1 {
		t.Errorf("Observe(limited) = %d, want 1", got)
	}
	other := r.ep
	other.LocalAddr = "127.0.0.3"
	transporttest.EchoRoundTrip(t, dialT(t, other), []byte("another source"))
}

// initial returns a 1,200-byte datagram shaped like a QUIC v1 Initial from
// a new client: long header, random 8-byte connection IDs, no token, a
// valid length, random (undecryptable) payload. quic-go must parse it as
// far as creating a connection for it.
func initial(rng *mrand.Rand) []byte {
	b := make([]byte, 1200)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	b[0] = 0xc0 | b[0]&0x0f // long header, fixed bit, type Initial
	b[1], b[2], b[3], b[4] = 0, 0, 0, 1
	b[5] = 8  // DCID length, DCID b[6:14]
	b[14] = 8 // SCID length, SCID b[15:23]
	b[23] = 0 // token length
	n := len(b) - 26
	b[24], b[25] = 0x40|byte(n>>8), byte(n) // 2-byte varint: rest of packet
	return b
}

// flood sends n Initial-shaped datagrams to addr from one socket on
// 127.0.0.1, paced a little so that loopback buffers do not simply drop
// them. It returns when all are sent or ctx ends.
func flood(ctx context.Context, addr string, n int) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	rng := mrand.New(mrand.NewPCG(1, 2))
	for i := range n {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.Write(initial(rng))
		if i%50 == 49 {
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// peakGoroutines samples the goroutine count until stop is closed.
func peakGoroutines(stop <-chan struct{}) <-chan int {
	out := make(chan int, 1)
	go func() {
		peak := 0
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, runtime.NumGoroutine())
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// A flood of Initials from one (spoofable) address creates at most the
// Retry threshold of connections, not one per datagram; a real client
// still connects.
func TestInitialFloodBounded(t *testing.T) {
	r := startRelay(t, nil, nil)
	serveEcho(t, r.ln)
	runtime.GC()
	base := runtime.NumGoroutine()
	stop := make(chan struct{})
	peak := peakGoroutines(stop)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	const datagrams = 5000
	if err := flood(ctx, r.ep.Addr, datagrams); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the listener drain its socket; sampling only
	close(stop)
	// Each connection quic-go creates runs two or three goroutines. Without the
	// defence this is thousands (one connection per datagram, alive for
	// the handshake timeout).
	bound := base + 5*DefaultRetryHandshakes + 64
	if got := <-peak; got > bound {
		t.Fatalf("%d goroutines during a flood of %d Initials (base %d), want at most %d", got, datagrams, base, bound)
	}
	transporttest.EchoRoundTrip(t, dialT(t, r.ep), []byte("after the flood"))
}

// A relay that restarts on the same port with the same key resets the QUIC
// connections of its previous run at their next packet: the client learns
// at once (a stateless reset), not after the 30 s idle timeout.
func TestRestartResetsOldConnections(t *testing.T) {
	r := startRelay(t, nil, nil)
	c := dialT(t, r.ep)
	s, err := r.ln.Accept(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Crash: the socket goes first, so no CONNECTION_CLOSE reaches the
	// client.
	l := r.ln.(*listener)
	l.udp.Close()
	l.Close()
	startRelay(t, nil, func(cfg *transport.ListenConfig) { cfg.Addr = r.ep.Addr })

	readErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, c)
		readErr <- err
	}()
	if _, err := c.Write(make([]byte, 100)); err != nil {
		t.Fatalf("write: %v", err)
	}
	select {
	case err := <-readErr:
		if !errors.As(err, new(*quic.StatelessResetError)) {
			t.Fatalf("old session ended with %v, want a stateless reset", err)
		}
		if transport.ClassOf(err) != transport.ClassReset {
			t.Errorf("class %v, want reset", transport.ClassOf(err))
		}
	case <-time.After(MaxIdleTimeout * 2 / 3): // generous, and below the idle timeout
		t.Fatal("old session still open: no stateless reset from the restarted relay")
	}
}

func TestDerivedKeys(t *testing.T) {
	a, b := deriveKey(testKey, labelStatelessReset), deriveKey(testKey, labelTokenGenerator)
	if a == b {
		t.Fatal("reset and token keys are equal")
	}
	if a != deriveKey(testKey, labelStatelessReset) {
		t.Fatal("reset key not stable across runs")
	}
	other := make([]byte, len(testKey))
	if a == deriveKey(other, labelStatelessReset) {
		t.Fatal("reset key does not depend on the session key")
	}
}

// vmRSS returns the process's resident set in bytes (Linux), 0 elsewhere.
func vmRSS() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

// BenchmarkInitialFlood floods a listener with 20,000 Initial-shaped
// datagrams (once per benchmark run; use -benchtime=1x) while a real client
// dials, and reports the peak goroutines, heap and RSS and the client's
// dial latency. "undefended" turns Retry and the handshake cap off to show
// what they save; run each sub-benchmark in its own process for clean RSS.
func BenchmarkInitialFlood(b *testing.B) {
	for _, defended := range []bool{true, false} {
		name := map[bool]string{true: "defended", false: "undefended"}[defended]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				floodOnce(b, &Transport{noFloodDefence: !defended})
			}
		})
	}
}

func floodOnce(b *testing.B, tr *Transport) {
	r := startRelay(b, tr, nil)
	serveEcho(b, r.ln)
	rss0 := vmRSS()
	var peakHeap, peakRSS atomic.Uint64
	stop := make(chan struct{})
	peakG := peakGoroutines(stop)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			peakHeap.Store(max(peakHeap.Load(), m.HeapInuse))
			peakRSS.Store(max(peakRSS.Load(), uint64(vmRSS())))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	floodDone := make(chan error, 1)
	go func() { floodDone <- flood(ctx, r.ep.Addr, 20000) }()
	time.Sleep(200 * time.Millisecond) // the flood is under way
	start := time.Now()
	c, err := New().Dial(ctx, r.ep)
	latency := time.Since(start)
	if err != nil {
		b.Fatalf("legitimate client during the flood: %v", err)
	}
	c.Close()
	if err := <-floodDone; err != nil {
		b.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let the listener catch up; sampling only
	close(stop)
	wg.Wait()
	b.ReportMetric(float64(<-peakG), "peak-goroutines")
	b.ReportMetric(float64(peakHeap.Load())/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(peakRSS.Load())/(1<<20), "peak-RSS-MiB")
	b.ReportMetric((float64(peakRSS.Load())-rss0)/(1<<20), "RSS-growth-MiB")
	b.ReportMetric(float64(latency.Microseconds())/1000, "legit-dial-ms")
}
