package relaytest

import (
	"sync/atomic"
	"time"
)

// A Pacer wakes an open-loop load generator at its scheduled send times.
//
// time.Sleep is not precise enough for that when the process is otherwise
// idle: the Go runtime then waits for its next timer in epoll_wait, whose
// timeout is whole milliseconds, so a sleep ends up to 1 ms late. A
// generator sending every millisecond in the same process as the relay
// it measures saw exactly that: its sends started 70–115 µs late at the
// median and about 1 ms late at p90, and since latency runs from the
// scheduled time, the lateness counted as relay latency. It also counted
// more the idler the relay was, so changes that made the relay do less
// between envelopes looked slower.
//
// On Linux a Pacer waits on a timerfd through the runtime's poller: the
// kernel's timer, with nanosecond resolution, makes the fd readable, and
// the readable fd (unlike a timer) ends epoll_wait at once. The goroutine
// holds no thread or P while it waits. Elsewhere, or if the system refuses
// a timerfd, it falls back to time.Sleep.
//
// It is for pacing a process that is not saturated: a goroutine woken
// through the poller runs when a P looks for work, while timers are
// checked on every scheduling pass, so in a process whose Ps are all busy
// a Pacer can wake later than time.Sleep would. A generator should report
// how late its sends started (BenchmarkSendDeliver's send-lag does).
//
// A Pacer is for one goroutine at a time; Close releases it.
type Pacer struct {
	t timer
}

// fallbacks counts sleeps that fell back to time.Sleep (for tests).
var fallbacks atomic.Int64

// NewPacer returns a Pacer.
func NewPacer() *Pacer { return &Pacer{t: newTimer()} }

// Until sleeps until t; it returns at once if t has passed, and never
// before t.
func (p *Pacer) Until(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		p.t.sleep(d)
	}
}

// Close releases the Pacer's timer; later sleeps use time.Sleep. It may
// be called more than once.
func (p *Pacer) Close() { p.t.close() }
