package netns

import (
	"errors"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// listenTCP serves on a free port of 127.0.0.1 and runs serve for each
// connection.
func listenTCP(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().String()
}

// dialFrom connects from src to dst within d.
func dialFrom(src, dst string, d time.Duration) (net.Conn, error) {
	dl := net.Dialer{Timeout: d, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return dl.Dial("tcp", dst)
}

// TestRules: each rule does at kernel level what it says, for the source
// it names only.
func TestRules(t *testing.T) {
	if !Run(t) {
		return
	}
	dst := listenTCP(t, func(c net.Conn) { c.Write([]byte("hi")) })
	cases := []struct {
		name string
		rule Rule
		want func(error) bool
	}{
		{"pass", "", func(err error) bool { return err == nil }},
		{"blackhole", Blackhole("tcp", "127.0.0.2", dst), isTimeout},
		{"reset", ResetOnConnect("127.0.0.2", dst), func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var rules []Rule
			if c.rule != "" {
				rules = append(rules, c.rule)
			}
			Apply(t, rules...)
			if _, err := dialFrom("127.0.0.2", dst, time.Second); !c.want(err) {
				t.Fatalf("dial from the censored source: %v", err)
			}
			conn, err := dialFrom("127.0.0.3", dst, 5*time.Second)
			if err != nil {
				t.Fatalf("another source is blocked too: %v", err)
			}
			conn.Close()
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestDropUDP: datagrams from the censored source vanish; others pass.
func TestDropUDP(t *testing.T) {
	if !Run(t) {
		return
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	Apply(t, DropUDP("127.0.0.2", pc.LocalAddr().String()))
	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(src))
		c.Close()
	}
	buf := make([]byte, 64)
	pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "127.0.0.3" {
		t.Fatalf("first datagram %q from %v: %v (want only the uncensored source's)", buf[:n], from, err)
	}
	pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, _, err := pc.ReadFrom(buf); err == nil {
		t.Fatalf("a datagram from the censored source passed: %q", buf[:n])
	}
}

// TestFreezeAfter: a flow carries its budget in the counted direction
// (less the IP and TCP headers) and then nothing more, while the
// connection stays open; a new connection gets a new budget.
func TestFreezeAfter(t *testing.T) {
	if !Run(t) {
		return
	}
	const budget = 16 << 10
	for _, dir := range []Direction{Downstream, Upstream} {
		name := map[Direction]string{Downstream: "downstream", Upstream: "upstream"}[dir]
		t.Run(name, func(t *testing.T) {
			got := make(chan int, 2)
			dst := listenTCP(t, func(c net.Conn) {
				if dir == Downstream {
					writeChunks(c, 64<<10)
					return
				}
				got <- readUntilSilent(c)
			})
			Apply(t, FreezeAfter("127.0.0.2", dst, dir, budget))
			for range 2 {
				c, err := dialFrom("127.0.0.2", dst, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if dir == Downstream {
					got <- readUntilSilent(c)
				} else {
					writeChunks(c, 64<<10)
				}
				n := <-got
				c.Close()
				t.Logf("%d bytes through a %d-byte budget", n, budget)
				if n > budget || n < budget-4096 {
					t.Fatalf("%d bytes got through a %d-byte budget", n, budget)
				}
			}
		})
	}
}

// writeChunks writes n bytes in 1 KiB writes with Nagle off, so segments
// stay small and the freeze lands within a chunk of the budget; it stops
// at the first write that does not complete within a second.
func writeChunks(c net.Conn, n int) {
	c.(*net.TCPConn).SetNoDelay(true)
	chunk := make([]byte, 1024)
	for sent := 0; sent < n; sent += len(chunk) {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(chunk); err != nil {
			return
		}
	}
}

// readUntilSilent reads until a second passes without data, and returns
// the byte count.
func readUntilSilent(c net.Conn) int {
	buf := make([]byte, 4096)
	total := 0
	for {
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		total += n
		if err != nil {
			return total
		}
	}
}

// TestThrottle: with a rate limit on the client address, the kernel's
// token bucket holds back (and counts as over limit) the bulk transfer,
// and the bytes still all arrive.
func TestThrottle(t *testing.T) {
	if !Run(t) {
		return
	}
	const size = 64 << 10
	dst := listenTCP(t, func(c net.Conn) { c.Write(make([]byte, size)) })
	Throttle(t, "127.0.0.2", 256_000)
	c, err := dialFrom("127.0.0.2", dst, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := io.Copy(io.Discard, c); n != size {
		t.Fatalf("read %d of %d bytes: %v", n, size, err)
	}
	out, err := exec.Command("tc", "-s", "class", "show", "dev", "lo", "classid", "1:2").CombinedOutput()
	if err != nil || !overLimit(string(out)) {
		t.Fatalf("the rate limit never held a packet back:\n%s %v", out, err)
	}
	Throttle(t, "127.0.0.2", 0)
}

// TestApplyRefusesOutsideNamespace: the host's firewall is never touched.
func TestApplyRefusesOutsideNamespace(t *testing.T) {
	if Inside(t) {
		t.Fatal("unexpectedly inside")
	}
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Apply(ft, Blackhole("tcp", "127.0.0.2", "127.0.0.1:1"))
	}()
	<-done
	if !ft.fatal {
		t.Fatal("Apply ran outside a test namespace")
	}
}

// fakeT records Fatalf and ends the goroutine like testing does.
type fakeT struct {
	testing.TB
	fatal bool
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(string, ...any) {
	f.fatal = true
	runtimeGoexit()
}

// overLimit reports whether tc's statistics for a class show a packet
// held back (a non-zero "overlimits" count).
func overLimit(stats string) bool {
	f := strings.Fields(stats)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "overlimits" && f[i+1] != "0" {
			return true
		}
	}
	return false
}
