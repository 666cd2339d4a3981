package relaytest

import (
	"context"
	"encoding/binary"
	"net"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
)

// OldRelayConn is a client's end of a session as a relay from before the
// given frame types sees it: written frames of those types reach the
// relay as a type it does not know (0x7f), which it answers with
// CodeUnknownFrame, as an old relay does. Tests of fallbacks to older
// relays use it on a relay of today.
func OldRelayConn(tcp *net.TCPConn, types ...relay.FrameType) transport.Conn {
	c := &oldRelayConn{Conn: tcp, tcp: tcp, unknown: map[byte]bool{}}
	for _, t := range types {
		c.unknown[byte(t)] = true
	}
	return c
}

type oldRelayConn struct {
	net.Conn // an interface, so that only Write writes
	tcp      *net.TCPConn
	unknown  map[byte]bool
	head     []byte // the header of the frame being written, so far
	left     int    // bytes of the frame's payload still to come
}

func (c *oldRelayConn) CloseWrite() error { return c.tcp.CloseWrite() }

func (c *oldRelayConn) Write(p []byte) (int, error) {
	b := append([]byte(nil), p...)
	for i := 0; i < len(b); {
		if c.left > 0 {
			n := min(c.left, len(b)-i)
			c.left -= n
			i += n
			continue
		}
		if len(c.head) == 0 && c.unknown[b[i]] {
			b[i] = 0x7f
		}
		c.head = append(c.head, b[i])
		i++
		if len(c.head) == relay.FrameHeaderSize { // type u8 | length u32
			c.left, c.head = int(binary.BigEndian.Uint32(c.head[1:])), c.head[:0]
		}
	}
	return c.Conn.Write(b)
}

// DialTCP opens a session to the relay at the TCP address addr (its
// ServeTCP listener, or a middlebox in front of it) with the stall window
// stall (0: the default); with old frame types, as a relay from before
// them would see it (OldRelayConn).
func (r *Relay) DialTCP(ctx context.Context, addr string, stall time.Duration, old ...relay.FrameType) (*client.Client, error) {
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	var conn transport.Conn = raw.(*net.TCPConn)
	if len(old) > 0 {
		conn = OldRelayConn(raw.(*net.TCPConn), old...)
	}
	return client.New(ctx, conn, client.WithStallWindow(stall), client.WithRelayKey(r.Server.PublicKey()))
}
