//go:build !linux

package relaytest

import "time"

type timer struct{}

func newTimer() timer { return timer{} }

func (timer) sleep(d time.Duration) {
	fallbacks.Add(1)
	time.Sleep(d)
}

func (timer) close() {}
