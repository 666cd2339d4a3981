package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/relay/store/storetest"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/h3"
	"github.com/postern/postern/transport/https"
)

// Load benchmarks: envelopes per second and send→deliver latency through
// one relay on loopback, per transport and store, next to the physical
// limits measured in the same run:
//
//	BenchmarkRelayLoad/{https,h3}/{memory,bolt}/senders={8,64,256}
//	                              closed loop: each sender session has one Send in flight
//	BenchmarkSendDeliver/{https,h3}/bolt
//	                              open loop at 1,000 env/s, send→deliver from the scheduled time
//	BenchmarkRawEcho/{https,h3}   4 KiB request/response over a bare transport session
//	BenchmarkRawFsync             4 KiB append + fsync, the floor for a durable accept
//	BenchmarkRawBatchFsync/batch={8,64,256}
//	                              a batch of sealed 4 KiB records in one append + fdatasync
//	BenchmarkIdleSessionMemory/{https,h3}, BenchmarkIdleSessionMemoryServerOnly
//	                              heap and stack per idle session
//
// Run: go test ./relay/server -run '^$' -bench 'RelayLoad|RawFsync|RawBatchFsync' -benchtime 10000x
// and: go test ./relay/server -run '^$' -bench 'SendDeliver' -benchtime 5000x (5 s at 1,000 env/s)

// loadSenders are the sender session counts of BenchmarkRelayLoad.
var loadSenders = []int{8, 64, 256}

// echoSenders is the session count of BenchmarkRawEcho.
const echoSenders = 8

// sealedRecord is what the log store writes for one sealed 4 KiB
// envelope (the envelope, its AEAD overhead and the record head).
const sealedRecord = envelope.Bucket4K + 28 + 96

type benchListener struct {
	ln transport.Listener
	ep transport.Endpoint
	tr transport.Transport
}

func listenBench(b *testing.B, tr transport.Transport) *benchListener {
	b.Helper()
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	cert, err := https.SelfSigned("localhost")
	if err != nil {
		b.Fatal(err)
	}
	pin, err := https.CertPin(cert)
	if err != nil {
		b.Fatal(err)
	}
	key := make([]byte, transport.KeySize)
	rand.Read(key)
	// Every benchmark client comes from 127.0.0.1: lift the per-source cap
	// (64 by default) that would turn the 65th into the cover site.
	ln, err := tr.Listen(context.Background(), transport.ListenConfig{Addr: "127.0.0.1:0", Certificate: cert, Path: "/s", Key: key,
		MaxSessionsPerSource: 4096})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	return &benchListener{ln: ln, tr: tr, ep: transport.Endpoint{Transport: tr.Name(), Addr: ln.Addr().String(),
		SNI: "localhost", Path: "/s", Key: key, CertSHA256: pin}}
}

func benchTransports() []transport.Transport {
	return []transport.Transport{&https.Transport{}, h3.New()}
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// reportLoad stops the timer and reports b.N operations over elapsed as a
// rate, with the p50 and p99 of the latencies in milliseconds.
func reportLoad(b *testing.B, elapsed time.Duration, lat []time.Duration, unit string) {
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), unit)
	b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
}

// benchRelay is a relay on loopback with one mailbox, its owner's
// session subscribed, and the envelopes to send sealed in advance.
type benchRelay struct {
	b           *testing.B
	ctx         context.Context
	srv         *server.Server
	bl          *benchListener
	log         *boltstore.Store // nil for the memory store
	dir         string           // the log store's directory
	writes      atomic.Int64     // envelopes in group commits (bolt)
	commits     atomic.Int64     // group commits (bolt)
	relayWrites atomic.Int64     // the relay's writes to its sessions' transports
	relayReads  atomic.Int64     // and its reads
	recv        *client.Client
	owner       ed25519.PrivateKey
	id          [32]byte
	envs        [][]byte
	index       map[string]int // envelope tag → index in envs
}

// startRelay serves a relay on tr with a kind ("memory", "bolt", or "warm": bolt after warmStore) store
// and seals n 4 KiB envelopes to its mailbox. It stops at b's cleanup.
func startRelay(b *testing.B, tr transport.Transport, kind string, n int) *benchRelay {
	r := &benchRelay{b: b}
	opts := store.Options{MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1,
		OnCommit: func(writes int, _ time.Duration) { r.writes.Add(int64(writes)); r.commits.Add(1) }}
	var st store.Store
	if kind == "memory" {
		st = store.NewMemory(opts)
	} else {
		dir := filepath.Join(b.TempDir(), "store")
		bs, err := boltstore.Open(dir, opts)
		if err != nil {
			b.Fatal(err)
		}
		st, r.log, r.dir = bs, bs, dir
		if kind == "warm" {
			warmStore(b, bs, filepath.Join(dir, boltstore.LogDir))
		}
		// As `postern relay serve` does with this store (boltstore.Procs),
		// unless GOMAXPROCS is set: GOMAXPROCS=2 measures without the extra P.
		if os.Getenv("GOMAXPROCS") == "" {
			def := runtime.GOMAXPROCS(boltstore.Procs(runtime.GOMAXPROCS(0)))
			b.Cleanup(func() { runtime.GOMAXPROCS(def) })
		}
	}
	var err error
	// A store quota as a relay runs with one, so that every Send counts
	// against its source's allowance (sendlimit.go) as it does there; the
	// store is never half full of it, so nothing is refused.
	if r.srv, err = server.New(server.Config{Store: st, StoreBytes: 1 << 50}); err != nil {
		b.Fatal(err)
	}
	r.bl = listenBench(b, tr)
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx = ctx
	served := make(chan struct{})
	go func() {
		r.srv.Serve(ctx, countingListener{r.bl.ln, &r.relayWrites, &r.relayReads}, tr.Name())
		close(served)
	}()
	b.Cleanup(func() { cancel(); r.bl.ln.Close(); <-served; st.Close() })
	r.recv = r.dial()
	ident, _ := envelope.NewIdentity()
	_, r.owner, _ = ed25519.GenerateKey(nil)
	rand.Read(r.id[:])
	if err := r.recv.CreateMailbox(ctx, r.owner, r.id, nil); err != nil {
		b.Fatal(err)
	}
	card := ident.Card(r.id, nil, nil)
	// Seal before timing: this measures the relay, not the client's crypto.
	r.envs, r.index = make([][]byte, n), make(map[string]int, n)
	for i := range r.envs {
		r.envs[i], err = envelope.Seal(card, nil, []byte(fmt.Sprint(i)), &envelope.Options{Suite: envelope.SuiteX25519, Bucket: envelope.Bucket4K})
		if err != nil {
			b.Fatal(err)
		}
		r.index[tag(r.envs[i])] = i
	}
	if err := r.recv.Subscribe(ctx, r.owner, r.id); err != nil {
		b.Fatal(err)
	}
	return r
}

// warmStore brings a new log store to where a relay that has run a while
// has it: 64 putters put and ack 4 KiB envelopes in a mailbox of their
// own until two 64 MiB segments have filled and been compacted, so the
// newest segment is written over a compacted one's file (boltstore's
// "Recycled segments": no block allocation, no size change, no journal
// commit per fdatasync) and nothing is left to compact. Kind "bolt" is a
// new store, whose batches all append to its first segment.
func warmStore(b *testing.B, bs *boltstore.Store, logDir string) {
	ctx := context.Background()
	id := storetest.ID(1 << 20)
	if err := bs.CreateMailbox(ctx, id, storetest.Owner(1<<20), nil); err != nil {
		b.Fatal(err)
	}
	third := filepath.Join(logDir, fmt.Sprintf("%016x.seg", 3))
	exists := func(path string) bool { _, err := os.Stat(path); return err == nil }
	deadline := time.Now().Add(5 * time.Minute)
	var done atomic.Bool
	var wg sync.WaitGroup
	for p := range 64 {
		wg.Go(func() {
			env := storetest.Envelope(id, envelope.Bucket4K, p)
			for i := 0; !done.Load(); i++ {
				copy(env[len(env)-8:], strconv.AppendInt(nil, int64(i), 16))
				ref, err := bs.Put(ctx, id, env)
				if err == nil {
					_, err = bs.Ack(ctx, id, ref)
				}
				if err != nil {
					b.Error(err)
					done.Store(true)
				}
			}
		})
	}
	for !exists(third) && !b.Failed() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	done.Store(true)
	wg.Wait()
	// Compaction of the older segments finishes: the log is the newest
	// segment and the spare.
	for time.Now().Before(deadline) {
		ents, err := os.ReadDir(logDir)
		if err != nil {
			b.Fatal(err)
		}
		if len(ents) == 2 && exists(filepath.Join(logDir, "spare")) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatal("the store did not reach its warm state: segment 3 over the spare, the rest compacted")
}

// tag names an envelope by its AEAD tag, unique per seal.
func tag(env []byte) string { return string(env[len(env)-16:]) }

func (r *benchRelay) dial() *client.Client {
	dctx, dcancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer dcancel()
	conn, err := r.bl.tr.Dial(dctx, r.bl.ep)
	if err != nil {
		r.b.Fatal(err)
	}
	c, err := client.New(dctx, conn, client.WithRelayKey(r.srv.PublicKey()))
	if err != nil {
		r.b.Fatal(err)
	}
	r.b.Cleanup(func() { c.Close() })
	return c
}

// receive takes every envelope pushed to the receiver, calling got with
// its index and the time it arrived, and acks them from another goroutine
// in batches, so that an ack's round trip never delays a delivery. It
// returns once all have arrived or the session ended.
func (r *benchRelay) receive(got func(i int, at time.Time)) {
	refs := make(chan client.Ref, len(r.envs))
	acked := make(chan struct{})
	go func() {
		defer close(acked)
		var batch []client.Ref
		for ref := range refs {
			batch = append(batch[:0], ref)
			for len(batch) < 128 && len(refs) > 0 {
				batch = append(batch, <-refs)
			}
			if _, err := r.recv.Ack(r.ctx, r.owner, r.id, batch...); err != nil {
				r.b.Error(err)
				for range refs {
				}
				return
			}
		}
	}()
	defer func() { close(refs); <-acked }()
	for range r.envs {
		d, ok := <-r.recv.Deliveries()
		if !ok {
			r.b.Error("receiver session ended")
			return
		}
		now := time.Now()
		if i, ok := r.index[tag(d.Envelope)]; ok {
			got(i, now)
		}
		refs <- d.Ref
	}
}

// countingListener counts the writes the relay makes to the sessions it
// accepts: frames per transport write, whatever the transport does below.
type countingListener struct {
	transport.Listener
	n, reads *atomic.Int64
}

func (l countingListener) Accept(ctx context.Context) (transport.Conn, error) {
	c, err := l.Listener.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.n, l.reads}, nil
}

type countingConn struct {
	transport.Conn
	n, reads *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.Conn.Read(p)
}

func (c countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// diskMeter counts what the process wrote to disk, the CPU time and
// write syscalls it took (client, transports and relay together: all are
// in this process), and what the store committed, between its start and
// report. CPU time per envelope holds up on a shared machine, where
// envelopes per second do not.
type diskMeter struct {
	r                *benchRelay
	io0, log0, dev0  int64
	writes0, commit0 int64
	cpu0, syscw0     int64
	relayWrites0     int64
	relayReads0      int64
	alloc0           uint64
}

// totalAlloc is the heap bytes this process has allocated so far.
func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

func (r *benchRelay) meter() diskMeter {
	m := diskMeter{r: r, io0: storetest.WriteBytes(), writes0: r.writes.Load(), commit0: r.commits.Load(),
		cpu0: cpuTime(), syscw0: procIO("syscw"), relayWrites0: r.relayWrites.Load(), relayReads0: r.relayReads.Load(), alloc0: totalAlloc()}
	if r.log != nil {
		m.log0 = r.log.LogBytes()
		m.dev0 = storetest.DeviceWriteBytes(r.dir)
	}
	return m
}

// cpuTime is the process's user and system CPU time in microseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return ru.Utime.Nano()/1000 + ru.Stime.Nano()/1000
}

// procIO is a field of /proc/self/io, or -1.
func procIO(field string) int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+": "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// report adds cpu-us/env, alloc-B/env (heap allocated by the whole
// process), write-syscalls/env, relay-writes/env and
// relay-reads/env (the relay's writes to and reads from its transports)
// for n envelopes, and for
// the log store env/commit, bytes-written/env (/proc/self/io, which
// overcounts writes over a cached file: storetest.WriteBytes),
// dev-bytes-written/env (the block device's own count, journal and other
// writers on the host included) and log-bytes/env (the store's own count).
func (m diskMeter) report(b *testing.B, n int) {
	if c := cpuTime(); m.cpu0 >= 0 && c >= 0 {
		b.ReportMetric(float64(c-m.cpu0)/float64(n), "cpu-us/env")
	}
	if w := procIO("syscw"); m.syscw0 >= 0 && w >= 0 {
		b.ReportMetric(float64(w-m.syscw0)/float64(n), "write-syscalls/env")
	}
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "procs")
	b.ReportMetric(float64(totalAlloc()-m.alloc0)/float64(n), "alloc-B/env")
	b.ReportMetric(float64(m.r.relayWrites.Load()-m.relayWrites0)/float64(n), "relay-writes/env")
	b.ReportMetric(float64(m.r.relayReads.Load()-m.relayReads0)/float64(n), "relay-reads/env")
	if m.r.log == nil {
		return
	}
	storetest.ReportWrites(b, n, "env", m.io0)
	storetest.ReportDeviceWrites(b, n, "env", m.r.dir, m.dev0)
	b.ReportMetric(float64(m.r.log.LogBytes()-m.log0)/float64(n), "log-bytes/env")
	if c := m.r.commits.Load() - m.commit0; c > 0 {
		b.ReportMetric(float64(m.r.writes.Load()-m.writes0)/float64(c), "env/commit")
	}
}

func BenchmarkRelayLoad(b *testing.B) {
	for _, tr := range benchTransports() {
		for _, kind := range []string{"memory", "bolt", "warm"} {
			for _, n := range loadSenders {
				b.Run(fmt.Sprintf("%s/%s/senders=%d", tr.Name(), kind, n), func(b *testing.B) { benchRelayLoad(b, tr, kind, n) })
			}
		}
	}
}

// benchRelayLoad: senders sessions each send their share of b.N envelopes
// one at a time to one mailbox that one subscribed session receives.
// accepts/s counts until the last Send returned, delivered/s until the
// last delivery; the latencies are send start → delivery.
func benchRelayLoad(b *testing.B, tr transport.Transport, kind string, senders int) {
	r := startRelay(b, tr, kind, b.N)
	cs := make([]*client.Client, senders)
	for i := range cs {
		cs[i] = r.dial()
	}
	sentAt := make([]atomic.Int64, b.N)
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(envelope.Bucket4K)
	m := r.meter()
	b.ResetTimer()
	start := time.Now()
	got := make(chan struct{})
	go func() {
		defer close(got)
		r.receive(func(i int, at time.Time) {
			if t0 := sentAt[i].Load(); t0 != 0 {
				lat = append(lat, at.Sub(time.Unix(0, t0)))
			}
		})
	}()
	var wg sync.WaitGroup
	for s, c := range cs {
		wg.Go(func() {
			for i := s; i < b.N; i += senders {
				sentAt[i].Store(time.Now().UnixNano())
				if _, err := c.Send(r.ctx, r.envs[i], nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	accepted := time.Since(start)
	select {
	case <-got:
	case <-time.After(5 * time.Minute):
		b.Fatal("deliveries stalled")
	}
	m.report(b, b.N)
	b.ReportMetric(float64(b.N)/accepted.Seconds(), "accepts/s")
	reportLoad(b, time.Since(start), lat, "delivered/s")
}

// BenchmarkSendDeliver: an open-loop generator sends 4 KiB envelopes at a
// fixed 1,000 env/s (b.N of them, each at its scheduled time whatever the
// earlier ones are doing) over 8 sender sessions to one subscribed
// receiver; latency runs from the scheduled send time to the delivery, so
// a stall counts in full for every envelope it delays. Beside it, in the
// same run, the raw p99 of a 4 KiB append + fdatasync on the store's disk.
//
// The generator wakes with a relaytest.Pacer, not time.Sleep, which wakes
// an idle process up to 1 ms late; send-lag is how late each Send started
// (scheduled time to the Send call), which the latency includes.
func BenchmarkSendDeliver(b *testing.B) {
	for _, tr := range benchTransports() {
		b.Run(tr.Name()+"/bolt", func(b *testing.B) { benchSendDeliver(b, tr, "bolt", 1000, 8) })
		b.Run(tr.Name()+"/warm", func(b *testing.B) { benchSendDeliver(b, tr, "warm", 1000, 8) })
		b.Run(tr.Name()+"/memory", func(b *testing.B) { benchSendDeliver(b, tr, "memory", 1000, 8) })
	}
}

func benchSendDeliver(b *testing.B, tr transport.Transport, kind string, rate, senders int) {
	r := startRelay(b, tr, kind, b.N)
	cs := make([]*client.Client, senders)
	for i := range cs {
		cs[i] = r.dial()
	}
	interval := time.Second / time.Duration(rate)
	raw := rawFsyncLatencies(b, min(b.N, 2000), interval)
	rawB2B := rawFsyncLatencies(b, min(b.N, 2000), 0)
	lat := make([]time.Duration, 0, b.N)
	lag := make([]time.Duration, b.N)
	var syncs0 uint64
	if r.log != nil {
		syncs0 = r.log.Stats().Syncs
	}
	b.ResetTimer()
	start := time.Now().Add(interval)
	got := make(chan struct{})
	go func() {
		defer close(got)
		r.receive(func(i int, at time.Time) {
			lat = append(lat, at.Sub(start.Add(time.Duration(i)*interval)))
		})
	}()
	var wg sync.WaitGroup
	pace := relaytest.NewPacer()
	defer pace.Close()
	for i := range b.N {
		due := start.Add(time.Duration(i) * interval)
		pace.Until(due)
		wg.Go(func() {
			lag[i] = time.Since(due)
			if _, err := cs[i%senders].Send(r.ctx, r.envs[i], nil); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	select {
	case <-got:
	case <-time.After(5 * time.Minute):
		b.Fatal("deliveries stalled")
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(lat, 0.999)), "p99.9-ms")
	b.ReportMetric(ms(percentile(raw, 0.99)), "raw-fsync-p99-ms")
	b.ReportMetric(ms(percentile(raw, 0.999)), "raw-fsync-p99.9-ms")
	b.ReportMetric(ms(percentile(rawB2B, 0.99)), "raw-b2b-fsync-p99-ms")
	b.ReportMetric(ms(percentile(lag, 0.50)), "send-lag-p50-ms")
	b.ReportMetric(ms(percentile(lag, 0.99)), "send-lag-p99-ms")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "procs")
	if r.log != nil { // the store's fdatasyncs: one per Put commit, acks mostly sharing them
		b.ReportMetric(float64(r.log.Stats().Syncs-syncs0)/float64(b.N), "syncs/env")
	}
}

// rawFsyncLatencies times n appends of 4 KiB, each followed by fdatasync,
// in a temporary file on the disk the store uses: one per interval, as
// the open loop sends (an idle disk syncs more slowly than a busy one:
// here the p99 at 1,000/s was 2–3 times the back-to-back p99), or back
// to back with interval 0.
func rawFsyncLatencies(b *testing.B, n int, interval time.Duration) []time.Duration {
	f := rawFile(b)
	buf := make([]byte, envelope.Bucket4K)
	lat := make([]time.Duration, n)
	pace := relaytest.NewPacer()
	defer pace.Close()
	start := time.Now()
	for i := range lat {
		pace.Until(start.Add(time.Duration(i) * interval))
		t0 := time.Now()
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t0)
	}
	return lat
}

func rawFile(b *testing.B) *os.File {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

// BenchmarkRawEcho: echoSenders sessions each doing 4 KiB request/response
// round trips against an echo handler over the bare transport: the ceiling
// for envelopes per second over that transport on this machine.
func BenchmarkRawEcho(b *testing.B) {
	for _, tr := range benchTransports() {
		b.Run(tr.Name(), func(b *testing.B) {
			bl := listenBench(b, tr)
			go func() {
				for {
					c, err := bl.ln.Accept(context.Background())
					if err != nil {
						return
					}
					go func() { io.Copy(c, c); c.Close() }()
				}
			}()
			conns := make([]transport.Conn, echoSenders)
			for i := range conns {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				c, err := tr.Dial(ctx, bl.ep)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				conns[i] = c
			}
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			b.SetBytes(envelope.Bucket4K)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for s, c := range conns {
				wg.Go(func() {
					buf := make([]byte, envelope.Bucket4K)
					for i := s; i < b.N; i += echoSenders {
						t0 := time.Now()
						if _, err := c.Write(buf); err != nil {
							b.Error(err)
							return
						}
						if _, err := io.ReadFull(c, buf); err != nil {
							b.Error(err)
							return
						}
						d := time.Since(t0)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			reportLoad(b, time.Since(start), lat, "msg/s")
		})
	}
}

// BenchmarkRawFsync: one 4 KiB append plus fsync per op, one at a time,
// on the same disk the store uses.
func BenchmarkRawFsync(b *testing.B) {
	f := rawFile(b)
	buf := make([]byte, envelope.Bucket4K)
	b.SetBytes(envelope.Bucket4K)
	w0, d0 := storetest.WriteBytes(), storetest.DeviceWriteBytes(f.Name())
	for b.Loop() {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	storetest.ReportWrites(b, b.N, "env", w0)
	storetest.ReportDeviceWrites(b, b.N, "env", f.Name(), d0)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "env/s")
}

// BenchmarkRawBatchFsync: b.N sealed 4 KiB records written batch at a
// time, each batch one append and one fdatasync: what a group commit of
// that many envelopes costs the disk at least.
func BenchmarkRawBatchFsync(b *testing.B) {
	for _, n := range loadSenders {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			f := rawFile(b)
			buf := make([]byte, n*sealedRecord)
			b.SetBytes(envelope.Bucket4K)
			w0, d0 := storetest.WriteBytes(), storetest.DeviceWriteBytes(f.Name())
			for i := 0; i < b.N; i += n {
				k := min(n, b.N-i)
				if _, err := f.Write(buf[:k*sealedRecord]); err != nil {
					b.Fatal(err)
				}
				if err := syscall.Fdatasync(int(f.Fd())); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			storetest.ReportWrites(b, b.N, "env", w0)
			storetest.ReportDeviceWrites(b, b.N, "env", f.Name(), d0)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "env/s")
		})
	}
}

// BenchmarkIdleSessionMemory: heap and goroutine stacks held per idle
// relay session (client and relay side together, both in this process),
// after the hello and a ping. Reported as bytes/session; b.N is ignored
// beyond running once per op.
func BenchmarkIdleSessionMemory(b *testing.B) {
	const sessions = 100
	for _, tr := range benchTransports() {
		b.Run(tr.Name(), func(b *testing.B) {
			st := store.NewMemory(store.Options{})
			defer st.Close()
			srv, err := server.New(server.Config{Store: st})
			if err != nil {
				b.Fatal(err)
			}
			bl := listenBench(b, tr)
			ctx, cancel := context.WithCancel(context.Background())
			served := make(chan struct{})
			go func() { srv.Serve(ctx, bl.ln, tr.Name()); close(served) }()
			defer func() { cancel(); bl.ln.Close(); <-served }()
			var per float64
			for b.Loop() {
				before := heapInUse()
				cs := make([]*client.Client, 0, sessions)
				for range sessions {
					dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
					conn, err := tr.Dial(dctx, bl.ep)
					if err != nil {
						b.Fatal(err)
					}
					c, err := client.New(dctx, conn, client.WithRelayKey(srv.PublicKey()))
					dcancel()
					if err != nil {
						b.Fatal(err)
					}
					if err := c.Ping(ctx); err != nil {
						b.Fatal(err)
					}
					cs = append(cs, c)
				}
				per = float64(heapInUse()-before) / sessions
				for _, c := range cs {
					c.Close()
				}
			}
			b.ReportMetric(per, "bytes/session")
		})
	}
}

// heapInUse is the heap and goroutine stack memory in use after two
// collections.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// pipeConn is one end of a net.Pipe as a transport.Conn.
type pipeConn struct{ net.Conn }

func (c pipeConn) CloseWrite() error { return c.Close() }

// BenchmarkIdleSessionMemory/server-only: heap and stack that package
// server itself holds per idle session, after the hello and a ping. The
// sessions run over synchronous in-memory pipes (net.Pipe buffers
// nothing) and the client side is a few frames written by hand, so
// nothing of a transport or of package client is counted; a net.Pipe's
// own few hundred bytes are.
func BenchmarkIdleSessionMemoryServerOnly(b *testing.B) {
	measure := pipeSessions(b)
	var per float64
	for b.Loop() {
		per = measure(nil)
	}
	b.ReportMetric(per, "bytes/session")
}

// BenchmarkHalfFrameSessionMemory: heap and stack that package server
// holds per session whose peer, after the hello and a ping, sent the
// 5-byte header of a Send frame declaring the largest payload and 10
// bytes of it, and then nothing (reported as bytes/session), beside the
// same sessions idle, measured in the same run (idle-bytes/session).
// Over net.Pipe, as BenchmarkIdleSessionMemoryServerOnly.
func BenchmarkHalfFrameSessionMemory(b *testing.B) {
	measure := pipeSessions(b)
	n := relay.MaxFrameSize
	half := append([]byte{byte(relay.FrameSend), byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, make([]byte, 10)...)
	var idle, held float64
	for b.Loop() {
		idle = measure(nil)
		held = measure(half)
	}
	b.ReportMetric(held, "bytes/session")
	b.ReportMetric(idle, "idle-bytes/session")
}

// pipeSessions starts a server on a memory store and returns what
// measures the heap and stack it holds per session for 1,000 sessions
// over net.Pipe, each after the hello, a ping and then extra from its
// peer (net.Pipe's Write returns once the server read it all).
func pipeSessions(b *testing.B) func(extra []byte) float64 {
	const sessions = 1000
	st := store.NewMemory(store.Options{})
	b.Cleanup(func() { st.Close() })
	srv, err := server.New(server.Config{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	return func(extra []byte) float64 {
		var wg sync.WaitGroup
		before := heapInUse()
		ends := make([]net.Conn, 0, sessions)
		for range sessions {
			c, s := net.Pipe()
			wg.Go(func() { srv.ServeConn(ctx, pipeConn{s}, "pipe") })
			if err := idleHandshake(c); err != nil {
				b.Fatal(err)
			}
			if len(extra) > 0 {
				if _, err := c.Write(extra); err != nil {
					b.Fatal(err)
				}
			}
			ends = append(ends, c)
		}
		per := float64(heapInUse()-before) / sessions
		for _, c := range ends {
			c.Close()
		}
		wg.Wait()
		return per
	}
}

// idleHandshake says hello on c and pings once, reading the answers.
func idleHandshake(c net.Conn) error {
	if _, err := c.Write(relay.AppendFrame(nil, relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion})); err != nil {
		return err
	}
	if t, _, err := relay.ReadFrame(c); err != nil || t != relay.FrameServerHello {
		return fmt.Errorf("hello: frame %v, %v", t, err)
	}
	if _, err := c.Write(relay.AppendFrame(nil, relay.Ping{Req: 1, Data: []byte("x")})); err != nil {
		return err
	}
	if t, _, err := relay.ReadFrame(c); err != nil || t != relay.FramePong {
		return fmt.Errorf("ping: frame %v, %v", t, err)
	}
	return nil
}
