package censortest

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

func mustAddrPort(t testing.TB, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func TestUDPMiddlebox(t *testing.T) {
	base := runtime.NumGoroutine()
	cases := []struct {
		name  string
		rule  Rule
		check func(t *testing.T, m *UDPMiddlebox)
	}{
		{"Pass/echoes", Pass, func(t *testing.T, m *UDPMiddlebox) { udpRoundTrip(t, dialUDP(t, m), []byte("hello")) }},
		{"DropUDP/drops", DropUDP, checkUDPDropped},
		{"Blackhole/drops", Blackhole, checkUDPDropped},
		{"TCP rules pass UDP", All(FreezeAfter(1), ResetOnConnect, DropOnSNI("example.com"), GFWFullyEncrypted(1)),
			func(t *testing.T, m *UDPMiddlebox) { udpRoundTrip(t, dialUDP(t, m), randomLooking(2000)) }},
		{"SetRule/Pass to DropUDP mid-flow", Pass, checkUDPSwitch},
		{"Throttle/polices", Throttle(MinThrottleBurst), checkUDPThrottle},
		{"Latency/delays a round trip, keeps the datagrams", Latency(100 * time.Millisecond), checkUDPLatency(100 * time.Millisecond)},
		{"GFWQUIC/blocks when srcport >= dstport", GFWQUIC("EXAMPLE.com"), checkQUICVerdict(true, true)},
		{"GFWQUIC/passes when srcport < dstport", GFWQUIC("example.com"), checkQUICVerdict(false, false)},
		{"GFWQUIC/passes other name", GFWQUIC("other.test"), checkQUICVerdict(true, false)},
		{"GFWQUIC/passes non-QUIC", GFWQUIC("example.com"), func(t *testing.T, m *UDPMiddlebox) {
			c := dialUDP(t, m)
			udpRoundTrip(t, c, randomBytes(1200))
			udpRoundTrip(t, c, rfc9001Packet(t)) // no longer a first datagram
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := NewUDPMiddlebox(t, udpEcho(t))
			m.SetRule(tc.rule)
			tc.check(t, m)
		})
	}
	t.Run("flow cap", testUDPFlowCap)
	t.Run("idle flows expire", testUDPIdle)
	checkGoroutines(t, base)
}

// checkUDPLatency checks that a round trip costs at least rtt, and that datagrams sent while
// earlier ones are still delayed all come back, in order.
func checkUDPLatency(rtt time.Duration) func(*testing.T, *UDPMiddlebox) {
	return func(t *testing.T, m *UDPMiddlebox) {
		c := dialUDP(t, m)
		tookAtLeast(t, rtt, func() { udpRoundTrip(t, c, []byte("ping")) })
		var sent [][]byte
		for range 32 {
			p := randomBytes(1200)
			sent = append(sent, p)
			if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range sent {
			expectRead(t, c, p)
		}
	}
}

func checkUDPDropped(t *testing.T, m *UDPMiddlebox) {
	c := dialUDP(t, m)
	if _, err := c.Write([]byte("anyone there?")); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, c)
}

func checkUDPSwitch(t *testing.T, m *UDPMiddlebox) {
	c := dialUDP(t, m)
	udpRoundTrip(t, c, []byte("before"))
	m.SetRule(DropUDP)
	checkUDPDropped(t, m)
	if _, err := c.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, c)
	m.SetRule(Pass)
	udpRoundTrip(t, c, []byte("after the switch back"))
}

// checkUDPThrottle sends 20 datagrams of 1000 bytes at once through a
// bucket of 1500: the first passes (both ways), most do not. The rest would
// take the bucket over ten seconds to refill.
func checkUDPThrottle(t *testing.T, m *UDPMiddlebox) {
	c := dialUDP(t, m)
	msg := randomBytes(1000)
	for range 20 {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	expectRead(t, c, msg)
	got := 1
	buf := make([]byte, 2000)
	for got < 20 {
		c.SetReadDeadline(time.Now().Add(quiet))
		if _, err := c.Read(buf); err != nil {
			break
		}
		got++
	}
	if got >= 10 {
		t.Errorf("%d of 20 datagrams passed a bucket of %d bytes", got, MinThrottleBurst)
	}
}

// checkQUICVerdict sends RFC 9001's Initial (SNI example.com) from a
// client port at least (high) or below the middlebox's, and expects the
// echo dropped (blocked) or not.
func checkQUICVerdict(high, blocked bool) func(*testing.T, *UDPMiddlebox) {
	return func(t *testing.T, m *UDPMiddlebox) {
		c := udpClientPort(t, m, high)
		if _, err := c.Write(rfc9001Packet(t)); err != nil {
			t.Fatal(err)
		}
		if !blocked {
			expectRead(t, c, rfc9001Packet(t))
			udpRoundTrip(t, c, []byte("later"))
			return
		}
		expectQuiet(t, c)
		if fl := m.Flows(); len(fl) != 1 || !fl[0].Blocked {
			t.Fatalf("flows %v, want one blocked", fl)
		}
		if _, err := c.Write([]byte("later")); err != nil {
			t.Fatal(err)
		}
		expectQuiet(t, c)
		m.SetRule(Pass)
		expectQuiet(t, c) // the block outlives the rule
	}
}

// udpClientPort binds client sockets on port 0 until one has a port at
// least the middlebox's (high) or below it; the kernel picks ephemeral
// ports at random, so a few tries do.
func udpClientPort(t *testing.T, m *UDPMiddlebox, high bool) *net.UDPConn {
	t.Helper()
	for range 1000 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
		c.Close()
		if (port >= m.port) != high {
			continue
		}
		conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)},
			net.UDPAddrFromAddrPort(mustAddrPort(t, m.Addr())))
		if err != nil {
			continue // taken meanwhile
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	t.Skipf("no client port %s the middlebox's %d in 1000 tries", map[bool]string{true: ">=", false: "<"}[high], m.port)
	return nil
}

func testUDPFlowCap(t *testing.T) {
	m := newUDPMiddlebox(t, udpEcho(t), 2, UDPFlowIdle)
	a, b, c := dialUDP(t, m), dialUDP(t, m), dialUDP(t, m)
	udpRoundTrip(t, a, []byte("a"))
	udpRoundTrip(t, b, []byte("b"))
	if _, err := c.Write([]byte("c")); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, c)
	udpRoundTrip(t, a, []byte("a again"))
}

// testUDPIdle: with a short idle timeout a flow closes by itself, and the
// same client gets a new one.
func testUDPIdle(t *testing.T) {
	m := newUDPMiddlebox(t, udpEcho(t), MaxUDPFlows, 20*time.Millisecond)
	c := dialUDP(t, m)
	udpRoundTrip(t, c, []byte("x"))
	for i := 0; len(m.Flows()) > 0; i++ {
		if i == 500 {
			t.Fatal("the idle flow never closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	udpRoundTrip(t, c, []byte("y"))
	if n := len(m.Flows()); n != 1 {
		t.Fatalf("%d flows, want 1", n)
	}
}
