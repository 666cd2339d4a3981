package censortest

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"runtime"
	"testing"
)

func TestMiddleboxRules(t *testing.T) {
	base := runtime.NumGoroutine()
	cases := []middleboxCase{
		{"DropOnSNI/drops blocked name silently", DropOnSNI("blocked.test"), tlsServer, checkTLSDropped("Blocked.test")},
		{"DropOnSNI/passes other name", DropOnSNI("blocked.test"), tlsServer, checkTLSPass("ok.test")},
		{"DropOnSNI/passes non-TLS", DropOnSNI("blocked.test"), echoServer, checkEcho},
		{"DropServerHello/never answers TLS", DropServerHello, tlsServer, checkTLSDropped("ok.test")},
		{"DropServerHello/passes non-TLS", DropServerHello, echoServer, checkEcho},
		{"GFWFullyEncrypted/passes TLS", GFWFullyEncrypted(1), tlsServer, checkTLSPass("ok.test")},
		{"GFWFullyEncrypted/passes HTTP", GFWFullyEncrypted(0), echoServer, checkEchoOf([]byte("GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n"))},
		{"GFWFullyEncrypted/drops random-looking", GFWFullyEncrypted(1), echoServer, checkDropped(randomLooking(600))},
		{"GFWFullyEncrypted/judges only the first payload", GFWFullyEncrypted(1), echoServer, checkFirstOnly},
		{"Throttle/transfer completes", Throttle(1 << 20), echoServer, checkEchoOf(randomBytes(256 << 10))},
		{"SetRule/Pass to Throttle mid-connection", Pass, echoServer, checkSwitchToThrottle},
		{"All/throttle and hello rule", All(Throttle(1<<20), DropOnSNI("blocked.test")), tlsServer, checkTLSPass("ok.test")},
		{"All/lowest rate", All(Throttle(1<<30), Pass, Throttle(1<<20)), echoServer, checkRate(1 << 20)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMiddlebox(t, tc.target(t))
			m.SetRule(tc.rule)
			tc.check(t, m)
		})
	}
	checkGoroutines(t, base)
}

// checkTLSDropped: the handshake gets no answer, and no RST either.
func checkTLSDropped(name string) func(*testing.T, *Middlebox) {
	return func(t *testing.T, m *Middlebox) {
		raw := dial(t, m)
		c := tls.Client(raw, &tls.Config{ServerName: name, RootCAs: testCert(t).pool})
		ctx, cancel := context.WithTimeout(t.Context(), quiet)
		defer cancel()
		err := c.HandshakeContext(ctx)
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("handshake for %s: %v, want a timeout", name, err)
		}
	}
}

func checkEchoOf(msg []byte) func(*testing.T, *Middlebox) {
	return func(t *testing.T, m *Middlebox) {
		c := dial(t, m)
		go c.Write(msg) // the echo writes back while we write
		expectRead(t, c, msg)
	}
}

func checkDropped(msg []byte) func(*testing.T, *Middlebox) {
	return func(t *testing.T, m *Middlebox) {
		c := dial(t, m)
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		expectQuiet(t, c)
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
			t.Fatalf("write after the block: %v", err)
		}
		expectQuiet(t, c)
	}
}

// checkFirstOnly: a TLS-looking first payload exempts the connection; what
// follows may look random.
func checkFirstOnly(t *testing.T, m *Middlebox) {
	c := dial(t, m)
	roundTrip(t, c, []byte("\x17\x03\x03\x00\x10 application"))
	roundTrip(t, c, randomLooking(600))
}

func checkSwitchToThrottle(t *testing.T, m *Middlebox) {
	c := dial(t, m)
	roundTrip(t, c, randomBytes(2048))
	m.SetRule(Throttle(1 << 20))
	checkEchoOf(randomBytes(64<<10))(t, m)
	roundTrip(t, c, randomBytes(64<<10))
}

// checkRate checks, without a clock, that a rule combined with All throttles
// at rate: the flow's bucket is made with it.
func checkRate(rate int64) func(*testing.T, *Middlebox) {
	return func(t *testing.T, m *Middlebox) {
		if got := m.current().rate(ServerToClient); got != rate {
			t.Fatalf("rate %d, want %d", got, rate)
		}
		checkEchoOf(randomBytes(4096))(t, m)
	}
}

// udpEcho starts a UDP echo on loopback until t's cleanup.
func udpEcho(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				pc.WriteTo(buf[:n], from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String()
}

func dialUDP(t *testing.T, m *UDPMiddlebox) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(mustAddrPort(t, m.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func udpRoundTrip(t *testing.T, c *net.UDPConn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	expectRead(t, c, msg)
}
