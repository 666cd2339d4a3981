package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
)

// The page walk checks store.db's page structure by reading the file with
// ReadAt, before bbolt maps it into memory. bbolt trusts its pages: a page
// id past the end of a truncated file or a zeroed freelist page makes it
// fault (SIGSEGV/SIGBUS, which kills the process) or panic. Once the walk
// has passed, every page bbolt reaches from the current meta page lies
// inside the file, is referenced once, has the type its parent expects and
// holds its elements within its bounds.
//
// bbolt (file format version 2) lays pages out in the machine's byte order:
//
//	page header     8B id, 2B flags, 2B count, 4B overflow (extra pages)
//	meta (pages 0, 1, after the header)
//	                4B magic 0xED0CDAED, 4B version (2), 4B page size,
//	                4B flags, 8B root page, 8B root sequence,
//	                8B freelist page, 8B page count (high water mark),
//	                8B txid, 8B FNV-64a of the 56 bytes before it
//	branch element  4B pos, 4B key size, 8B child page (key at elem+pos)
//	leaf element    4B flags (1: bucket), 4B pos, 4B key size, 4B value size
//	bucket value    8B root page (0: inline, a page follows), 8B sequence
//	freelist        count page ids of 8B (count 0xFFFF: the first 8B is the count)

const (
	boltMagic     = 0xED0CDAED
	boltVersion   = 2
	pageHeader    = 16
	elementSize   = 16
	metaSize      = 64
	bucketHeader  = 16
	flagBranch    = 0x01
	flagLeaf      = 0x02
	flagFreelist  = 0x10
	flagBucket    = 0x01
	noFreelist    = ^uint64(0)
	maxTreeDepth  = 64
	minPageSize   = 512
	maxPageSize   = 1 << 16
	maxCheckPages = 1 << 32 // bound on the page count the walk accepts
)

var ne = binary.NativeEndian

// boltMeta is the part of a bbolt meta page the walk uses.
type boltMeta struct {
	pageSize       int
	root, freelist uint64
	pages, txid    uint64
	valid          bool
}

func parseMeta(b []byte) boltMeta {
	if len(b) < pageHeader+metaSize {
		return boltMeta{}
	}
	m := b[pageHeader : pageHeader+metaSize]
	h := fnv.New64a()
	h.Write(m[:56])
	return boltMeta{
		pageSize: int(ne.Uint32(m[8:])),
		root:     ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]),
		pages: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:]),
		valid: ne.Uint32(m[0:]) == boltMagic && ne.Uint32(m[4:]) == boltVersion &&
			ne.Uint64(m[56:]) == h.Sum64(),
	}
}

// readMetas returns the meta page bbolt will use: the valid one with the
// higher txid. If the first meta page is damaged, the second is looked for
// at every page size bbolt may have used, as bbolt does.
func readMetas(f *os.File, size int64) (boltMeta, error) {
	buf := make([]byte, pageHeader+metaSize)
	read := func(off int64) boltMeta {
		if off+int64(len(buf)) > size {
			return boltMeta{}
		}
		if _, err := f.ReadAt(buf, off); err != nil {
			return boltMeta{}
		}
		return parseMeta(buf)
	}
	m0 := read(0)
	var m1 boltMeta
	if m0.valid {
		m1 = read(int64(m0.pageSize))
	} else {
		for ps := minPageSize; ps <= maxPageSize && !m1.valid; ps *= 2 {
			m1 = read(int64(ps))
		}
	}
	best := m0
	if !m0.valid || (m1.valid && m1.txid > m0.txid) {
		best = m1
	}
	if !best.valid {
		return best, errors.New("both header (meta) pages are damaged")
	}
	if best.pageSize < minPageSize || best.pageSize > maxPageSize || best.pageSize&(best.pageSize-1) != 0 {
		return best, fmt.Errorf("header page gives page size %d", best.pageSize)
	}
	if best.pages < 2 || best.pages > maxCheckPages {
		return best, fmt.Errorf("header page gives %d pages", best.pages)
	}
	if need := int64(best.pages) * int64(best.pageSize); need > size {
		return best, fmt.Errorf("the file is %d bytes but its last commit needs %d: it was truncated", size, need)
	}
	return best, nil
}

// pageWalk visits the pages of one bbolt file.
type pageWalk struct {
	f    *os.File
	m    boltMeta
	seen []uint64 // bit set of pages already referenced
}

// checkPages checks the page structure of the bbolt file f of the given
// size: meta pages, the file size they record, the freelist page and every
// page of every bucket's B+tree. It never panics.
func checkPages(f *os.File, size int64) error {
	m, err := readMetas(f, size)
	if err != nil {
		return err
	}
	w := &pageWalk{f: f, m: m, seen: make([]uint64, (m.pages+63)/64)}
	w.mark(0, 2)
	if m.freelist != noFreelist {
		p, err := w.page(m.freelist, "freelist")
		if err != nil {
			return err
		}
		if err := w.freelist(p); err != nil {
			return err
		}
	}
	return w.tree(m.root, 0)
}

// mark records pages [id, id+n) as referenced and reports whether one of
// them already was.
func (w *pageWalk) mark(id, n uint64) bool {
	dup := false
	for i := id; i < id+n; i++ {
		if w.seen[i/64]&(1<<(i%64)) != 0 {
			dup = true
		}
		w.seen[i/64] |= 1 << (i % 64)
	}
	return dup
}

// page reads page id with its overflow pages and checks that it lies
// inside the file, is referenced once and is of the kind what expects.
func (w *pageWalk) page(id uint64, what string) ([]byte, error) {
	if id < 2 || id >= w.m.pages {
		return nil, fmt.Errorf("%s page %d is outside the file's %d pages", what, id, w.m.pages)
	}
	ps := int64(w.m.pageSize)
	p := make([]byte, ps)
	if _, err := w.f.ReadAt(p, int64(id)*ps); err != nil {
		return nil, fmt.Errorf("read page %d: %w", id, err)
	}
	n := uint64(ne.Uint32(p[12:])) + 1
	if ne.Uint64(p) != id || n > w.m.pages-id {
		return nil, fmt.Errorf("%s page %d is damaged (wrong id or size)", what, id)
	}
	if w.mark(id, n) {
		return nil, fmt.Errorf("%s page %d is referenced twice", what, id)
	}
	if n > 1 {
		p = append(p, make([]byte, int64(n-1)*ps)...)
		if _, err := w.f.ReadAt(p[ps:], int64(id+1)*ps); err != nil {
			return nil, fmt.Errorf("read page %d: %w", id, err)
		}
	}
	return p, nil
}

func (w *pageWalk) freelist(p []byte) error {
	if ne.Uint16(p[8:]) != flagFreelist {
		return fmt.Errorf("freelist page %d is damaged (type %#x)", ne.Uint64(p), ne.Uint16(p[8:]))
	}
	start, count := uint64(pageHeader), uint64(ne.Uint16(p[10:]))
	if count == 0xFFFF {
		count, start = ne.Uint64(p[pageHeader:]), pageHeader+8
	}
	if count > uint64(len(p)-int(start))/8 {
		return fmt.Errorf("freelist page %d is damaged (%d entries)", ne.Uint64(p), count)
	}
	for i := range count {
		if id := ne.Uint64(p[start+8*i:]); id < 2 || id >= w.m.pages {
			return fmt.Errorf("freelist page %d lists page %d outside the file", ne.Uint64(p), id)
		}
	}
	return nil
}

// tree checks the B+tree rooted at page id.
func (w *pageWalk) tree(id uint64, depth int) error {
	if depth > maxTreeDepth {
		return fmt.Errorf("page %d: buckets nested deeper than %d", id, maxTreeDepth)
	}
	p, err := w.page(id, "bucket")
	if err != nil {
		return err
	}
	return w.node(p, id, depth)
}

// node checks the elements of branch or leaf page p (page id, or 0 for an
// inline bucket's page) and descends into its children.
func (w *pageWalk) node(p []byte, id uint64, depth int) error {
	flags, count := ne.Uint16(p[8:]), int(ne.Uint16(p[10:]))
	if (flags != flagBranch && flags != flagLeaf) || (flags == flagBranch && id == 0) {
		return fmt.Errorf("page %d has type %#x where a bucket page belongs", id, flags)
	}
	if pageHeader+count*elementSize > len(p) {
		return fmt.Errorf("page %d is damaged (%d elements)", id, count)
	}
	for i := range count {
		e := pageHeader + i*elementSize
		el := p[e : e+elementSize]
		var pos, klen, vlen int
		if flags == flagBranch {
			pos, klen = int(ne.Uint32(el)), int(ne.Uint32(el[4:]))
		} else {
			pos, klen, vlen = int(ne.Uint32(el[4:])), int(ne.Uint32(el[8:])), int(ne.Uint32(el[12:]))
		}
		end := e + pos + klen + vlen
		if pos < 0 || end < e || end > len(p) {
			return fmt.Errorf("page %d: element %d lies outside the page", id, i)
		}
		var err error
		switch {
		case flags == flagBranch:
			err = w.tree(ne.Uint64(el[8:]), depth+1)
		case ne.Uint32(el)&flagBucket != 0:
			err = w.bucket(p[e+pos+klen:end], id, depth)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// bucket checks a bucket value found on page id.
func (w *pageWalk) bucket(v []byte, id uint64, depth int) error {
	if len(v) < bucketHeader {
		return fmt.Errorf("page %d: damaged bucket entry", id)
	}
	if root := ne.Uint64(v); root != 0 {
		return w.tree(root, depth+1)
	}
	if len(v) < bucketHeader+pageHeader {
		return fmt.Errorf("page %d: damaged inline bucket", id)
	}
	return w.node(v[bucketHeader:], 0, depth+1)
}
