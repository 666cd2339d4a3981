package relaytest

import "time"

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
// holds no thread or P while it waits. Elsewhere it falls back to
// time.Sleep. A Pacer is for one goroutine at a time; Close releases it.
type Pacer struct {
	t timer
}

// NewPacer returns a Pacer; it panics if the system refuses a timer,
// which a test cannot work around.
func NewPacer() *Pacer {
	t, err := newTimer()
	if err != nil {
		panic("relaytest: pacer timer: " + err.Error())
	}
	return &Pacer{t: t}
}

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

// Close releases the Pacer's timer; it may be called more than once.
func (p *Pacer) Close() { p.t.close() }
