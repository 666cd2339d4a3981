package main

import (
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/transport/descriptor"
)

// coverPage is what a browser gets for path from rp's https listener.
type coverPage struct {
	status             int
	body               []byte
	etag, lastModified string
	altSvc             string
}

func getCover(t *testing.T, rp *relayProc, path string) coverPage {
	t.Helper()
	d, err := descriptor.Parse(rp.line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range d.Endpoints {
		if ep.Transport != "https" {
			continue
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
		resp, err := c.Get("https://" + ep.Addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return coverPage{resp.StatusCode, body, resp.Header.Get("ETag"), resp.Header.Get("Last-Modified"), resp.Header.Get("Alt-Svc")}
	}
	t.Fatal("no https endpoint")
	return coverPage{}
}

// TestCoverSitesDiffer: two relays started with defaults in different
// data directories serve different cover sites (GET /, a 404, ETags,
// Last-Modified), and a restarted relay serves its own site again.
func TestCoverSitesDiffer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	a := startRelay(t, bin, filepath.Join(dir, "a"))
	b := startRelay(t, bin, filepath.Join(dir, "b"))
	defer b.stop()
	for _, path := range []string{"/", "/no-such-page-" + time.Now().Format("150405")} {
		pa, pb := getCover(t, a, path), getCover(t, b, path)
		if pa.status != pb.status || (path == "/" && pa.status != http.StatusOK) || (path != "/" && pa.status != http.StatusNotFound) {
			t.Fatalf("%s: status %d and %d", path, pa.status, pb.status)
		}
		if bytes.Equal(pa.body, pb.body) || pa.etag == pb.etag || pa.lastModified == pb.lastModified {
			t.Errorf("%s: the two relays serve the same page (etag %q %q, last-modified %q %q)", path, pa.etag, pb.etag, pa.lastModified, pb.lastModified)
		}
	}
	before := getCover(t, a, "/")
	a.stop()
	a = startRelay(t, bin, a.dir)
	defer a.stop()
	if after := getCover(t, a, "/"); !bytes.Equal(after.body, before.body) || after.etag != before.etag {
		t.Error("a restarted relay serves another site")
	}
}
