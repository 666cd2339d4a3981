//go:build !linux

package h3

import "net"

// reportICMP does nothing where the kernel has no IP_RECVERR: a dial to a
// closed port times out there.
func reportICMP(*net.UDPConn, bool) {}
