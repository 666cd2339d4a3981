package h3

import "net"

// sendHook is a listener's UDP socket with Transport.onSend watching what
// quic-go sends (benchmarks count sendmsg calls and GSO batches with it).
// It keeps every method of the socket, so quic-go takes the same fast path
// (batched reads, GSO, ECN) as on the bare *net.UDPConn.
type sendHook struct {
	*net.UDPConn
	onSend func(b, oob []byte)
}

// WriteMsgUDP is the one call through which quic-go sends on a UDP socket
// that has it: one sendmsg, several packets when oob carries a GSO segment
// size.
func (s *sendHook) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	s.onSend(b, oob)
	return s.UDPConn.WriteMsgUDP(b, oob, addr)
}

// hookSends returns udp as the listener's QUIC transport uses it: as it
// is, unless onSend is set.
func hookSends(udp *net.UDPConn, onSend func(b, oob []byte)) net.PacketConn {
	if onSend == nil {
		return udp
	}
	return &sendHook{UDPConn: udp, onSend: onSend}
}
