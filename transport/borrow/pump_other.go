//go:build !unix

package borrow

import "net"

// Where the socket calls of pump_unix.go are not there (Windows), the
// front works with what net.Conn gives: a splice holds its buffer while it
// waits, the origin's reset after its FIN reaches the client on the
// front's next write to the origin, and held bytes are not looked for
// before passing a connection on. Relays are meant to run on Linux; this
// keeps the module building for clients elsewhere.

// readPooled reads what src has into a buffer from bufPool, which the
// caller gives back with putBuf.
func readPooled(src net.Conn) (bp *[]byte, n int, err error) {
	bp = getBuf()
	n, err = src.Read(*bp)
	return bp, n, err
}

// watchReset does nothing here (see above).
func (f *flow) watchReset(net.Conn) {}

// readAvailable yields nothing here (see above).
func readAvailable(net.Conn, int) ([]byte, error) { return nil, nil }
