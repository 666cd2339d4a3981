package transporttest

import (
	"net"
	"syscall"
	"testing"
)

// Linux TCP states as TCPState reports them: TCPClose is where a reset
// leaves a socket, TCPCloseWait a socket that has read its peer's FIN and
// nothing since.
const (
	TCPClose     = 7
	TCPCloseWait = 8
)

// TCPState is the Linux TCP state of c (tcpi_state, the first byte of
// TCP_INFO). After a FIN a read returns EOF even once a reset has come
// (Linux checks the FIN before the socket's error); the state tells.
func TCPState(tb testing.TB, c *net.TCPConn) int {
	tb.Helper()
	st, err := TCPStateOf(c)
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// TCPStateOf is TCPState for a goroutine that is not the test's.
func TCPStateOf(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_INFO)
	}); err != nil {
		return 0, err
	}
	return v & 0xff, gerr
}
