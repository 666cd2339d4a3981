//go:build !linux

package relaytest

import "time"

type timer struct{}

func newTimer() (timer, error) { return timer{}, nil }

func (timer) sleep(d time.Duration) { time.Sleep(d) }

func (timer) close() {}
