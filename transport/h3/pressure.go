package h3

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/postern/postern/transport"
)

// Under memory pressure a listener closes idle QUIC connections.
//
// The caps on connections (conns.go) bound their number, not their bytes:
// a connection that never carried a session can hold up to its initial
// receive window (768 KiB) in streams http3 never reads, so the clients of
// a few thousand connections, from a few dozen sources, could take a relay
// past its memory limit. So while the live heap is above half of the
// process's soft memory limit (GOMEMLIMIT, which a relay sets from its
// memory limit), the listener closes a quarter of its idle connections
// (at least one) every pressureCheck: the sources holding the most
// connections first, each's idle longest first, as nginx closes idle
// keep-alive connections when it runs short. Idle is as for the cap: no
// session ever came on the connection and no request is open on it. A
// closed connection's buffers are garbage at once. Connections that carry
// a session are never closed for this. With no soft limit set, nothing
// is closed.
//
// A connection counted less than pressureGrace ago is left alone: a
// Postern client sends its session request a round trip after its
// handshake, and a relay full of sessions is under pressure by this
// measure (20,000 idle h3 sessions in 2 GiB take about 60 % of the soft
// limit), so without it a new session's connection could be closed
// before its request arrived. What clients can make the relay hold in
// such connections is what they can send within the grace, and at most
// the listener's cap of connections.
const (
	pressureCheck   = 500 * time.Millisecond
	pressurePercent = 50
	pressureGrace   = 2 * time.Second
)

// memoryPressure reports whether the live heap (as of the last garbage
// collection) is above pressurePercent of the soft memory limit.
func memoryPressure() bool {
	limit := debug.SetMemoryLimit(-1)
	if limit == math.MaxInt64 || limit <= 0 {
		return false
	}
	s := [1]metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s[:])
	if s[0].Value.Kind() != metrics.KindUint64 {
		return false
	}
	return s[0].Value.Uint64() > uint64(limit)/100*pressurePercent
}

// relieve runs until done is closed: on every tick under pressure it
// closes a quarter of l's connections not in a session (at least one),
// of those counted at least grace ago.
func (l *listener) relieve(pressure func() bool, every, grace time.Duration, observe func(transport.Outcome), done <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if !pressure() {
			continue
		}
		for _, t := range l.conns.reap(max(l.conns.spareConns()/4, 1), time.Now().Add(-grace)) {
			t.close()
			if observe != nil {
				observe(transport.OutcomeConnBusy)
			}
		}
	}
}
