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
// On Linux a Pacer sleeps in nanosleep on a thread of its own with a
// timer slack of 1 ns (the default is 50 µs); elsewhere it falls back to
// time.Sleep. A Pacer belongs to the goroutine that made it, which must
// call Close when done.
type Pacer struct {
	release func()
}

// NewPacer locks the calling goroutine to its thread for precise sleeps.
func NewPacer() *Pacer { return &Pacer{release: pinThread()} }

// Until sleeps until t; it returns at once if t has passed, and never
// before t.
func (p *Pacer) Until(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		sleep(d)
	}
}

// Close releases the thread.
func (p *Pacer) Close() {
	if p.release != nil {
		p.release()
		p.release = nil
	}
}
