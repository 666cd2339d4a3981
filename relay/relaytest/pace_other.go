//go:build !linux

package relaytest

import "time"

func pinThread() func() { return nil }

func sleep(d time.Duration) { time.Sleep(d) }
