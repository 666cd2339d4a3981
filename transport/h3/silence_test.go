package h3

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

// TestUDPSilence: a QUIC handshake that runs out of time is ClassUDPSilent
// only if no datagram at all came back; a peer that answers with junk
// (something is there, it is just not a relay) is a plain timeout.
func TestUDPSilence(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	junk, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer junk.Close()
	go func() { // answers every datagram with one that is no QUIC packet quic-go can use
		buf := make([]byte, 2048)
		for {
			_, from, err := junk.ReadFrom(buf)
			if err != nil {
				return
			}
			junk.WriteTo([]byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, from)
		}
	}()
	cases := []struct {
		name string
		addr string
		want transport.Class
	}{
		{"nothing comes back", silent.LocalAddr().String(), transport.ClassUDPSilent},
		{"junk comes back", junk.LocalAddr().String(), transport.ClassTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			c, err := New().Dial(ctx, transport.Endpoint{Transport: Name, Addr: tc.addr, SNI: "relay.test",
				Path: "/p", Key: make([]byte, transport.KeySize)})
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if got := transport.ClassOf(err); got != tc.want {
				t.Fatalf("class %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}
