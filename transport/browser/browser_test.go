package browser

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	utls "github.com/refraction-networking/utls"

	"github.com/postern/postern/transport/censortest"
)

func TestFetchPOST(t *testing.T) {
	p := &Chromium156
	got := p.FetchPOST("https://relay.test:8443", "application/octet-stream", "sid=abc")
	var names []string
	for _, h := range got {
		names = append(names, h.Name)
	}
	want := []string{
		"sec-ch-ua-platform", "user-agent", "sec-ch-ua", "content-type", "sec-ch-ua-mobile",
		"accept", "origin", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "referer",
		"accept-encoding", "accept-language", "cookie", "priority",
	}
	if !slices.Equal(names, want) {
		t.Fatalf("header order\n%q\nwant\n%q", names, want)
	}
	values := map[string]string{}
	for _, h := range got {
		values[h.Name] = h.Value
	}
	for name, v := range map[string]string{
		"origin":       "https://relay.test:8443",
		"referer":      "https://relay.test:8443/",
		"content-type": "application/octet-stream",
		"cookie":       "sid=abc",
		"user-agent":   p.UserAgent(),
	} {
		if values[name] != v {
			t.Errorf("%s = %q, want %q", name, values[name], v)
		}
	}
	// Without a cookie or a body type those fields are left out; the
	// profile itself is not changed by filling.
	if n := len(p.FetchPOST("https://a.test", "", "")); n != len(want)-2 {
		t.Errorf("%d headers without cookie and content type, want %d", n, len(want)-2)
	}
	if p.Header("origin") != "" || p.Header("x-missing") != "" {
		t.Error("profile placeholders were filled in place")
	}
}

// TestChromium156Identity: the User-Agent, the client hints and the
// ClientHello's captures all speak of the same build.
func TestChromium156Identity(t *testing.T) {
	p := &Chromium156
	major, _, _ := strings.Cut(p.Version, ".")
	if p.UserAgent() != "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/"+major+".0.0.0 Safari/537.36" {
		t.Errorf("User-Agent %q is not Chromium %s's reduced Linux form", p.UserAgent(), major)
	}
	if !strings.Contains(p.Header("sec-ch-ua-platform"), "Linux") {
		t.Errorf("sec-ch-ua-platform %q for a Linux build", p.Header("sec-ch-ua-platform"))
	}
	if got, want := p.Header("sec-ch-ua"), chromiumBrands(t, major); got != want {
		t.Errorf("sec-ch-ua %s, want %s", got, want)
	}
	for name := range chromiumCaptures(t) {
		if !strings.HasPrefix(name, "chromium-"+major+"-") {
			t.Errorf("capture %s is not of Chromium %s", name, major)
		}
	}
	if Current != &Chromium156 {
		t.Error("Current is not the newest profile")
	}
}

// chromiumBrands is the sec-ch-ua of a Chromium-branded build of the major
// version, with the GREASE brand Chromium derives from the version
// (components/embedder_support/user_agent_utils.cc, GenerateBrandVersionList).
func chromiumBrands(t *testing.T, major string) string {
	seed, err := strconv.Atoi(major)
	if err != nil {
		t.Fatal(err)
	}
	chars := []string{" ", "(", ":", "-", ".", "/", ")", ";", "=", "?", "_"}
	versions := []string{"8", "99", "24"}
	brands := make([]string, 2)
	brands[seed%2] = `"Not` + chars[seed%len(chars)] + "A" + chars[(seed+1)%len(chars)] + `Brand";v="` + versions[seed%len(versions)] + `"`
	brands[(seed+1)%2] = `"Chromium";v="` + major + `"`
	return strings.Join(brands, ", ")
}

func TestSpecErrors(t *testing.T) {
	h := Chromium156.Hello
	h.Extensions = append(slices.Clone(h.Extensions), "next_protocol_negotiation")
	if _, err := h.Spec(); err == nil || !strings.Contains(err.Error(), "next_protocol_negotiation") {
		t.Errorf("unknown extension: %v", err)
	}
	h = Chromium156.Hello
	h.TrustAnchors = []string{"1.x"}
	if _, err := h.Spec(); err == nil {
		t.Error("bad trust anchor id accepted")
	}
}

func TestTrustAnchorsData(t *testing.T) {
	got, err := trustAnchorsData([]string{"1.2", "200"})
	if err != nil {
		t.Fatal(err)
	}
	// Two IDs: 01 02, and 200 = 0x81 0x48 in base 128.
	if want := []byte{0, 6, 2, 1, 2, 2, 0x81, 0x48}; !slices.Equal(got, want) {
		t.Errorf("%x, want %x", got, want)
	}
	if _, err := trustAnchorsData([]string{strings.Repeat("1.", 255) + "1"}); err == nil {
		t.Error("a 256-byte trust anchor id accepted")
	}
	if _, err := trustAnchorsData([]string{""}); err == nil {
		t.Error("an empty trust anchor id accepted")
	}
	long := make([]string, 20000)
	for i := range long {
		long[i] = "123456789"
	}
	if _, err := trustAnchorsData(long); err == nil {
		t.Error("a trust anchor list over 64 KiB accepted")
	}
}

func TestRandomGREASE(t *testing.T) {
	seen := map[uint16]bool{}
	for range 200 {
		v, err := randomGREASE()
		if err != nil {
			t.Fatal(err)
		}
		if !censortest.IsGREASE(v) {
			t.Fatalf("%#04x is not a GREASE value", v)
		}
		seen[v] = true
	}
	if len(seen) < 8 {
		t.Errorf("only %d distinct GREASE values in 200 draws", len(seen))
	}
}

// BenchmarkNewUConnChrome measures building the Chrome ClientHello,
// including its X25519MLKEM768 and X25519 key generation.
func BenchmarkNewUConnChrome(b *testing.B) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	cfg := &utls.Config{ServerName: testHost}
	for b.Loop() {
		if _, err := NewUConn(c1, cfg, PresetChrome); err != nil {
			b.Fatal(err)
		}
	}
}
