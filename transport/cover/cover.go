// Package cover provides the cover websites that transport listeners show to
// everything that is not an authenticated relay session: browsers, scanners,
// a censor's active probes, replayed session requests.
//
// A cover site is an ordinary [http.Handler]. The listener hands it the
// request untouched, so what a prober sees is exactly what this handler
// writes. Three kinds exist:
//
//   - [Default]: a small built-in static website, embedded in the binary.
//   - [Dir]: a directory of static files chosen by the operator.
//   - [Proxy]: a reverse proxy to an upstream origin, so the relay shows a
//     real site the operator also runs.
//
// None of them logs anything about a request: not the address, not the path,
// not the user agent.
package cover

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
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

// Dir returns a cover site serving the static files under dir, as
// [http.FileServer] does, except that directories without an index.html
// answer 404 instead of listing their contents.
func Dir(dir string) (http.Handler, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("cover directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("cover directory %s: not a directory", dir)
	}
	return http.FileServer(noListing{http.Dir(dir)}), nil
}

// noListing hides directories that have no index.html.
type noListing struct{ fs http.FileSystem }

func (n noListing) Open(name string) (http.File, error) {
	f, err := n.fs.Open(name)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.IsDir() {
		idx, err := n.fs.Open(strings.TrimSuffix(name, "/") + "/index.html")
		if err != nil {
			f.Close()
			return nil, fs.ErrNotExist
		}
		idx.Close()
	}
	return f, nil
}

// Proxy returns a cover site that forwards every request to upstream, an
// absolute http or https URL such as "https://www.example.org". The request
// path and query are appended to upstream's path; the Host header becomes
// upstream's host. The client's address is not forwarded (no
// X-Forwarded-For, Forwarded or X-Real-IP), and proxy errors are answered
// with 502 Bad Gateway without being logged.
func Proxy(upstream string) (http.Handler, error) {
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
			// Rewrite already removed X-Forwarded-* from the inbound
			// request; drop the other headers that carry client addresses.
			pr.Out.Header.Del("Forwarded")
			pr.Out.Header.Del("X-Real-Ip")
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}, nil
}
