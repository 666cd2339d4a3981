package main

import (
	"runtime"
	"strconv"

	"github.com/postern/postern/relay/store/boltstore"
)

// applyProcs gives a relay with a durable store one P more than the
// runtime's default, so that a goroutine waiting in fdatasync does not
// take a core's worth of scheduling with it (why, with the measurements:
// boltstore.ExtraProcs). A valid GOMAXPROCS in the environment (a positive
// integer, the only kind the runtime honours) always wins, and a relay on
// the memory store keeps the default. It returns the GOMAXPROCS in effect.
//
// Setting GOMAXPROCS stops the runtime's own updates of it (Go 1.25+
// follows a container's CPU limit as it changes): the relay takes the
// limit it starts with, so a change of the CPU limit takes effect at the
// next restart.
func applyProcs(durable bool, getenv func(string) string) int {
	cur := runtime.GOMAXPROCS(0)
	if n, err := strconv.Atoi(getenv("GOMAXPROCS")); !durable || (err == nil && n > 0) {
		return cur
	}
	n := boltstore.Procs(cur)
	runtime.GOMAXPROCS(n)
	return n
}
