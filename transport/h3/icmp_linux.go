package h3

import (
	"net"
	"syscall"
)

// reportICMP turns on or off the kernel's reporting of ICMP errors to the
// client's unconnected UDP socket (IP_RECVERR, IPV6_RECVERR). It is on during
// the handshake: a port unreachable answer then fails the dial at once as
// refused (ECONNREFUSED), as a TCP reset does for transport/https, instead of
// after the handshake timeout. It is off for the session, so that a
// transient ICMP error (or a "fragmentation needed" for a path MTU probe)
// cannot end it. Errors are ignored: without the option a dial to a closed
// port just times out.
func reportICMP(c *net.UDPConn, on bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	v := 0
	if on {
		v = 1
	}
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_RECVERR, v)
		syscall.SetsockoptInt(int(fd), syscall.SOL_IPV6, syscall.IPV6_RECVERR, v)
	})
}
