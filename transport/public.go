package transport

import (
	"errors"
	"net/netip"
)

// cgnat is carrier-grade NAT's shared address space (RFC 6598).
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// PublicIP reports whether ip is a public unicast address: not loopback,
// private (RFC 1918, fc00::/7), carrier-grade NAT's shared space,
// link-local, unspecified, multicast or broadcast.
func PublicIP(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip)
}

// ErrNotPublic is a dial refused by Endpoint.PublicOnly (in a ClassInvalid
// *Error). It names no address.
var ErrNotPublic = errors.New("the relay's address is not a public one (loopback, private, link-local and the like): refused for a dial a client asked for (a relay's link_private_peers allows it)")

// CheckPublic returns a ClassInvalid *Error if ip is not public (see
// PublicIP), for a dial of transport name with Endpoint.PublicOnly set;
// it is checked on the address dialed, after name resolution.
func CheckPublic(name string, ip netip.Addr) error {
	if PublicIP(ip) {
		return nil
	}
	return &Error{Class: ClassInvalid, Op: "dial", Transport: name, Err: ErrNotPublic}
}
