package h3

import (
	"context"
	"errors"
	"net"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"

	"github.com/postern/postern/transport"
)

// errUDPSilent is a QUIC handshake to which nothing at all came back: not a
// packet, not an ICMP error. UDP to the relay is dropped on the path (or
// the relay is gone without a trace); TCP may still get through.
var errUDPSilent = errors.New("no UDP packet came back during the QUIC handshake: this network may drop UDP; try https")

// heard is the client's UDP socket as quic-go reads it, noting whether any
// datagram came in. quic-go reads through ReadBatch when a conn has it (as
// it would through ipv4.PacketConn on the bare socket), or through
// ReadFrom on platforms without batch reads; everything else is the
// socket's own.
type heard struct {
	*net.UDPConn
	batch  *ipv4.PacketConn
	any    atomic.Bool
	onSend func(b, oob []byte) // Transport.onSend, nil but in benchmarks
}

func newHeard(c *net.UDPConn) *heard { return &heard{UDPConn: c, batch: ipv4.NewPacketConn(c)} }

func (h *heard) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	n, err := h.batch.ReadBatch(ms, flags)
	if n > 0 && !h.any.Load() {
		h.any.Store(true)
	}
	return n, err
}

// WriteMsgUDP is how quic-go sends on the socket (see sendHook).
func (h *heard) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	if h.onSend != nil {
		h.onSend(b, oob)
	}
	return h.UDPConn.WriteMsgUDP(b, oob, addr)
}

func (h *heard) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := h.UDPConn.ReadFrom(b)
	if err == nil && !h.any.Load() {
		h.any.Store(true)
	}
	return n, addr, err
}

// silent turns a failed QUIC handshake during which no packet came back into
// ClassUDPSilent: it ran out of time (ctx's deadline, or quic-go's idle or
// handshake timeout) and h heard nothing. Any other err is returned as is.
func silent(ctx context.Context, h *heard, err error) error {
	if h.any.Load() || errors.Is(ctx.Err(), context.Canceled) {
		return err
	}
	timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded) ||
		isA[*quic.IdleTimeoutError](err) || isA[*quic.HandshakeTimeoutError](err)
	if !timedOut {
		return err
	}
	return &transport.Error{Class: transport.ClassUDPSilent, Op: "dial", Transport: Name, Err: transport.Redact(errUDPSilent.Error(), err)}
}
