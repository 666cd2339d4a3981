// Package bufpool pools the buffers that carry one envelope through a
// relay: a Send frame's payload as the relay reads it, the record the
// store builds from it, and the envelope the store reads back for
// delivery. They come in three classes, one pool each: an envelope bucket
// (4, 16 or 64 KiB) and Slack bytes for what travels with it (a frame's
// other fields, a record's head, a seal's overhead). A buffer holds the
// smallest class that fits, so a small envelope never holds a 64 KiB
// buffer, and one pool serves all three uses, so a buffer the store gave
// back for a delivery carries the next Send.
package bufpool

import (
	"sync"

	"github.com/postern/postern/envelope"
)

// Slack is the room each class has beyond its envelope bucket.
const Slack = 1024

// classes are the capacities of pooled buffers.
var classes = [...]int{envelope.Bucket4K + Slack, envelope.Bucket16K + Slack, envelope.Bucket64K + Slack}

// pools has one pool per class. They have no New: a buffer the pool
// cannot serve is made to its class's capacity.
var pools [len(classes)]sync.Pool

// Get returns a slice of n bytes (their contents undefined), from its
// class's pool if that has one. A slice larger than the largest class is
// made for the caller alone.
func Get(n int) []byte {
	for i, c := range classes {
		if n <= c {
			if b, ok := pools[i].Get().(*[]byte); ok {
				return (*b)[:n]
			}
			return make([]byte, n, c)
		}
	}
	return make([]byte, n)
}

// Put gives back a slice from Get, or any slice of it that starts where
// it starts (so that its capacity is still its class's): nothing may use
// its bytes afterwards, and each buffer goes back once. Any other slice is
// left to the garbage collector. (The *[]byte it puts is a 24-byte
// allocation: a buffer travels as a slice.)
func Put(p []byte) {
	for i, c := range classes {
		if cap(p) == c {
			b := p[:0]
			pools[i].Put(&b)
			return
		}
	}
}
