package cover

import (
	"bytes"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func serve(h http.Handler, req *http.Request) *http.Response {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func TestDefault(t *testing.T) {
	h := Default()
	lm := LastModified.Format(http.TimeFormat)
	tests := []struct {
		method, path string
		status       int
		ctype        string
		contains     string
	}{
		{"GET", "/", 200, "text/html; charset=utf-8", "Bookbinding Studio"},
		{"GET", "/about", 200, "text/html; charset=utf-8", "About the studio"},
		{"GET", "/style.css", 200, "text/css; charset=utf-8", "font-family"},
		{"GET", "/robots.txt", 200, "text/plain; charset=utf-8", "User-agent: *"},
		{"GET", "/favicon.ico", 200, "image/x-icon", "\x00\x00\x01\x00"},
		{"HEAD", "/", 200, "text/html; charset=utf-8", ""},
		{"GET", "/nope", 404, "text/html; charset=utf-8", "Page not found"},
		{"POST", "/api/session", 404, "text/html; charset=utf-8", "Page not found"},
		{"POST", "/", 405, "text/plain; charset=utf-8", "Method Not Allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			resp := serve(h, httptest.NewRequest(tc.method, tc.path, nil))
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if got := resp.Header.Get("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type %q, want %q", got, tc.ctype)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("body does not contain %q", tc.contains)
			}
			if tc.method == "HEAD" && len(body) != 0 {
				t.Errorf("HEAD returned a body of %d bytes", len(body))
			}
			if tc.status == 200 {
				if got := resp.Header.Get("Last-Modified"); got != lm {
					t.Errorf("Last-Modified %q, want %q", got, lm)
				}
				if et := resp.Header.Get("ETag"); len(et) != 18 || et[0] != '"' {
					t.Errorf("ETag %q, want a quoted 16-hex-digit tag", et)
				}
			}
		})
	}
}

// The built-in site must answer the same way every time and on every
// instance: a relay restart must not change what probers see.
func TestDefaultDeterministic(t *testing.T) {
	a, b := Default(), Default()
	for p := range routes {
		ra := serve(a, httptest.NewRequest("GET", p, nil))
		rb := serve(b, httptest.NewRequest("GET", p, nil))
		ba, _ := io.ReadAll(ra.Body)
		bb, _ := io.ReadAll(rb.Body)
		if !bytes.Equal(ba, bb) {
			t.Errorf("%s: bodies differ", p)
		}
		for _, k := range []string{"Content-Type", "Content-Length", "Last-Modified", "ETag", "Accept-Ranges", "Cache-Control"} {
			if ra.Header.Get(k) != rb.Header.Get(k) {
				t.Errorf("%s: header %s differs: %q vs %q", p, k, ra.Header.Get(k), rb.Header.Get(k))
			}
		}
	}
}

func TestDefaultConditional(t *testing.T) {
	h := Default()
	first := serve(h, httptest.NewRequest("GET", "/", nil))
	etag := first.Header.Get("ETag")

	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("If-None-Match", etag)
	if resp := serve(h, req); resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: status %d, want 304", resp.StatusCode)
	}
	req = httptest.NewRequest("GET", "/", nil)
	req.Header.Set("If-Modified-Since", LastModified.Add(time.Hour).Format(http.TimeFormat))
	if resp := serve(h, req); resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-Modified-Since: status %d, want 304", resp.StatusCode)
	}
	req = httptest.NewRequest("GET", "/robots.txt", nil)
	req.Header.Set("Range", "bytes=0-9")
	resp := serve(h, req)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || string(body) != "User-agent" {
		t.Errorf("Range: status %d body %q, want 206 %q", resp.StatusCode, body, "User-agent")
	}
}

// Cover handlers must not write to the process log.
func TestNoLogging(t *testing.T) {
	var buf bytes.Buffer
	log.SetOutput(&buf)
	defer log.SetOutput(os.Stderr)

	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	upURL := up.URL
	up.Close() // the proxy's upstream is now down: it answers 502
	p, err := Proxy(upURL, false)
	if err != nil {
		t.Fatal(err)
	}
	site, err := Generate([]byte("a seed of at least sixteen bytes"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []http.Handler{Default(), p, site} {
		for _, path := range []string{"/", "/missing", "/../../etc/passwd", "/index.html/"} {
			req := httptest.NewRequest("GET", path, nil)
			req.RemoteAddr = "198.51.100.7:4242"
			serve(h, req)
		}
	}
	if buf.Len() != 0 {
		t.Errorf("cover handlers logged: %q", buf.String())
	}
}

func TestDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("<p>hello</p>"), 0o644)
	os.Mkdir(filepath.Join(dir, "empty"), 0o755)
	os.WriteFile(filepath.Join(dir, "empty", "a.txt"), []byte("a"), 0o644)
	h, err := Dir(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path   string
		status int
		body   string
	}{
		{"/", 200, "<p>hello</p>"},
		{"/empty/a.txt", 200, "a"},
		{"/empty/", 404, ""}, // no listing
		{"/missing", 404, ""},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			resp := serve(h, httptest.NewRequest("GET", tc.path, nil))
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.body != "" && string(body) != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			if strings.Contains(string(body), "a.txt") && tc.status != 200 {
				t.Errorf("directory listed: %q", body)
			}
		})
	}

	if _, err := Dir(filepath.Join(dir, "nope")); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing dir: err %v, want an error naming the path", err)
	}
	if _, err := Dir(filepath.Join(dir, "index.html")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file as dir: err %v, want 'not a directory'", err)
	}
}

func TestProxy(t *testing.T) {
	for _, behindCDN := range []bool{true, false} {
		t.Run(map[bool]string{true: "cdn", false: "direct"}[behindCDN], func(t *testing.T) { testProxy(t, behindCDN) })
	}
}

// testProxy: the origin sees the path under its base, its own Host, every
// header a browser sends, and never the client's address. Behind a CDN no
// other header reaches it (cdnHeaders carry the client's address there);
// directly, the others the client sent do (a page's scripts' own), but for
// X-Forwarded-*, Forwarded and X-Real-IP.
func testProxy(t *testing.T, behindCDN bool) {
	type seen struct {
		host, path, query string
		hdr               http.Header
	}
	got := make(chan seen, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Host, r.URL.Path, r.URL.RawQuery, r.Header.Clone()}
		w.Header().Set("X-Upstream", "yes")
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, "from upstream")
	}))
	up.Listener.Close()
	up.Listener = ln
	up.Start()
	defer up.Close()

	h, err := Proxy(up.URL+"/base", behindCDN)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "http://relay.example/page?x=1", nil)
	req.RemoteAddr = "198.51.100.7:4242"
	for _, k := range cdnHeaders {
		req.Header.Set(k, "203.0.113.9")
	}
	for k, v := range browserRequest {
		req.Header.Set(k, v)
	}
	for k, v := range scriptHeaders {
		req.Header.Set(k, v)
	}
	resp := serve(h, req)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusTeapot || string(body) != "from upstream" || resp.Header.Get("X-Upstream") != "yes" {
		t.Fatalf("proxied response %d %q %v", resp.StatusCode, body, resp.Header)
	}
	s := <-got
	if s.host != ln.Addr().String() {
		t.Errorf("upstream saw Host %q, want %q", s.host, ln.Addr().String())
	}
	if s.path != "/base/page" || s.query != "x=1" {
		t.Errorf("upstream saw %s?%s, want /base/page?x=1", s.path, s.query)
	}
	for _, k := range []string{"X-Forwarded-For", "Forwarded", "X-Real-Ip", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v := s.hdr.Get(k); v != "" {
			t.Errorf("upstream saw %s: %q", k, v)
		}
	}
	for k, vv := range s.hdr {
		for _, v := range vv {
			if strings.Contains(v, "198.51.100.7") || (behindCDN && strings.Contains(v, "203.0.113.9")) {
				t.Errorf("client address leaked upstream in %s: %q", k, v)
			}
		}
	}
	for k, v := range browserRequest {
		if got := s.hdr.Get(k); got != v {
			t.Errorf("upstream saw %s: %q, want the browser's %q", k, got, v)
		}
	}
	for k, v := range scriptHeaders {
		if got := s.hdr.Get(k); behindCDN && got != "" {
			t.Errorf("behind a CDN upstream saw %s", k)
		} else if !behindCDN && got != v {
			t.Errorf("upstream saw %s: %q, want the page's %q", k, got, v)
		}
	}
	if !behindCDN {
		return
	}
	for k := range s.hdr {
		if _, ok := browserRequest[k]; !ok {
			t.Errorf("upstream saw %s, which the browser did not send", k)
		}
	}
}

// scriptHeaders are headers a page's own scripts send, which a site may
// need (a CSRF token): they reach the origin but behind a CDN.
var scriptHeaders = map[string]string{
	"X-Csrf-Token": "t0k3n",
	"X-Xsrf-Token": "t0k3n",
	"Hx-Request":   "true",
	"Traceparent":  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}

// cdnHeaders are headers that proxies and CDNs in front of a relay add,
// with the client's address or CDN metadata: none may reach the origin.
var cdnHeaders = []string{
	"X-Forwarded-For", "Forwarded", "X-Real-IP", "Via",
	"CF-Connecting-IP", "CF-Connecting-IPv6", "True-Client-IP", "Fastly-Client-IP",
	"X-Client-IP", "X-Cluster-Client-IP", "Client-IP", "X-Original-Forwarded-For",
	"CloudFront-Viewer-Address", "X-Azure-ClientIP", "X-Azure-SocketIP", "Akamai-Origin-Hop",
	"CDN-Loop", "CF-Ray", "CF-Visitor", "CF-IPCountry", "X-Amz-Cf-Id", "Fastly-FF", "X-Cloud-Trace-Context",
	"Early-Data", "cf_connecting_ip",
}

// browserRequest is what a browser sends with a navigation, a fetch or a
// conditional or range request: all of it must reach the origin.
var browserRequest = map[string]string{
	"Accept":                    "text/html,application/xhtml+xml,*/*;q=0.8",
	"Accept-Encoding":           "gzip, deflate, br, zstd",
	"Accept-Language":           "en-US,en;q=0.9",
	"User-Agent":                "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0",
	"Cookie":                    "session=abc; theme=dark",
	"If-None-Match":             `"abc"`,
	"If-Modified-Since":         "Mon, 11 Mar 2024 09:42:17 GMT",
	"Range":                     "bytes=0-99",
	"Cache-Control":             "max-age=0",
	"Pragma":                    "no-cache",
	"Content-Type":              "text/plain",
	"Sec-Ch-Ua":                 `"Chromium";v="156"`,
	"Sec-Ch-Ua-Mobile":          "?0",
	"Sec-Ch-Ua-Platform":        `"Linux"`,
	"Sec-Fetch-Site":            "same-origin",
	"Sec-Fetch-Mode":            "navigate",
	"Sec-Fetch-User":            "?1",
	"Sec-Fetch-Dest":            "document",
	"Upgrade-Insecure-Requests": "1",
	"Dnt":                       "1",
	"Priority":                  "u=0, i",
	"Origin":                    "https://relay.example",
	"Referer":                   "https://relay.example/",
	"Authorization":             "Basic dTpw",
	"X-Requested-With":          "XMLHttpRequest",
}

// Every name in the allowlist is in canonical form, or net/http's
// canonical header keys would never match it.
func TestBrowserHeadersCanonical(t *testing.T) {
	for name := range browserHeaders {
		if c := http.CanonicalHeaderKey(name); c != name {
			t.Errorf("allowlist has %q, net/http calls it %q", name, c)
		}
	}
	if !forwardable("Sec-Fetch-Storage-Access") || forwardable("Cf-Connecting-Ip") || forwardable("sec-fetch-site") {
		t.Error("forwardable: Sec- prefix or allowlist wrong")
	}
}

func TestProxyUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	h, err := Proxy("http://"+addr, false)
	if err != nil {
		t.Fatal(err)
	}
	if resp := serve(h, httptest.NewRequest("GET", "/", nil)); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
}

func TestProxyBadURL(t *testing.T) {
	for _, u := range []string{"", "example.org", "ftp://example.org", "http://", "https://u:p@example.org", "http://example.org/?q=1", "http://[::1"} {
		t.Run(u, func(t *testing.T) {
			if _, err := Proxy(u, false); err == nil {
				t.Errorf("Proxy(%q) succeeded", u)
			}
		})
	}
}
