package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport/censortest"
)

// TestSendOverRTT is a load generator, not a check: it times `postern
// send`, and then `postern recv`, of one message (POSTERN_SEND_RTT_MIB MiB,
// default 2: 33 envelopes of 64 KiB; or POSTERN_SEND_RTT_KIB KiB) to a relay (memory store) over
// POSTERN_SEND_RTT_TRANSPORT (https, the default, or h3) behind a
// middlebox that adds POSTERN_SEND_RTT of round trip, and, alternately in
// the same run, with none (the floor beside it). It logs each run and
// asserts only that every message arrived. Run with
//
//	POSTERN_SEND_RTT=100ms go test -run '^TestSendOverRTT$' -v ./cmd/postern
func TestSendOverRTT(t *testing.T) {
	spec := os.Getenv("POSTERN_SEND_RTT")
	if spec == "" {
		t.Skip("a load generator: set POSTERN_SEND_RTT (for example 100ms)")
	}
	rtt, err := time.ParseDuration(spec)
	if err != nil || rtt <= 0 {
		t.Fatalf("POSTERN_SEND_RTT=%q: want a positive duration", spec)
	}
	size, unit := 2<<20, "2 MiB"
	if v := os.Getenv("POSTERN_SEND_RTT_MIB"); v != "" {
		mib, err := strconv.Atoi(v)
		if err != nil || mib < 1 || mib > 7 {
			t.Fatalf("POSTERN_SEND_RTT_MIB=%q: want 1 to 7", v)
		}
		size, unit = mib<<20, v+" MiB"
	}
	if v := os.Getenv("POSTERN_SEND_RTT_KIB"); v != "" {
		if os.Getenv("POSTERN_SEND_RTT_MIB") != "" {
			t.Fatal("POSTERN_SEND_RTT_MIB and POSTERN_SEND_RTT_KIB: set one")
		}
		kib, err := strconv.Atoi(v)
		if err != nil || kib < 1 || kib > 7<<10 {
			t.Fatalf("POSTERN_SEND_RTT_KIB=%q: want 1 to 7168", v)
		}
		size, unit = kib<<10, v+" KiB"
	}
	tr := os.Getenv("POSTERN_SEND_RTT_TRANSPORT")
	if tr == "" {
		tr = "https"
	}
	const runs = 3
	bin := buildBinary(t)
	dir := t.TempDir()
	relayAddr := freePort(t)
	var rp *relayProc
	var mb interface{ SetRule(censortest.Rule) }
	switch tr {
	case "https":
		tcp := censortest.NewMiddlebox(t, relayAddr)
		rp = startRelay(t, bin, filepath.Join(dir, "relay"), "--https", relayAddr, "--h3", "off", "--config", writeConfig(t, dir, tcp.Addr()))
		mb = tcp
	case "h3":
		udp := censortest.NewUDPMiddlebox(t, relayAddr)
		cfg := filepath.Join(dir, "relay.json")
		if err := os.WriteFile(cfg, []byte(`{"public_h3": "`+udp.Addr()+`", "store": "memory"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		rp = startRelay(t, bin, filepath.Join(dir, "relay"), "--https", freePort(t), "--h3", relayAddr, "--config", cfg)
		mb = udp
	default:
		t.Fatalf("POSTERN_SEND_RTT_TRANSPORT=%q: want https or h3", tr)
	}
	defer rp.stop()
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home, "POSTERN_TRANSPORT=" + tr}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", bob, "--relay", filepath.Join(rp.dir, "descriptor"))))
	msg := make([]byte, size)
	for i := range runs {
		for _, d := range []time.Duration{0, rtt} {
			rand.Read(msg)
			mb.SetRule(censortest.Latency(d))
			start := time.Now()
			runOK(t, bin, base, msg, "send", "--anonymous", "--to", card)
			took := time.Since(start)
			start = time.Now()
			out := runOK(t, bin, base, nil, "recv", "--id", bob)
			recvTook := time.Since(start)
			if got := parseRecv(t, out); len(got) != 1 || !bytes.Equal(got[0].body, msg) {
				t.Fatalf("run %d, rtt %v: received %d messages", i+1, d, len(got))
			}
			if d == 0 {
				t.Logf("run %d, %s: %s sent in %v, received in %v, with no added latency", i+1, tr, unit, took.Round(time.Millisecond), recvTook.Round(time.Millisecond))
			} else {
				t.Logf("run %d, %s: %s sent in %v (%.1f round trips), received in %v (%.1f), over a %v round trip", i+1, tr, unit,
					took.Round(time.Millisecond), float64(took)/float64(d), recvTook.Round(time.Millisecond), float64(recvTook)/float64(d), d)
			}
		}
	}
}
