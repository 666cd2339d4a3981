package h3

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/postern/postern/transport"
)

// Under memory pressure a listener closes connections that carry no
// session.
//
// The caps on connections (conns.go) bound their number, not their bytes:
// a connection that never carried a session can hold up to its initial
// receive window (768 KiB) in streams http3 never reads, so the clients of
// a few thousand connections, from a few dozen sources, could take a relay
// past its memory limit. So a listener is under pressure when
//
//   - a garbage collection has ended since it last acted (the live heap
//     is measured at collections: without it the listener would act
//     again on the heap it has just freed);
//   - the live heap is above pressurePercent of the process's soft memory
//     limit (GOMEMLIMIT, which a relay sets from its memory limit);
//   - and its connections not in a session could, at their initial
//     window each, fill half of what is left below the limit. A relay
//     full of sessions is above the first mark (20,000 idle h3 sessions
//     in 2 GiB take about 60 % of the soft limit) but holds few such
//     connections: it does not act, so a prober's cover connection is
//     not closed sooner there than on an idle relay, unless the prober
//     holds enough connections to pass this mark itself (about 500 at a
//     1.8 GiB soft limit with 60 % of it live: four sources at their cap);
//     or the live heap is above pressureHigh of the limit, whatever its
//     connections not in a session are; then only idle ones are closed.
//     A window bounds the bytes a
//     client sends unread, not what holding them costs: quic-go keeps
//     each STREAM frame of under 128 bytes as an entry of its own, so
//     1-byte frames make about 150 bytes of heap per byte of window
//     (114 MiB for one connection's 768 KiB, on the QPACK streams http3
//     never reads, or on any stream after a gap the client leaves).
//
// Then it closes a quarter of those connections (at least one): idle
// ones first, then (by the window rule) busy ones counted pressureBusy
// ago or more (a client
// that reads cover pages slowly, or never, keeps requests open), never
// one counted less than pressureGrace ago (a Postern client sends its
// session request a round trip after its handshake), and of each kind
// those of the sources holding the most connections first. A closed
// connection's buffers are garbage at once (conns.go). Connections in a
// session are never closed for this, so what a client that holds
// sessions (anyone with the relay's descriptor) stuffs in 1-byte frames
// is not bounded here: up to 114 MiB per session's connection. With no soft limit set, nothing is
// closed.
const (
	pressureCheck   = 500 * time.Millisecond
	pressurePercent = 50
	pressureHigh    = 80 // a relay full of idle sessions is at about 60
	pressureGrace   = 2 * time.Second
	pressureBusy    = 10 * time.Second
	// initialConnWindow is what a connection's client can make the relay hold
	// unread: quic-go's initial connection receive window.
	initialConnWindow = 768 << 10
)

// memoryGauge reads the runtime's memory figures for one listener.
type memoryGauge struct {
	samples [2]metrics.Sample
	acted   uint64 // the collection count when it last reported pressure
}

func newMemoryGauge() *memoryGauge {
	g := &memoryGauge{}
	g.samples[0].Name = "/gc/heap/live:bytes"
	g.samples[1].Name = "/gc/cycles/total:gc-cycles"
	return g
}

// under reports whether a listener holding spare connections not in a
// session is under pressure (see above), and whether busy connections may
// be closed too (not when only pressureHigh holds: the connections that
// make a heap grow unseen are idle ones, and a relay whose sessions alone
// took it past the mark would otherwise close cover pages as they are
// served); if so it takes note that it acts on this collection's
// figures.
func (g *memoryGauge) under(spare int) (act, busyToo bool) {
	limit := debug.SetMemoryLimit(-1)
	if limit == math.MaxInt64 || limit <= 0 || spare <= 0 {
		return false, false
	}
	metrics.Read(g.samples[:])
	if g.samples[0].Value.Kind() != metrics.KindUint64 || g.samples[1].Value.Kind() != metrics.KindUint64 {
		return false, false
	}
	live, cycles := int64(g.samples[0].Value.Uint64()), g.samples[1].Value.Uint64()
	if cycles == g.acted || live <= limit/100*pressurePercent {
		return false, false
	}
	windows := int64(spare)*initialConnWindow > (limit-live)/2
	if !windows && live <= limit/100*pressureHigh {
		return false, false
	}
	g.acted = cycles
	return true, windows
}

// relieve runs until done is closed: every p.every, when p.under says
// so, it closes a quarter of l's connections not in a session (at least
// one), of those counted at least p.grace ago, busy ones only if counted
// at least p.busy ago.
func (l *connLimiter) relieve(p *pressureHook, done <-chan struct{}) {
	tick := time.NewTicker(p.every)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		spare := l.spareConns()
		act, busyToo := p.under(spare)
		if !act {
			continue
		}
		now := time.Now()
		var busyBefore time.Time // none: no busy connection counted before it
		if busyToo {
			busyBefore = now.Add(-p.busy)
		}
		for _, t := range l.reap(max(spare/4, 1), now.Add(-p.grace), busyBefore) {
			t.close()
			if l.observe != nil {
				l.observe(transport.OutcomeConnBusy)
			}
		}
	}
}
