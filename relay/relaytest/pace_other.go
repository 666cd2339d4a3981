//go:build !linux

package relaytest

import (
	"sync/atomic"
	"time"
)

type timer struct{}

var fallbacks atomic.Int64

func newTimer() timer { return timer{} }

func (timer) sleep(d time.Duration) {
	fallbacks.Add(1)
	time.Sleep(d)
}

func (timer) close() {}
