package h3_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/h3"
)

// Capturing Chromium is a maintenance step, never run by CI:
//
//	go test ./transport/h3 -run TestCaptureChromium -chromium chromium -v
//
// writes testdata/chromium-MAJOR-quic-N.txt (see testdata/README.md).
var (
	chromiumBin = flag.String("chromium", "", "capture Chromium's QUIC flight with this binary (TestCaptureChromium)")
	captureN    = flag.Int("chromium-captures", 3, "number of Chromium captures")
)

// recordBound bounds one recording; a client that stalls fails the test
// instead of hanging it. Nothing is asserted about how long it took.
const recordBound = 60 * time.Second

// TestCaptureChromium records Chromium's first QUIC flight and SETTINGS
// against a local recorder and writes them to testdata.
func TestCaptureChromium(t *testing.T) {
	if *chromiumBin == "" {
		t.Skip("no -chromium binary given")
	}
	out, err := exec.Command(*chromiumBin, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", *chromiumBin, err)
	}
	version := regexp.MustCompile(`\d+\.\d+\.\d+\.\d+`).FindString(string(out))
	major, _, _ := strings.Cut(version, ".")
	for i := 1; i <= *captureN; i++ {
		f, args := recordChromium(t)
		name := filepath.Join("testdata", fmt.Sprintf("chromium-%s-quic-%d.txt", major, i))
		if err := os.WriteFile(name, encodeFlight(f), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s: %d datagrams, %d SETTINGS bytes", name, len(f.Initial), len(f.Settings))
		if i == 1 {
			t.Logf("chromium %s; command: %s %s", version, *chromiumBin, strings.Join(args, " "))
		}
	}
}

// recordChromium runs Chromium headless against a fresh recorder, with
// recordSNI mapped to 127.0.0.1 (Chromium sends no SNI to an IP literal),
// and kills its process group once the flight is recorded.
func recordChromium(t *testing.T) (flight, []string) {
	rec := newRecorder(t)
	_, port, _ := strings.Cut(rec.Addr(), ":")
	args := []string{
		"--no-sandbox", "--headless", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(),
		"--enable-quic", "--origin-to-force-quic-on=" + recordSNI + ":" + port,
		"--host-resolver-rules=MAP " + recordSNI + " 127.0.0.1",
		"--ignore-certificate-errors",
		"--ignore-certificate-errors-spki-list=" + base64.StdEncoding.EncodeToString(rec.pin),
		"https://" + recordSNI + ":" + port + "/",
	}
	cmd := exec.Command(*chromiumBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	ctx, cancel := context.WithTimeout(t.Context(), recordBound)
	defer cancel()
	f, err := rec.wait(ctx)
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return f, args
}

// recordPostern dials the h3 transport at a recorder (pinning its
// certificate, so the handshake completes and SETTINGS are sent).
func recordPostern(t *testing.T) flight {
	rec := newRecorder(t)
	ctx, cancel := context.WithTimeout(t.Context(), recordBound)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := h3.New().Dial(ctx, transport.Endpoint{Transport: h3.Name, Addr: rec.Addr(), SNI: recordSNI,
			Path: "/api", Key: make([]byte, transport.KeySize), CertSHA256: rec.pin})
		if err == nil {
			c.Close() // the recorder answers no request; never here
		}
	}()
	f, err := rec.wait(ctx)
	cancel()
	<-done
	if err != nil {
		t.Fatalf("h3 client: %v", err)
	}
	return f
}

// encodeFlight writes a flight as text: one "initial HEX" line per
// datagram, then one "settings HEX" line.
func encodeFlight(f flight) []byte {
	var b strings.Builder
	for _, d := range f.Initial {
		fmt.Fprintf(&b, "initial %x\n", d)
	}
	fmt.Fprintf(&b, "settings %x\n", f.Settings)
	return []byte(b.String())
}

func readFlight(name string) (flight, error) {
	var f flight
	file, err := os.Open(name)
	if err != nil {
		return f, err
	}
	defer file.Close()
	s := bufio.NewScanner(file)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		kind, h, ok := strings.Cut(s.Text(), " ")
		b, err := hex.DecodeString(h)
		if !ok || err != nil {
			return f, fmt.Errorf("%s: bad line %q", name, s.Text())
		}
		switch kind {
		case "initial":
			f.Initial = append(f.Initial, b)
		case "settings":
			f.Settings = b
		}
	}
	return f, s.Err()
}

// chromiumFlights returns the committed Chromium captures, by file name.
func chromiumFlights(t *testing.T) map[string]*fingerprint {
	names, _ := filepath.Glob(filepath.Join("testdata", "chromium-*-quic-*.txt"))
	if len(names) == 0 {
		t.Fatal("no testdata/chromium-*-quic-*.txt captures")
	}
	out := make(map[string]*fingerprint)
	for _, name := range names {
		f, err := readFlight(name)
		if err != nil {
			t.Fatal(err)
		}
		fp, err := decodeFlight(f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[filepath.Base(name)] = fp
	}
	return out
}

func describe(fp *fingerprint) string {
	return fmt.Sprintf("JA4 %s\n datagrams %v (%d Initial packets, first PN %d), DCID %d B, SCID %d B\n"+
		" ALPN %q SNI %q extensions %d B\n groups %04x key shares %04x\n extensions %04x\n"+
		" transport parameters: %s\n SETTINGS: %s",
		fp.JA4, fp.Datagrams, fp.Packets, fp.FirstPN, fp.DCIDLen, fp.SCIDLen, fp.ALPN, fp.ServerName,
		fp.ExtBytes, fp.Groups, fp.KeyShares, fp.Extensions,
		paramString(fp.Params, false), paramString(fp.Settings, true))
}

// TestDescribeFlights logs Postern's flight and every Chromium capture.
func TestDescribeFlights(t *testing.T) {
	fp, err := decodeFlight(recordPostern(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("postern:\n%s", describe(fp))
	names, _ := filepath.Glob(filepath.Join("testdata", "chromium-*-quic-*.txt"))
	for _, name := range names {
		f, err := readFlight(name)
		if err != nil {
			t.Fatal(err)
		}
		fp, err := decodeFlight(f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s:\n%s", name, describe(fp))
	}
}

// shapedParams are the transport parameters whose values the h3 client
// takes from Chromium.
var shapedParams = []uint64{
	0x01,             // max_idle_timeout
	0x04,             // initial_max_data
	0x05, 0x06, 0x07, // initial_max_stream_data_bidi_local, _bidi_remote, _uni
	0x08, 0x09, // initial_max_streams_bidi, _uni
	0x0f, // initial_source_connection_id (empty)
}

// presentParams are sent by both, with values quic-go fixes.
var presentParams = []uint64{0x20} // max_datagram_frame_size

// TestInitialLikeChromium compares the h3 client's first flight with every
// Chromium capture, field by field where quic-go lets the client choose,
// and logs what still differs (see testdata/README.md).
func TestInitialLikeChromium(t *testing.T) {
	ours, err := decodeFlight(recordPostern(t))
	if err != nil {
		t.Fatal(err)
	}
	for name, chrome := range chromiumFlights(t) {
		t.Run(name, func(t *testing.T) {
			compareShaped(t, ours, chrome)
			compareParams(t, ours, chrome)
			compareSettings(t, ours, chrome)
			logDifferences(t, ours, chrome)
		})
	}
}

func compareShaped(t *testing.T, ours, chrome *fingerprint) {
	t.Helper()
	checks := []struct {
		what      string
		got, want any
	}{
		{"datagram sizes", ours.Datagrams, chrome.Datagrams},
		{"source connection ID length", ours.SCIDLen, chrome.SCIDLen},
		{"ALPN", ours.ALPN, chrome.ALPN},
		{"SNI", ours.ServerName, chrome.ServerName},
		{"supported_groups", ours.Groups, chrome.Groups},
		{"key_share groups", ours.KeyShares, chrome.KeyShares},
		{"JA4 cipher hash", strings.Split(ours.JA4, "_")[1], strings.Split(chrome.JA4, "_")[1]},
		{"JA4 protocol, version, SNI, ciphers, ALPN", jaPrefix(ours.JA4), jaPrefix(chrome.JA4)},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: postern %v, chromium %v", c.what, c.got, c.want)
		}
	}
}

// jaPrefix is JA4's first part without the extension count: "q13d03" and
// the ALPN letters.
func jaPrefix(ja4 string) string {
	a, _, _ := strings.Cut(ja4, "_")
	if len(a) < 10 {
		return a
	}
	return a[:6] + a[8:]
}

func compareParams(t *testing.T, ours, chrome *fingerprint) {
	t.Helper()
	o, c := byID(ours.Params, false), byID(chrome.Params, false)
	for _, id := range shapedParams {
		po, okO := o[id]
		pc, okC := c[id]
		if okO != okC || po.Num != pc.Num || string(po.Raw) != string(pc.Raw) {
			t.Errorf("transport parameter %s: postern %v (%v), chromium %v (%v)", paramNames[id], po.Num, okO, pc.Num, okC)
		}
	}
	for _, id := range presentParams {
		if _, ok := o[id]; !ok {
			t.Errorf("transport parameter %s missing (chromium sends %d)", paramNames[id], c[id].Num)
		}
	}
}

func compareSettings(t *testing.T, ours, chrome *fingerprint) {
	t.Helper()
	o, c := byID(ours.Settings, true), byID(chrome.Settings, true)
	if fmt.Sprint(o) != fmt.Sprint(c) { // fmt sorts map keys
		t.Errorf("SETTINGS: postern %s, chromium %s", paramString(ours.Settings, true), paramString(chrome.Settings, true))
	}
	grease := func(ps []param) int {
		return len(slices.DeleteFunc(slices.Clone(ps), func(p param) bool { return !isReservedParam(p.ID, true) }))
	}
	if grease(ours.Settings) != grease(chrome.Settings) {
		t.Errorf("GREASE settings: postern %d, chromium %d", grease(ours.Settings), grease(chrome.Settings))
	}
}

// logDifferences logs what quic-go and crypto/tls do not let the client
// choose.
func logDifferences(t *testing.T, ours, chrome *fingerprint) {
	t.Helper()
	t.Logf("JA4: postern %s, chromium %s", ours.JA4, chrome.JA4)
	t.Logf("destination connection ID: postern %d bytes (quic-go: random 8-20), chromium %d", ours.DCIDLen, chrome.DCIDLen)
	t.Logf("first packet number: postern %d, chromium %d", ours.FirstPN, chrome.FirstPN)
	t.Logf("extensions only postern sends: %04x; only chromium: %04x",
		missing(ours.Extensions, chrome.Extensions), missing(chrome.Extensions, ours.Extensions))
	o, c := byID(ours.Params, false), byID(chrome.Params, false)
	for _, id := range sortedIDs(o, c) {
		po, okO := o[id]
		pc, okC := c[id]
		if okO != okC || string(po.Raw) != string(pc.Raw) && !slices.Contains(shapedParams, id) {
			t.Logf("transport parameter %s: postern %s, chromium %s", nameOf(id), showParam(po, okO), showParam(pc, okC))
		}
	}
	t.Logf("SETTINGS order: postern %s; chromium %s", paramString(ours.Settings, true), paramString(chrome.Settings, true))
}

func missing(a, b []uint16) []uint16 {
	return slices.DeleteFunc(slices.Clone(a), func(x uint16) bool { return slices.Contains(b, x) })
}

func sortedIDs(ms ...map[uint64]param) []uint64 {
	var ids []uint64
	for _, m := range ms {
		for id := range m {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids
}

func nameOf(id uint64) string {
	if n, ok := paramNames[id]; ok {
		return n
	}
	return fmt.Sprintf("%#x", id)
}

func showParam(p param, ok bool) string {
	switch {
	case !ok:
		return "absent"
	case p.IsNum:
		return fmt.Sprint(p.Num)
	}
	return fmt.Sprintf("%x", p.Raw)
}
