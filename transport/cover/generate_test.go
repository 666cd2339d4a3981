package cover

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

var testNow = time.Date(2026, time.December, 3, 18, 0, 0, 0, time.UTC)

func testSeed(i int) []byte { return []byte(fmt.Sprintf("test seed %04d, 32 bytes long...", i)) }

func mustGenerate(t testing.TB, seed []byte, now time.Time) *Site {
	t.Helper()
	s, err := Generate(seed, now)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(h http.Handler, method, path string, hdr ...string) (*http.Response, []byte) {
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp := serve(h, req)
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestGenerateShortSeed(t *testing.T) {
	if _, err := Generate(make([]byte, MinSeedSize-1), testNow); !errors.Is(err, ErrShortSeed) {
		t.Fatalf("err %v, want ErrShortSeed", err)
	}
}

// The same seed must give the same site: a restart serves the same bytes.
func TestGenerateDeterministic(t *testing.T) {
	for i := range 20 {
		a, b := mustGenerate(t, testSeed(i), testNow), mustGenerate(t, testSeed(i), testNow)
		if len(a.files) != len(b.files) {
			t.Fatalf("seed %d: %d files vs %d", i, len(a.files), len(b.files))
		}
		for name, fa := range a.files {
			fb := b.files[name]
			if fb == nil || !bytes.Equal(fa.data, fb.data) || !fa.mtime.Equal(fb.mtime) {
				t.Errorf("seed %d: %s differs", i, name)
			}
		}
	}
}

// Two seeds give different home pages, 404s, ETags and Last-Modified.
func TestGenerateDiffers(t *testing.T) {
	a, b := mustGenerate(t, testSeed(1), testNow), mustGenerate(t, testSeed(2), testNow)
	for _, path := range []string{"/", "/no-such-page"} {
		ra, ba := get(a, "GET", path)
		rb, bb := get(b, "GET", path)
		if bytes.Equal(ba, bb) {
			t.Errorf("%s: same body", path)
		}
		for _, k := range []string{"Etag", "Last-Modified"} {
			if ra.Header.Get(k) == "" || ra.Header.Get(k) == rb.Header.Get(k) {
				t.Errorf("%s: %s %q and %q", path, k, ra.Header.Get(k), rb.Header.Get(k))
			}
		}
	}
}

// Over many seeds, home pages and 404 responses are all distinct, every
// kind of site occurs, and sizes spread. The distribution is logged.
func TestGenerateDistribution(t *testing.T) {
	const n = 200
	index, notFound, etags, lastMod := map[string]bool{}, map[string]bool{}, map[string]bool{}, map[string]bool{}
	notFoundBodies, kindCount := map[string]bool{}, map[string]int{}
	var indexSizes, siteSizes, fileCounts []int
	for i := range n {
		s := mustGenerate(t, testSeed(i), testNow)
		resp, body := get(s, "GET", "/")
		index[string(body)], etags[resp.Header.Get("Etag")], lastMod[resp.Header.Get("Last-Modified")] = true, true, true
		nresp, nbody := get(s, "GET", "/wp-login.php")
		notFound[string(nbody)+nresp.Header.Get("Etag")+nresp.Header.Get("Last-Modified")] = true
		notFoundBodies[string(nbody)] = true
		kindCount[s.kind]++
		total := 0
		for _, f := range s.files {
			total += len(f.data)
		}
		indexSizes, siteSizes, fileCounts = append(indexSizes, len(body)), append(siteSizes, total), append(fileCounts, len(s.files))
	}
	for what, m := range map[string]map[string]bool{"index bodies": index, "index ETags": etags, "index Last-Modified": lastMod, "404 responses": notFound} {
		if len(m) != n {
			t.Errorf("%s: %d distinct of %d", what, len(m), n)
		}
	}
	if len(kindCount) != len(kinds) {
		t.Errorf("kinds %v, want all %d", kindCount, len(kinds))
	}
	sizes := map[int]bool{}
	for _, s := range indexSizes {
		sizes[s] = true
	}
	if len(sizes) < n/2 {
		t.Errorf("only %d distinct index sizes in %d sites", len(sizes), n)
	}
	t.Logf("kinds: %v; distinct 404 bodies %d/%d", kindCount, len(notFoundBodies), n)
	t.Logf("index.html bytes: %s; distinct sizes %d", quantiles(indexSizes), len(sizes))
	t.Logf("whole site bytes: %s", quantiles(siteSizes))
	t.Logf("files per site: %s", quantiles(fileCounts))
}

func quantiles(v []int) string {
	v = slices.Clone(v)
	slices.Sort(v)
	q := func(p float64) int { return v[int(p*float64(len(v)-1))] }
	return fmt.Sprintf("min %d p10 %d median %d p90 %d max %d", v[0], q(0.1), q(0.5), q(0.9), v[len(v)-1])
}

var forbidden = regexp.MustCompile(`(?i)postern|relay|localhost|127\.0\.0\.1|\{\{|%!|<no value>|\bnil\b|undefined`)

// Every page is well-formed HTML with a title; no slot or template text is
// left; nothing names the software; every internal link resolves; no date
// lies in the future.
func TestGenerateContent(t *testing.T) {
	for i := range 100 {
		s := mustGenerate(t, testSeed(i), testNow)
		t.Run(fmt.Sprintf("seed%d-%s", i, s.kind), func(t *testing.T) {
			mtimes := map[time.Time]bool{}
			for name, f := range s.files {
				if m := forbidden.Find(f.data); m != nil {
					t.Errorf("%s contains %q", name, m)
				}
				if f.mtime.After(testNow) || f.mtime.Before(firstStart.Add(-4*365*day)) {
					t.Errorf("%s: mtime %v out of range", name, f.mtime)
				}
				mtimes[f.mtime] = true
				if strings.HasSuffix(name, ".html") {
					checkHTML(t, s, name, f.data)
				}
			}
			if len(mtimes) < 3 {
				t.Errorf("only %d distinct mtimes in %d files", len(mtimes), len(s.files))
			}
		})
	}
}

// voidElements have no end tag.
var voidElements = map[string]bool{"meta": true, "link": true, "img": true, "br": true, "hr": true, "input": true}

// checkHTML parses a page, checks that its tags nest, that it has a
// doctype, a non-empty title, no braces in text, links that resolve and
// <time> values not after testNow.
func checkHTML(t *testing.T, s *Site, name string, data []byte) {
	t.Helper()
	if _, err := html.Parse(bytes.NewReader(data)); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	z := html.NewTokenizer(bytes.NewReader(data))
	var stack []string
	var doctype, inTitle bool
	title := ""
	for {
		tt := z.Next()
		tok := z.Token()
		switch tt {
		case html.ErrorToken:
			if z.Err() != io.EOF {
				t.Fatalf("%s: %v", name, z.Err())
			}
			if len(stack) != 0 || !doctype || strings.TrimSpace(title) == "" {
				t.Errorf("%s: unclosed %v, doctype %v, title %q", name, stack, doctype, title)
			}
			return
		case html.DoctypeToken:
			doctype = true
		case html.StartTagToken:
			if !voidElements[tok.Data] {
				stack = append(stack, tok.Data)
			}
			inTitle = tok.Data == "title"
			checkAttrs(t, s, name, tok)
		case html.EndTagToken:
			if len(stack) == 0 || stack[len(stack)-1] != tok.Data {
				t.Fatalf("%s: </%s> closes %v", name, tok.Data, stack)
			}
			stack, inTitle = stack[:len(stack)-1], false
		case html.TextToken:
			if strings.ContainsAny(tok.Data, "{}") {
				t.Errorf("%s: braces in text %q", name, tok.Data)
			}
			if inTitle {
				title += tok.Data
			}
		}
	}
}

func checkAttrs(t *testing.T, s *Site, name string, tok html.Token) {
	for _, a := range tok.Attr {
		switch {
		case (a.Key == "href" || a.Key == "src") && strings.HasPrefix(a.Val, "/"):
			if resp, _ := get(s, "GET", a.Val); resp.StatusCode != http.StatusOK {
				t.Errorf("%s: link %s answers %d", name, a.Val, resp.StatusCode)
			}
		case a.Key == "href" || a.Key == "src":
			t.Errorf("%s: link %q is not site-relative", name, a.Val)
		case a.Key == "datetime":
			if d, err := time.Parse("2006-01-02", a.Val); err != nil || d.After(testNow) {
				t.Errorf("%s: datetime %q", name, a.Val)
			}
		}
	}
}

var caddyETagFormat = regexp.MustCompile(`^"[0-9a-z]+-[0-9a-z]+"$`)

// The site answers as Caddy's file_server: ETag and Last-Modified from the
// file, conditional requests, ranges, HEAD, 404 page, 405, redirects.
func TestSiteHTTP(t *testing.T) {
	s := mustGenerate(t, testSeed(7), testNow)
	idx := s.files["index.html"]
	resp, body := get(s, "GET", "/")
	etag, lm := resp.Header.Get("Etag"), resp.Header.Get("Last-Modified")
	if resp.StatusCode != 200 || !bytes.Equal(body, idx.data) || !caddyETagFormat.MatchString(etag) ||
		etag != caddyETag(idx.mtime, int64(len(idx.data))) || lm != idx.mtime.UTC().Format(http.TimeFormat) ||
		resp.Header.Get("Server") != "Caddy" || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /: %d %v", resp.StatusCode, resp.Header)
	}
	tests := []struct {
		name, method, path string
		hdr                []string
		status             int
		body               string
	}{
		{"If-None-Match", "GET", "/", []string{"If-None-Match", etag}, 304, ""},
		{"If-Modified-Since", "GET", "/", []string{"If-Modified-Since", idx.mtime.Add(time.Minute).UTC().Format(http.TimeFormat)}, 304, ""},
		{"stale If-None-Match", "GET", "/", []string{"If-None-Match", `"x-1"`}, 200, string(idx.data)},
		{"Range", "GET", "/", []string{"Range", "bytes=0-14"}, 206, string(idx.data[:15])},
		{"HEAD", "HEAD", "/", nil, 200, ""},
		{"index.html", "GET", "/index.html", nil, 200, string(idx.data)},
		{"missing", "GET", "/admin/", nil, 404, string(s.files[notFoundPage].data)},
		{"POST missing", "POST", "/api", nil, 404, string(s.files[notFoundPage].data)},
		{"POST file", "POST", "/", nil, 405, ""},
		{"traversal", "GET", "/../../etc/passwd", nil, 404, string(s.files[notFoundPage].data)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(s, tc.method, tc.path, tc.hdr...)
			if resp.StatusCode != tc.status || string(body) != tc.body {
				t.Fatalf("status %d body %.40q, want %d %.40q", resp.StatusCode, body, tc.status, tc.body)
			}
			if resp.Header.Get("Server") != "Caddy" {
				t.Errorf("Server %q", resp.Header.Get("Server"))
			}
			if tc.status == 405 && resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow %q", resp.Header.Get("Allow"))
			}
		})
	}
}

// Directories redirect to a trailing slash and files away from one, with
// 308 as Caddy does.
func TestSiteRedirects(t *testing.T) {
	for i := range 10 {
		s := mustGenerate(t, testSeed(i), testNow)
		for name := range s.files {
			from, to := "/"+name+"/", "/"+name
			if dir, ok := strings.CutSuffix(name, "/index.html"); ok {
				from, to = "/"+dir, "/"+dir+"/"
			}
			resp, _ := get(s, "GET", from)
			if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != to {
				t.Errorf("seed %d: GET %s: %d to %q, want 308 to %q", i, from, resp.StatusCode, resp.Header.Get("Location"), to)
			}
		}
	}
}

// An operator can write the site out and serve it with Dir: the answers
// are the same, byte for byte and header for header.
func TestWriteDirServesSame(t *testing.T) {
	s := mustGenerate(t, testSeed(3), testNow)
	dir := t.TempDir()
	if err := s.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	d, err := Dir(dir)
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{"/missing", "/favicon.ico/"}
	for name := range s.files {
		paths = append(paths, "/"+strings.TrimSuffix(name, "index.html"))
	}
	for _, p := range paths {
		ra, ba := get(s, "GET", p)
		rb, bb := get(d, "GET", p)
		if ra.StatusCode != rb.StatusCode || !bytes.Equal(ba, bb) {
			t.Errorf("%s: generated %d, dir %d", p, ra.StatusCode, rb.StatusCode)
		}
		for _, k := range []string{"Etag", "Last-Modified", "Content-Type", "Content-Length", "Location", "Server", "Vary"} {
			if ra.Header.Get(k) != rb.Header.Get(k) {
				t.Errorf("%s: %s %q vs %q", p, k, ra.Header.Get(k), rb.Header.Get(k))
			}
		}
	}
	if err := s.WriteDir(dir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("second WriteDir: %v, want a not-empty error", err)
	}
}

// Restarts within an update period serve the same site; later, the site
// moves forward but keeps the dates of its older updates.
func TestGenerateStableOverTime(t *testing.T) {
	same := 0
	for i := range 50 {
		seed := testSeed(i)
		later := testNow.Add(6 * time.Hour)
		a, b := mustGenerate(t, seed, testNow), mustGenerate(t, seed, later)
		ta, tb := newTimeline(seed, testNow), newTimeline(seed, later)
		if ta.last == tb.last {
			same++
			for name, f := range a.files {
				if g := b.files[name]; g == nil || !bytes.Equal(f.data, g.data) || !f.mtime.Equal(g.mtime) {
					t.Errorf("seed %d: %s changed without an update", i, name)
				}
			}
		}
		year := newTimeline(seed, testNow.Add(365*day))
		if year.last <= ta.last || !year.at(ta.last).Equal(ta.at(ta.last)) {
			t.Errorf("seed %d: a year later last %d (was %d), update time moved", i, year.last, ta.last)
		}
	}
	if same < 40 {
		t.Errorf("only %d of 50 sites unchanged six hours later", same)
	}
}

// A clock before the sites' range still gives dates in the past.
func TestGenerateEarlyClock(t *testing.T) {
	now := time.Date(2015, time.March, 1, 0, 0, 0, 0, time.UTC)
	s := mustGenerate(t, testSeed(1), now)
	for name, f := range s.files {
		if f.mtime.After(now) {
			t.Errorf("%s: mtime %v after %v", name, f.mtime, now)
		}
	}
}

func FuzzSiteServe(f *testing.F) {
	s := mustGenerate(f, testSeed(5), testNow)
	for _, p := range []string{"/", "/index.html", "/../x", "//evil.example/", "/%2e%2e/", "/a/b/c/", "/favicon.ico/"} {
		f.Add("GET", p)
	}
	f.Add("POST", "/")
	f.Fuzz(func(t *testing.T, method, path string) {
		req, err := http.NewRequest(method, "http://x"+path, nil)
		if err != nil || req.URL.Path != "" && req.URL.Path[0] != '/' {
			return
		}
		resp := serve(s, req)
		switch resp.StatusCode {
		case 200, 308, 404, 405:
		default:
			t.Fatalf("%s %q: status %d", method, path, resp.StatusCode)
		}
		if loc := resp.Header.Get("Location"); strings.HasPrefix(loc, "//") {
			t.Fatalf("%s %q: redirect off-site to %q", method, path, loc)
		}
	})
}
