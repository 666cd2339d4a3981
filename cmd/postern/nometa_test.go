package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/transport/descriptor"
)

// The leak scanner is relaytest's, shared with the relay packages' tests.
type needle = relaytest.Needle

var (
	addrNeedle  = relaytest.AddrNeedle
	bytesNeedle = relaytest.BytesNeedle
	findLeaks   = relaytest.FindLeaks
)

// TestNoMetadata runs a real relay process with debug logging, drives a
// workload from clients on 127.0.0.2 and 127.0.0.3 over both transports,
// and then searches the relay's logs, the error texts it sent, and every
// byte of its data directory for client addresses, mailbox ids, keys,
// envelope ids and refs.
func TestNoMetadata(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Skipf("cannot bind %s on this machine: %v", ip, err)
		}
		l.Close()
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	home := filepath.Join(dir, "home")
	// needles must appear nowhere; logNeedles not in logs and error texts.
	var needles, logNeedles []needle
	needles = append(needles, addrNeedle("client address 127.0.0.2", "127.0.0.2"), addrNeedle("client address 127.0.0.3", "127.0.0.3"))

	type client struct {
		ip, idFile, card string
		ident            *envelope.Identity
		mb               *mailboxState
	}
	clients := []*client{{ip: "127.0.0.2"}, {ip: "127.0.0.3"}}
	var clientErrs bytes.Buffer
	for i, c := range clients {
		envv := []string{"POSTERN_HOME=" + home, "POSTERN_BIND=" + c.ip}
		c.idFile = filepath.Join(home, []string{"alice", "bob"}[i]+".id")
		runOK(t, bin, envv, nil, "id", "new", "--out", c.idFile)
		c.card = strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--cap", "--id", c.idFile, "--relay", filepath.Join(rp.dir, "descriptor"))))
		var err error
		if c.ident, err = envelope.LoadIdentity(c.idFile); err != nil {
			t.Fatal(err)
		}
		if c.mb, err = loadMailbox(c.idFile); err != nil {
			t.Fatal(err)
		}
		p := c.ident.Public()
		// The relay must keep each mailbox's owner key to check signatures:
		// it may be in the store, never in logs or errors.
		logNeedles = append(logNeedles, bytesNeedle("mailbox owner key", c.mb.owner().Public().(ed25519.PublicKey)))
		needles = append(needles,
			bytesNeedle("mailbox id", c.mb.ID),
			bytesNeedle("send capability", c.mb.SendCap),
			bytesNeedle("sender key", p.Auth),
			bytesNeedle("x25519 key", p.X25519),
			bytesNeedle("x-wing key", p.XWing))
	}
	a, b := clients[0], clients[1]

	// CLI traffic both ways over both transports.
	for _, tr := range []string{"https", "h3"} {
		for _, pair := range [][2]*client{{a, b}, {b, a}} {
			envv := []string{"POSTERN_HOME=" + home, "POSTERN_BIND=" + pair[0].ip, "POSTERN_TRANSPORT=" + tr}
			runOK(t, bin, envv, []byte("metadata-free hello over "+tr), "send", "--id", pair[0].idFile, "--to", pair[1].card)
			envv[1] = "POSTERN_BIND=" + pair[1].ip
			if got := parseRecv(t, runOK(t, bin, envv, nil, "recv", "--id", pair[1].idFile)); len(got) != 1 {
				t.Fatalf("received %d messages", len(got))
			}
		}
	}

	// recv over lanes (DrainLanes' probes and parts over several
	// sessions at once), on a network known to throttle each flow.
	// Marked before each: lanes over loopback come fast, and may forget
	// the throttle (flowsFast).
	home1 := func(k string) string { return map[string]string{"POSTERN_HOME": home}[k] }
	throttled := func() {
		openFacts(&env{network: "nometa", stderr: io.Discard, getenv: home1}, parsedOrZero(rp.line).RelayID()).
			update(&env{stderr: io.Discard, getenv: home1}, func(f *netFacts) { f.Throttled = true })
	}
	// 600 KiB: lanes join once 32 KiB is found, and the first connection
	// works on meanwhile; with 100 KiB it had carried everything before a
	// second (h3) connection was up, once, under the full suite's load in
	// CI, and recv then used one connection.
	for _, tr := range []string{"https", "h3"} {
		throttled()
		big := make([]byte, 600<<10)
		rand.Read(big)
		envv := []string{"POSTERN_HOME=" + home, "POSTERN_BIND=" + a.ip, "POSTERN_TRANSPORT=" + tr}
		runOK(t, bin, envv, big, "send", "--id", a.idFile, "--to", b.card)
		cmd := exec.Command(bin, "recv", "--id", b.idFile, "--network", "nometa")
		cmd.Env = append(os.Environ(), "POSTERN_HOME="+home, "POSTERN_BIND="+b.ip, "POSTERN_TRANSPORT="+tr)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if got := parseRecv(t, out); err != nil || len(got) != 1 || !bytes.Equal(got[0].body, big) {
			t.Fatalf("recv over lanes (%s): %d messages, %v\n%s", tr, len(got), err, stderr.String())
		}
		if !strings.Contains(stderr.String(), "connections at once") {
			t.Fatalf("recv (%s) on a network known throttled used one connection:\n%s", tr, stderr.String())
		}
	}
	// recv --follow takes its backlog over lanes there too, then
	// subscribes.
	big := make([]byte, 600<<10)
	rand.Read(big)
	runOK(t, bin, []string{"POSTERN_HOME=" + home, "POSTERN_BIND=" + a.ip}, big, "send", "--id", a.idFile, "--to", b.card)
	throttled()
	fl := startFollow(t, bin, []string{"POSTERN_HOME=" + home, "POSTERN_BIND=" + b.ip}, b.idFile, "--network", "nometa")
	fl.expectMsg(big, "recv --follow over lanes")
	fl.waitStderr("connections at once")
	fl.stop()
	// It shows the sender's key, to its user; not an address.
	if l := findLeaks("recv --follow's stderr", []byte(fl.stderr.String()), needles[:2]); len(l) > 0 {
		t.Fatalf("%v", l)
	}

	// Library traffic where the test learns envelope ids and refs; some of
	// these stay undelivered so the store holds live data when scanned.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cardB, err := envelope.ParseCard(b.card)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []string{"https", "h3"} {
		e := &env{stdout: io.Discard, stderr: &clientErrs, getenv: func(k string) string {
			return map[string]string{"POSTERN_BIND": a.ip, "POSTERN_TRANSPORT": tr}[k]
		}}
		c, err := dialRelay(ctx, e, rp.line)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			sealed, err := envelope.Seal(cardB, a.ident, []byte("pending"), nil)
			if err != nil {
				t.Fatal(err)
			}
			o, err := envelope.Open(b.ident, sealed)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := c.Send(ctx, sealed, cardB.SendCap)
			if err != nil {
				t.Fatal(err)
			}
			needles = append(needles, bytesNeedle("envelope id", o.ID[:]))
			// A ref is the relay's own handle for a stored envelope (a keyed
			// hash of it), which the store indexes by.
			logNeedles = append(logNeedles, bytesNeedle("envelope ref", ref[:]))
		}
		// Error paths: each error text comes from the relay.
		if _, err := c.Send(ctx, must(envelope.Seal(cardB, a.ident, []byte("x"), nil)), nil); err == nil {
			t.Fatal("send without capability accepted")
		} else {
			clientErrs.WriteString(err.Error() + "\n")
		}
		_, stranger, _ := ed25519.GenerateKey(nil)
		if _, err := c.Fetch(ctx, stranger, b.mb.id(), 1); err == nil {
			t.Fatal("fetch by a stranger accepted")
		} else {
			clientErrs.WriteString(err.Error() + "\n")
		}
		if err := c.CreateMailbox(ctx, stranger, b.mb.id(), nil); err == nil {
			t.Fatal("taking over a mailbox id accepted")
		} else {
			clientErrs.WriteString(err.Error() + "\n")
		}
		c.Close()
	}
	// A prober on the https port gets the cover site (and is not logged).
	d, err := descriptor.Parse(rp.line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range d.Endpoints {
		if ep.Transport != "https" {
			continue
		}
		dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(b.ip)}, Timeout: 10 * time.Second}
		conn, err := tls.DialWithDialer(dialer, "tcp", ep.Addr, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, "GET "+ep.Path+" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
		io.Copy(io.Discard, conn)
		conn.Close()
	}
	if code := rp.stop(); code != 0 {
		t.Fatalf("relay exit %d", code)
	}

	var leaks []string
	all := append(append([]needle(nil), needles...), logNeedles...)
	leaks = append(leaks, findLeaks("relay log", []byte(rp.logs()), all)...)
	leaks = append(leaks, findLeaks("error text from the relay", clientErrs.Bytes(), all)...)
	files := 0
	filepath.WalkDir(rp.dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files++
		leaks = append(leaks, findLeaks("data file "+filepath.Base(path), data, needles)...)
		return nil
	})
	if files < 3 {
		t.Fatalf("only %d files in the data directory: the scan looked at nothing", files)
	}
	if !strings.Contains(rp.logs(), "session ended") {
		t.Fatalf("debug logging was not on; the log scan proves little:\n%s", rp.logs())
	}
	if len(leaks) > 0 {
		t.Fatalf("metadata leaked:\n%s", strings.Join(leaks, "\n"))
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
