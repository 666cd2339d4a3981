package cover

import (
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
)

// fileServer serves the files of an [fs.FS] the way Caddy 2 does with this
// Caddyfile, the population generated sites and [Dir] blend into:
//
//	example.org {
//		root * /srv/www
//		file_server
//		handle_errors 404 {
//			rewrite * /404.html
//			file_server
//		}
//	}
//
// Caddy's behaviour, kept here:
//   - "Server: Caddy" on every response, "Vary: Accept-Encoding" on files;
//   - ETag "<mtime ns base 36>-<size base 36>" (Caddy's calculateEtag),
//     Last-Modified from the file's mtime, conditional and range requests,
//     HEAD, all by [http.ServeContent];
//   - a directory serves its index.html; canonical URLs by a 308 redirect:
//     a trailing slash for directories, none for files;
//   - a directory without index.html is 404 (no listing);
//   - methods other than GET and HEAD on a file get 405, "Allow: GET, HEAD"
//     and an empty body;
//   - a missing path gets /404.html with status 404 (an empty 404 if the
//     site has none), whatever the method;
//   - Content-Type from the file extension by [mime.TypeByExtension], none
//     when the extension is unknown (no sniffing).
//
// Nothing about a request is logged.
type fileServer struct{ fsys fs.FS }

// notFoundPage is the error page served with status 404.
const notFoundPage = "404.html"

func (s fileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "Caddy")
	urlPath := r.URL.Path
	if urlPath == "" {
		urlPath = "/"
	}
	name := fsName(urlPath)
	info, err := fs.Stat(s.fsys, name)
	if err != nil {
		s.notFound(w, r)
		return
	}
	implicitIndex := false
	if info.IsDir() {
		name = path.Join(name, "index.html")
		info, err = fs.Stat(s.fsys, name)
		if err != nil || info.IsDir() {
			s.notFound(w, r)
			return
		}
		implicitIndex = true
	}
	switch {
	case implicitIndex && !strings.HasSuffix(urlPath, "/"):
		redirect(w, r, urlPath+"/")
		return
	case !implicitIndex && strings.HasSuffix(urlPath, "/"):
		redirect(w, r, strings.TrimSuffix(urlPath, "/"))
		return
	}
	w.Header().Add("Vary", "Accept-Encoding")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Add("Allow", "GET, HEAD")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	if !s.serveFile(w, r, name, info) {
		w.WriteHeader(http.StatusInternalServerError)
	}
}

// fsName maps a request path to a name in the file system: cleaned, so
// that ".." cannot leave the root, without the leading slash.
func fsName(urlPath string) string {
	name := strings.TrimPrefix(path.Clean("/"+urlPath), "/")
	if name == "" {
		return "."
	}
	return name
}

// serveFile writes the file with Caddy's headers through
// [http.ServeContent]. It reports false if the file cannot be read.
func (s fileServer) serveFile(w http.ResponseWriter, r *http.Request, name string, info fs.FileInfo) bool {
	f, err := s.fsys.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	rs, ok := f.(io.ReadSeeker)
	if !ok {
		return false
	}
	h := w.Header()
	if etag := caddyETag(info.ModTime(), info.Size()); etag != "" {
		h.Set("Etag", etag)
	}
	if ctype := mime.TypeByExtension(path.Ext(name)); ctype != "" {
		h.Set("Content-Type", ctype)
	} else {
		h["Content-Type"] = nil // as Caddy: do not let net/http sniff
	}
	mtime := info.ModTime()
	if !usefulModTime(mtime) {
		mtime = time.Time{}
	}
	http.ServeContent(w, r, info.Name(), mtime, rs)
	return true
}

// notFound serves /404.html with status 404, as Caddy's handle_errors
// does; conditional and range headers are honoured by ServeContent and the
// status then forced to 404, as Caddy's status override does.
func (s fileServer) notFound(w http.ResponseWriter, r *http.Request) {
	info, err := fs.Stat(s.fsys, notFoundPage)
	if err == nil && !info.IsDir() {
		w.Header().Add("Vary", "Accept-Encoding")
		if s.serveFile(statusWriter{w, http.StatusNotFound}, r, notFoundPage, info) {
			return
		}
	}
	w.WriteHeader(http.StatusNotFound)
}

// statusWriter forces the status of a response.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (sw statusWriter) WriteHeader(int) { sw.ResponseWriter.WriteHeader(sw.code) }

func (sw statusWriter) Unwrap() http.ResponseWriter { return sw.ResponseWriter }

// redirect answers with Caddy's canonical-URL redirect: 308, the query
// kept, never to a scheme-relative "//host" path.
func redirect(w http.ResponseWriter, r *http.Request, to string) {
	for strings.HasPrefix(to, "//") {
		to = strings.TrimPrefix(to, "/")
	}
	if r.URL.RawQuery != "" {
		to += "?" + r.URL.RawQuery
	}
	http.Redirect(w, r, to, http.StatusPermanentRedirect)
}

// caddyETag is Caddy 2's ETag for a file: its mtime in nanoseconds and its
// size, both in base 36, or none for a useless mtime.
func caddyETag(mtime time.Time, size int64) string {
	if !usefulModTime(mtime) {
		return ""
	}
	return `"` + strconv.FormatInt(mtime.UnixNano(), 36) + "-" + strconv.FormatInt(size, 36) + `"`
}

func usefulModTime(t time.Time) bool {
	u := t.Unix()
	return u != 0 && u != 1 && !t.IsZero()
}
