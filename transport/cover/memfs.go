package cover

import (
	"bytes"
	"io/fs"
	"path"
	"strings"
	"time"
)

// memFS is a read-only in-memory file system of a generated site: file
// names such as "index.html" or "about/index.html" to their contents.
// Directories exist implicitly above the files.
type memFS map[string]*siteFile

// siteFile is one file of a generated site.
type siteFile struct {
	data  []byte
	mtime time.Time
}

func (m memFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if f, ok := m[name]; ok {
		return &memFile{bytes.NewReader(f.data), memInfo{path.Base(name), int64(len(f.data)), f.mtime, false}}, nil
	}
	if m.isDir(name) {
		return memDir{memInfo{path.Base(name), 0, time.Time{}, true}}, nil
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

func (m memFS) isDir(name string) bool {
	if name == "." {
		return true
	}
	for k := range m {
		if strings.HasPrefix(k, name+"/") {
			return true
		}
	}
	return false
}

type memFile struct {
	*bytes.Reader
	info memInfo
}

func (f *memFile) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *memFile) Close() error               { return nil }

type memDir struct{ info memInfo }

func (d memDir) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d memDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.info.name, Err: fs.ErrInvalid}
}
func (d memDir) Close() error { return nil }

type memInfo struct {
	name  string
	size  int64
	mtime time.Time
	dir   bool
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) ModTime() time.Time { return i.mtime }
func (i memInfo) IsDir() bool        { return i.dir }
func (i memInfo) Sys() any           { return nil }
func (i memInfo) Mode() fs.FileMode {
	if i.dir {
		return fs.ModeDir | 0o755
	}
	return 0o644
}
