package https

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/censortest"
)

// captureHello dials the https transport at a listener that records the
// raw ClientHello records and hangs up.
func captureHello(t *testing.T, preset string) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		// Read whole records until they hold the complete handshake
		// message (4-byte header plus the length it declares).
		var rec, payload []byte
		for len(payload) < 4 || len(payload) < 4+(int(payload[1])<<16|int(payload[2])<<8|int(payload[3])) {
			var hdr [5]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				break
			}
			body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
			if _, err := io.ReadFull(c, body); err != nil {
				break
			}
			rec = append(append(rec, hdr[:]...), body...)
			payload = append(payload, body...)
		}
		got <- rec
	}()
	key := make([]byte, transport.KeySize)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = (&Transport{}).Dial(ctx, transport.Endpoint{Transport: Name, Addr: ln.Addr().String(), SNI: "relay.example",
		Path: "/s", Key: key, CertSHA256: make([]byte, 32), Fingerprint: preset})
	if err == nil {
		t.Fatal("dial to a capture listener succeeded")
	}
	return <-got
}

// TestClientHelloMatchesChromium: the https transport's ClientHello, as a
// censor would see it on the wire, has the JA4 of the committed Chromium
// capture, the browser's cipher list and extension set, X25519MLKEM768 and
// ALPN h2,http/1.1, with GREASE. Custom config cannot silently break this.
func TestClientHelloMatchesChromium(t *testing.T) {
	rec := captureHello(t, "")
	h, err := censortest.ParseClientHello(rec)
	if err != nil {
		t.Fatalf("parse captured hello (%d bytes): %v", len(rec), err)
	}
	if got, want := censortest.JA4(h), browser.Current.JA4; got != want {
		t.Fatalf("JA4 %s, want Chromium's %s\nraw: %s", got, want, censortest.JA4R(h))
	}
	if !slices.Equal(h.ALPN, []string{"h2", "http/1.1"}) {
		t.Fatalf("ALPN %v", h.ALPN)
	}
	if !slices.Contains(h.SupportedGroups, 0x11ec) {
		t.Fatalf("no X25519MLKEM768 in groups %x", h.SupportedGroups)
	}
	if !h.GREASE.Any() {
		t.Fatal("no GREASE")
	}
	if h.ServerName != "relay.example" {
		t.Fatalf("SNI %q", h.ServerName)
	}
	// The older preset is still available and differs.
	old, err := censortest.ParseClientHello(captureHello(t, "chrome133"))
	if err != nil {
		t.Fatal(err)
	}
	if censortest.JA4(old) == browser.Current.JA4 {
		t.Fatal("chrome133 preset has the current Chromium JA4; the comparison proves nothing")
	}
	t.Logf("https client JA4: %s", censortest.JA4(h))
}

// TestSessionPerPreset: every preset completes a session with a channel-bound
// token (uTLS refuses key export when renegotiation is enabled, so the
// presets must keep it off), and then another to the same endpoint, with
// the session ticket the first brought in the cache (until 2026-12-07 the
// chrome133 preset panicked there: its spec has no pre_shared_key, and
// uTLS panics on a session to resume without one; the test saw it only
// when a port was used again by the next subtest's relay).
func TestSessionPerPreset(t *testing.T) {
	for _, preset := range []string{"", "chrome", "chrome133"} {
		t.Run("preset="+preset, func(t *testing.T) {
			r := startRelay(t, &Transport{}, nil)
			serveEcho(r.ln)
			ep := r.ep
			ep.Fingerprint = preset
			for i := range 2 {
				c := dial(t, ep)
				if _, err := c.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				// The echo comes after the ticket: it is cached.
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
					t.Fatalf("session %d: echo %q, %v", i+1, buf, err)
				}
				c.Close()
			}
		})
	}
}
