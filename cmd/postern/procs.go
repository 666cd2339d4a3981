package main

import (
	"runtime"

	"github.com/postern/postern/relay/store/boltstore"
)

// applyProcs gives a relay with a durable store one P more than the
// runtime's default, so that a goroutine waiting in fdatasync does not
// take a core's worth of scheduling with it (why, with the measurements:
// boltstore.ExtraProcs). An explicit GOMAXPROCS in the environment always
// wins, and a relay on the memory store keeps the default. It returns the
// GOMAXPROCS in effect.
func applyProcs(durable bool, getenv func(string) string) int {
	cur := runtime.GOMAXPROCS(0)
	if !durable || getenv("GOMAXPROCS") != "" {
		return cur
	}
	n := boltstore.Procs(cur)
	runtime.GOMAXPROCS(n)
	return n
}
