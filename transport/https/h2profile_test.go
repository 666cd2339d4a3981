package https

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/censortest"
)

// TestHPACKMatchesChromium: encoding the header fields of every captured
// Chromium request with the client's encoder gives Chromium's bytes
// exactly (indexing choices, name references, Huffman coding).
func TestHPACKMatchesChromium(t *testing.T) {
	for _, role := range []string{"navigation", "fetch", "ip"} {
		t.Run(role, func(t *testing.T) {
			s := decodeStart(t, unhex(t, chromiumCapture(t, role).H2))
			enc := hpackEncoder{unindexed: browser.Current.HTTP2.Unindexed}
			var got []byte
			for _, f := range s.fields {
				got = enc.appendField(got, f.Name, f.Value)
			}
			if !bytes.Equal(got, s.block) {
				t.Fatalf("encoded\n%x\nChromium\n%x", got, s.block)
			}
		})
	}
}

// requestDependent are the fields whose values depend on the request (or,
// for user-agent, on the capture's headless mode): only their values may
// differ from the capture.
var requestDependent = []string{":authority", "origin", "referer", "cookie", "user-agent"}

// TestHTTP2MatchesChromium compares the start of the client's HTTP/2
// connection with Chromium's fetch() POST on a new connection: SETTINGS
// (ids, values, order), WINDOW_UPDATE, HEADERS flags and priority, the
// order of pseudo-headers and header fields, the values, and the lengths
// of the first application-data records.
func TestHTTP2MatchesChromium(t *testing.T) {
	chrome := chromiumCapture(t, "fetch")
	want := decodeStart(t, unhex(t, chrome.H2))
	addr, conns := startRecorder(t)
	dialRecorder(t, addr, "relay.example")
	rc := within(t, "recorded connection", conns)
	got := decodeStart(t, rc.plain.bytes())

	if !slices.Equal(got.settings, want.settings) {
		t.Errorf("SETTINGS %v, Chromium %v", got.settings, want.settings)
	}
	if got.window != want.window {
		t.Errorf("WINDOW_UPDATE %d, Chromium %d", got.window, want.window)
	}
	if got.headers.Flags != want.headers.Flags || got.headers.StreamID != want.headers.StreamID {
		t.Errorf("HEADERS %v, Chromium %v", got.headers.FrameHeader, want.headers.FrameHeader)
	}
	if got.headers.Priority != want.headers.Priority {
		t.Errorf("priority %+v, Chromium %+v", got.headers.Priority, want.headers.Priority)
	}
	compareFields(t, got.fields, want.fields)

	// The first application-data records: the client Finished, then
	// preface+SETTINGS+WINDOW_UPDATE, then HEADERS. Chromium's SETTINGS
	// ACK (timing) is not among them.
	chromeApp := slices.DeleteFunc(appRecords(t, chrome.Records), func(n int) bool { return n == 26 })
	gotApp := appRecords(t, recordList(rc.raw.bytes()))
	if len(gotApp) < 3 || len(chromeApp) < 3 {
		t.Fatalf("application-data records %v, Chromium %v", gotApp, chromeApp)
	}
	if !slices.Equal(gotApp[:2], chromeApp[:2]) {
		t.Errorf("first records %v, Chromium %v", gotApp[:2], chromeApp[:2])
	}
	// HEADERS: the same record but for the request-dependent values.
	if wantLen := chromeApp[2] + len(got.block) - len(want.block); gotApp[2] != wantLen {
		t.Errorf("HEADERS record %d bytes, want %d (Chromium's %d, values aside)", gotApp[2], wantLen, chromeApp[2])
	}
	t.Logf("records %v, Chromium %v; HEADERS block %d bytes, Chromium %d", gotApp[:3], chromeApp[:3], len(got.block), len(want.block))
}

// compareFields: the same names in the same order, the same values but
// for the request-dependent ones, and a User-Agent that is Chromium's but
// for the headless mode.
func compareFields(t *testing.T, got, want []hpack.HeaderField) {
	t.Helper()
	names := func(fs []hpack.HeaderField) []string {
		var out []string
		for _, f := range fs {
			out = append(out, f.Name)
		}
		return out
	}
	if !slices.Equal(names(got), names(want)) {
		t.Fatalf("header order\n%v\nChromium\n%v", names(got), names(want))
	}
	for i, f := range got {
		w := want[i]
		switch {
		case f.Name == "user-agent":
			if f.Value != strings.Replace(w.Value, "HeadlessChrome/", "Chrome/", 1) {
				t.Errorf("user-agent %q, Chromium %q", f.Value, w.Value)
			}
		case slices.Contains(requestDependent, f.Name):
		case f.Value != w.Value:
			t.Errorf("%s: %q, Chromium %q", f.Name, f.Value, w.Value)
		}
	}
}

// TestProfileMatchesCapture: the browser profile's HTTP/2 data is the
// capture's.
func TestProfileMatchesCapture(t *testing.T) {
	s := decodeStart(t, unhex(t, chromiumCapture(t, "fetch").H2))
	p := browser.Current.HTTP2
	var settings []http2.Setting
	for _, st := range p.Settings {
		settings = append(settings, http2.Setting{ID: http2.SettingID(st.ID), Val: st.Val})
	}
	if !slices.Equal(settings, s.settings) || p.WindowUpdate != s.window {
		t.Errorf("profile SETTINGS %v WINDOW_UPDATE %d, capture %v %d", settings, p.WindowUpdate, s.settings, s.window)
	}
	if int(s.headers.Priority.Weight)+1 != p.FetchWeight || !s.headers.Priority.Exclusive || s.headers.Priority.StreamDep != 0 {
		t.Errorf("profile weight %d, capture %+v", p.FetchWeight, s.headers.Priority)
	}
	for i, name := range p.PseudoHeaders {
		if s.fields[i].Name != name {
			t.Errorf("pseudo-header %d: profile %s, capture %s", i, name, s.fields[i].Name)
		}
	}
}

// TestNoSNIForIPLiteral: an endpoint at an IP address with no SNI sends no
// server_name, as Chromium does for an IP literal: the same JA4 as the
// capture ('i'); and a session still works.
func TestNoSNIForIPLiteral(t *testing.T) {
	addr, conns := startRecorder(t)
	dialRecorder(t, addr, "")
	rc := within(t, "recorded connection", conns)
	h, err := censortest.ParseClientHello(firstRecord(rc.raw.bytes()))
	if err != nil {
		t.Fatal(err)
	}
	chrome, err := censortest.ParseClientHello(unhex(t, chromiumCapture(t, "ip").ClientHello))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := h.Extension(censortest.ExtServerName); ok || h.ServerName != "" {
		t.Errorf("server_name %q sent to an IP literal", h.ServerName)
	}
	if got, want := censortest.JA4(h), censortest.JA4(chrome); got != want || want[3] != 'i' {
		t.Errorf("JA4 %s, Chromium's for an IP %s", got, want)
	}
	r := startRelay(t, &Transport{}, nil)
	serveEcho(r.ln)
	r.ep.SNI = ""
	echoOnce(t, r.ep)
}
