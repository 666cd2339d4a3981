// Package cover provides the cover websites that transport listeners show to
// everything that is not an authenticated relay session: browsers, scanners,
// a censor's active probes, replayed session requests.
//
// A cover site is an ordinary [http.Handler]. The listener hands it the
// request untouched, so what a prober sees is exactly what this handler
// writes; only a request on the relay's secret path reaches it for a decoy
// path, without the session token and body (see transport/httpsession).
// Four kinds exist:
//
//   - [Generate]: a small website of the relay's own, made from a secret
//     seed. The default for a relay without cover_dir or cover_proxy.
//   - [Dir]: a directory of static files chosen by the operator, for
//     example one written by [Site.WriteDir] and then edited.
//   - [Proxy]: a reverse proxy to an upstream origin, so the relay shows a
//     real site the operator also runs (a borrowed site).
//   - [Default]: one fixed built-in site, byte for byte the same on every
//     relay. Only for tests and local development: one GET finds every
//     relay that serves it.
//
// None of them logs anything about a request: not the address, not the path,
// not the user agent.
//
// # Public relays
//
// A public relay should serve a site its operator chose: cover_dir with
// real content, or cover_proxy in front of a real site. A generated site is
// a fallback that keeps relays left on defaults from all looking alike; it
// is not a site anyone would link to.
//
// # Generated sites
//
// [Generate] derives everything from the seed with HMAC-SHA256 and ChaCha8:
// the kind of site (a small business, a personal blog, a software project
// page, a documentation site, a local club), its names, pages and their
// paths (flat "/about.html" or directory "/about/"), navigation, wording,
// markup conventions (doctype, indentation, class names, semantic elements
// or divs), stylesheet (palette, fonts, rules, path, minified or not), an
// optional SVG logo, a 16/32-pixel favicon, robots.txt (or none) and a
// 404 page. Its history is a per-site schedule of updates, one every 3 to
// 16 weeks on average, since a start between 2016 and 2024: news items, posts, releases
// or club reports, each dated, each file's mtime the update that last
// touched it, with a nanosecond part as on ext4. Over 200 seeds, home pages
// are 0.9–3.5 KB and whole sites 7–40 KB in 7–20 files.
//
// Generated sites and [Dir] answer like Caddy 2's file_server with a
// handle_errors page for 404 (see fileServer): "Server: Caddy", Caddy's
// ETag (mtime in ns and size, base 36), Last-Modified, 308 canonical
// redirects, 405 with an empty body. Caddy is chosen because it too is Go's
// crypto/tls and net/http (and quic-go for HTTP/3), so the site's headers
// agree with the TLS and HTTP/2 fingerprint underneath them; an nginx- or
// Apache-style ETag over Go's HTTP/2 would be a contradiction a prober can
// see. Caddy would also send Alt-Svc when HTTP/3 is on; the listener adds
// that, not this package.
//
// What a generated site hides: that two relays are the same software, by
// content, sizes, ETags, dates or 404 page; a restart (same seed, same
// site). What it does not hide:
//   - It is English and small, from a finite set of templates and word
//     lists; someone who reads this source can write a classifier for the
//     population of generated sites, though not link one site to a seed
//     without the seed.
//   - No site has outside links, e-mail addresses, a sitemap.xml, absolute
//     URLs or a domain of its own, and it is not indexed by search engines
//     or archives; a site with no history elsewhere is a weak signal.
//   - The certificate, the absence of a DNS name, and the TLS, HTTP/2 and
//     timeout behaviour are the listener's, not this package's.
package cover

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"strings"
	"time"
)

//go:embed site
var site embed.FS

// LastModified is the fixed modification time of every page of the built-in
// site. A fixed time keeps Last-Modified identical across restarts and
// across relays built from the same source, like files deployed from a
// repository.
var LastModified = time.Date(2024, time.March, 11, 9, 42, 17, 0, time.UTC)

// page is one file of the built-in site.
type page struct {
	name  string // file name, for ServeContent
	ctype string
	etag  string
	data  []byte
}

// routes maps request paths of the built-in site to files under site/.
var routes = map[string]string{
	"/":            "index.html",
	"/index.html":  "index.html",
	"/about":       "about.html",
	"/about.html":  "about.html",
	"/style.css":   "style.css",
	"/favicon.ico": "favicon.ico",
	"/robots.txt":  "robots.txt",
}

var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".ico":  "image/x-icon",
	".txt":  "text/plain; charset=utf-8",
}

type defaultSite struct {
	pages    map[string]*page
	notFound []byte
}

// Default returns the built-in cover site: an index page, an about page, a
// stylesheet, a favicon and robots.txt. Other paths get a 404 page. Files
// carry a fixed Last-Modified and a content-derived ETag, and conditional
// and range requests behave as with [http.ServeContent].
func Default() http.Handler {
	s := &defaultSite{pages: make(map[string]*page)}
	for p, file := range routes {
		s.pages[p] = mustPage(file)
	}
	s.notFound = mustPage("404.html").data
	return s
}

func mustPage(file string) *page {
	data, err := site.ReadFile("site/" + file)
	if err != nil {
		panic("cover: embedded file missing: " + file) // a build defect, not a runtime condition
	}
	sum := sha256.Sum256(data)
	return &page{
		name:  file,
		ctype: contentTypes[path.Ext(file)],
		etag:  `"` + hex.EncodeToString(sum[:8]) + `"`,
		data:  data,
	}
}

func (s *defaultSite) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p, ok := s.pages[r.URL.Path]
	if !ok {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusNotFound)
		w.Write(s.notFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h := w.Header()
		h.Set("Allow", "GET, HEAD")
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusMethodNotAllowed)
		io.WriteString(w, "405 Method Not Allowed\n")
		return
	}
	h := w.Header()
	h.Set("Content-Type", p.ctype)
	h.Set("ETag", p.etag)
	h.Set("Cache-Control", "public, max-age=3600")
	http.ServeContent(w, r, p.name, LastModified, bytes.NewReader(p.data))
}

// Dir returns a cover site serving the static files under dir as Caddy's
// file_server does (see the package documentation): ETags from each
// file's mtime and size, Last-Modified, conditional and range requests,
// dir/index.html for directories and no listings, and dir/404.html, if
// present, as the page for missing paths. A site written by
// [Site.WriteDir] is served exactly as the generated [Site] itself.
func Dir(dir string) (http.Handler, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("cover directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("cover directory %s: not a directory", dir)
	}
	return fileServer{os.DirFS(dir)}, nil
}

// Proxy returns a cover site that forwards every request to upstream, an
// absolute http or https URL such as "https://www.example.org". The request
// path and query are appended to upstream's path; the Host header becomes
// upstream's host. The client's address is not forwarded: no
// X-Forwarded-For, Forwarded or X-Real-IP. Behind a CDN (behindCDN: the
// relay's https_cdn), which adds the client's address in headers of its
// own choosing, only the headers a browser sends reach upstream (see
// [forwardable]); directly, every other header the client sent does (a
// page's scripts send their own: X-CSRF-Token, HX-Request, traceparent,
// which an allowlist drops, breaking such a site for its visitors, a
// reviewer found), and no one but the client can have added any. Proxy
// errors are answered with 502 Bad Gateway without being logged.
func Proxy(upstream string, behindCDN bool) (http.Handler, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, fmt.Errorf("cover proxy upstream %q: %w", upstream, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("cover proxy upstream %q: want an absolute http:// or https:// URL, e.g. https://www.example.org", upstream)
	}
	if u.User != nil {
		return nil, errors.New("cover proxy upstream: credentials in the URL are not supported")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("cover proxy upstream %q: must not have a query or fragment", upstream)
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			// ReverseProxy removed Forwarded and X-Forwarded-* before
			// Rewrite.
			pr.Out.Header.Del("X-Real-Ip")
			if !behindCDN {
				return
			}
			for name := range pr.Out.Header {
				if !forwardable(name) {
					delete(pr.Out.Header, name)
				}
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}, nil
}

// browserHeaders are the request headers, in canonical form, that browsers
// send of their own or for a page's scripts (RFC 9110, 9111, 9218, Fetch,
// CORS, Client Hints, Server-Sent Events, Service Workers, and
// X-Requested-With of XMLHttpRequest libraries), and Te, Connection and
// Upgrade, which ReverseProxy has already rebuilt from the client's
// (Te: trailers, Connection: Upgrade for a WebSocket) by the time Rewrite
// runs. Names starting with "Sec-" are allowed too (see forwardable).
var browserHeaders = func() map[string]bool {
	m := make(map[string]bool)
	for _, name := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language",
		"Access-Control-Request-Headers", "Access-Control-Request-Method",
		"Access-Control-Request-Private-Network",
		"Authorization", "Cache-Control", "Pragma", "Cookie",
		"Content-Type", "Content-Encoding", "Content-Language",
		"Device-Memory", "Downlink", "Dpr", "Ect", "Rtt", "Save-Data", "Viewport-Width", "Width",
		"Dnt", "If-Match", "If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since", "Range",
		"Last-Event-Id", "Origin", "Referer", "Priority", "Purpose",
		"Service-Worker", "Service-Worker-Navigation-Preload",
		"Upgrade-Insecure-Requests", "User-Agent", "X-Requested-With",
		"Te", "Connection", "Upgrade",
	} {
		m[name] = true
	}
	return m
}()

// forwardable reports whether Proxy passes the request header name (as
// net/http canonicalised it) on to the origin.
//
// This is an allowlist, not a list of headers to remove: whatever stands in
// front of the relay (a CDN with https_cdn, a load balancer) adds headers
// of its own choosing, and many carry the client's address
// (CF-Connecting-IP, True-Client-IP, Fastly-Client-IP,
// CloudFront-Viewer-Address, X-Azure-ClientIP, X-Client-IP, Client-IP,
// X-Cluster-Client-IP, Via ...) or metadata of the CDN (CDN-Loop, CF-Ray,
// X-Amz-Cf-Id). A denylist misses the next such name; an allowlist can
// only miss a header a browser sends, which at worst makes the origin
// answer as it answers a browser that does not send it. Sec-* headers are
// all allowed: a page's scripts may not set them (Fetch's forbidden
// header names), so they come from the browser, and they are how new
// browser features arrive (Sec-Fetch-*, Sec-CH-*, Sec-WebSocket-*,
// Sec-GPC, Sec-Purpose).
func forwardable(name string) bool {
	return browserHeaders[name] || strings.HasPrefix(name, "Sec-")
}
