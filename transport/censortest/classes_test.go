package censortest_test

// Every rule against a real Postern client: the error of an https or h3
// dial through a middlebox must have the class the rule stands for, since
// fallback routing acts on that class.

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/censortest"
	"github.com/postern/postern/transport/h3"
	"github.com/postern/postern/transport/https"
)

const (
	relayPath = "/api/v2/sync"
	relaySNI  = "relay.test"
	// dialBound bounds a dial the censor makes fail by silence; the
	// failure must come by then, and no test asserts on the time taken.
	dialBound = 2 * time.Second
	// patience bounds dials and reads that are to succeed.
	patience = 20 * time.Second
)

// relay is a loopback relay on one transport that echoes every session.
type relay struct {
	tr transport.Transport
	ep transport.Endpoint
}

func startRelay(t *testing.T, tr transport.Transport) relay {
	t.Helper()
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	cert, err := https.SelfSigned("127.0.0.1", relaySNI)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := https.CertPin(cert)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, transport.KeySize)
	rand.Read(key)
	ln, err := tr.Listen(t.Context(), transport.ListenConfig{Addr: "127.0.0.1:0", Certificate: cert, Path: relayPath, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return // closed at cleanup
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return relay{tr: tr, ep: transport.Endpoint{Transport: tr.Name(), Addr: ln.Addr().String(), SNI: relaySNI,
		Path: relayPath, Key: key, CertSHA256: pin}}
}

// dialVia dials r through the middlebox at addr within bound.
func dialVia(t *testing.T, r relay, addr string, bound time.Duration) (transport.Conn, error) {
	t.Helper()
	ep := r.ep
	ep.Addr = addr
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	c, err := r.tr.Dial(ctx, ep)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func expectClass(t *testing.T, err error, want transport.Class) {
	t.Helper()
	if err == nil {
		t.Fatalf("dial succeeded, want %v", want)
	}
	if got := transport.ClassOf(err); got != want {
		t.Errorf("class %v (%v), want %v", got, err, want)
	}
}

func echo(t *testing.T, c transport.Conn, n int) {
	t.Helper()
	msg := make([]byte, n)
	rand.Read(msg)
	go c.Write(msg)
	c.SetReadDeadline(time.Now().Add(patience))
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo of %d bytes: %v", n, err)
	}
}

func TestTCPRuleClasses(t *testing.T) {
	r := startRelay(t, &https.Transport{})
	cases := []struct {
		name string
		rule censortest.Rule
		want transport.Class // ClassUnknown: the dial succeeds
	}{
		{"Pass", censortest.Pass, transport.ClassUnknown},
		// A middlebox without root completes the TCP handshake, so what a
		// blackhole leaves the client is a TLS handshake never answered:
		// ClassTLS, as for a dropped ServerHello. The SYN-dropping
		// blackhole that gives ClassTimeout is the kernel-level one
		// (transport/censortest/netns, cmd/postern's probe and censor tests).
		{"Blackhole", censortest.Blackhole, transport.ClassTLS},
		{"ResetOnConnect", censortest.ResetOnConnect, transport.ClassReset},
		{"ResetOnSNI", censortest.ResetOnSNI(relaySNI), transport.ClassReset},
		{"ResetOnSNI other name", censortest.ResetOnSNI("other.test"), transport.ClassUnknown},
		{"DropOnSNI", censortest.DropOnSNI(relaySNI), transport.ClassTLS},
		{"DropOnSNI other name", censortest.DropOnSNI("other.test"), transport.ClassUnknown},
		{"DropServerHello", censortest.DropServerHello, transport.ClassTLS},
		{"GFWFullyEncrypted exempts TLS", censortest.GFWFullyEncrypted(1), transport.ClassUnknown},
		{"Throttle", censortest.Throttle(1 << 20), transport.ClassUnknown},
		{"All", censortest.All(censortest.Throttle(1<<20), censortest.GFWFullyEncrypted(1), censortest.DropOnSNI("other.test")), transport.ClassUnknown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := censortest.NewMiddlebox(t, r.ep.Addr)
			m.SetRule(tc.rule)
			bound := dialBound
			if tc.want == transport.ClassUnknown {
				bound = patience
			}
			c, err := dialVia(t, r, m.Addr(), bound)
			if tc.want != transport.ClassUnknown {
				expectClass(t, err, tc.want)
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			echo(t, c, 64<<10)
		})
	}
}

// TestFreezeAfterStalls: the session opens under the freeze limit, then
// stops moving: what was sent beyond the limit never comes back, and a
// read waits until the deadline (or, on a stream without deadlines, until
// Close). The session layer (relay/client) calls that ClassStalled.
func TestFreezeAfterStalls(t *testing.T) {
	r := startRelay(t, &https.Transport{})
	m := censortest.NewMiddlebox(t, r.ep.Addr)
	m.SetRule(censortest.FreezeAfter(censortest.DefaultFreezeLimit))
	c, err := dialVia(t, r, m.Addr(), patience)
	if err != nil {
		t.Fatalf("dial under the freeze limit: %v", err)
	}
	msg := make([]byte, 4*censortest.DefaultFreezeLimit)
	go c.Write(msg)
	if err := c.SetReadDeadline(time.Now().Add(dialBound)); err != nil {
		stop := time.AfterFunc(dialBound, func() { c.Close() })
		defer stop.Stop()
	}
	n, err := io.ReadFull(c, make([]byte, len(msg)))
	if n == len(msg) || err == nil {
		t.Fatalf("%d bytes came back through a freeze at %d", n, censortest.DefaultFreezeLimit)
	}
	t.Logf("read stopped after %d bytes: %v (class %v)", n, err, transport.ClassOf(err))
}

// TestGFWFullyEncryptedBlocksRandom: a client whose first payload looks
// random (what a fully encrypted protocol sends) is dropped, and its dial
// times out, while the same relay stays reachable over TLS.
func TestGFWFullyEncryptedBlocksRandom(t *testing.T) {
	r := startRelay(t, &https.Transport{})
	m := censortest.NewMiddlebox(t, r.ep.Addr)
	m.SetRule(censortest.GFWFullyEncrypted(1))
	raw := dialRaw(t, m.Addr())
	payload := make([]byte, 600)
	for i := range payload {
		payload[i] = []byte{0x0f, 0xf0, 0x99, 0xa5}[i%4]
	}
	if censortest.FullyEncryptedExemption(payload) != censortest.NotExempt {
		t.Fatal("the payload is exempt")
	}
	if _, err := raw.Write(payload); err != nil {
		t.Fatal(err)
	}
	raw.SetReadDeadline(time.Now().Add(dialBound))
	if n, err := raw.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %d bytes, %v; want a timeout", n, err)
	}
	if _, err := dialVia(t, r, m.Addr(), patience); err != nil {
		t.Fatalf("TLS dial through the same censor: %v", err)
	}
}

func TestUDPRuleClasses(t *testing.T) {
	r := startRelay(t, h3.New())
	cases := []struct {
		name string
		rule censortest.Rule
		want transport.Class
	}{
		{"Pass", censortest.Pass, transport.ClassUnknown},
		{"DropUDP", censortest.DropUDP, transport.ClassUDPSilent},
		{"Blackhole", censortest.Blackhole, transport.ClassUDPSilent},
		{"GFWQUIC other name", censortest.GFWQUIC("other.test"), transport.ClassUnknown},
		{"Throttle", censortest.Throttle(1 << 20), transport.ClassUnknown},
		{"TCP rules", censortest.All(censortest.ResetOnConnect, censortest.DropOnSNI(relaySNI), censortest.GFWFullyEncrypted(1)), transport.ClassUnknown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := censortest.NewUDPMiddlebox(t, r.ep.Addr)
			m.SetRule(tc.rule)
			if tc.want != transport.ClassUnknown {
				_, err := dialVia(t, r, m.Addr(), dialBound)
				expectClass(t, err, tc.want)
				return
			}
			c, err := dialVia(t, r, m.Addr(), patience)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			echo(t, c, 64<<10)
		})
	}
}

// TestGFWQUICPorts: the GFW blocks a QUIC flow with a blocked SNI only when
// the client's source port is at least the destination port. The h3 client
// picks its port at random, so each case takes the lowest (or highest)
// ported of several middleboxes and retries until the client's port fell
// on the wanted side; every dial's outcome is checked against its ports.
func TestGFWQUICPorts(t *testing.T) {
	r := startRelay(t, h3.New())
	for _, blocked := range []bool{true, false} {
		name := map[bool]string{true: "srcport >= dstport blocked", false: "srcport < dstport passes"}[blocked]
		t.Run(name, func(t *testing.T) {
			for try := range 8 {
				m := pickUDPMiddlebox(t, r.ep.Addr, blocked)
				m.SetRule(censortest.GFWQUIC(relaySNI))
				bound := patience
				if blocked {
					bound = dialBound
				}
				_, err := dialVia(t, r, m.Addr(), bound)
				flows := m.Flows()
				if len(flows) != 1 {
					t.Fatalf("%d flows through a fresh middlebox, want 1", len(flows))
				}
				high := flows[0].Client.Port() >= mustPort(t, m.Addr())
				if high {
					expectClass(t, err, transport.ClassUDPSilent)
				} else if err != nil {
					t.Fatalf("dial from a port below the middlebox's: %v", err)
				}
				if high == blocked {
					return
				}
				t.Logf("try %d: client port on the other side", try)
			}
			t.Fatal("the client's port never fell on the wanted side")
		})
	}
}

// pickUDPMiddlebox starts 8 middleboxes and returns the one with the
// lowest port (low) or the highest.
func pickUDPMiddlebox(t *testing.T, target string, low bool) *censortest.UDPMiddlebox {
	var best *censortest.UDPMiddlebox
	for range 8 {
		m := censortest.NewUDPMiddlebox(t, target)
		if best == nil || (mustPort(t, m.Addr()) < mustPort(t, best.Addr())) == low {
			best = m
		}
	}
	return best
}

func mustPort(t *testing.T, addr string) uint16 {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return ap.Port()
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
