package https

import (
	"encoding/binary"
	"errors"
	"io"
)

// MaxRecord is the largest payload of one server-to-client record.
const MaxRecord = 1 << 20

const recordHeaderLen = 4

var errBadRecord = errors.New("https: malformed stream record from relay")

// recordReader undoes the server-to-client framing described in the
// package documentation.
type recordReader struct {
	r      io.Reader
	remain int // payload bytes left in the current record
	eof    bool
	hdr    [recordHeaderLen]byte
}

func (rr *recordReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for rr.remain == 0 {
		if rr.eof {
			return 0, io.EOF
		}
		if _, err := io.ReadFull(rr.r, rr.hdr[:]); err != nil {
			if err == io.EOF {
				rr.eof = true // body ended between records: a plain close
				return 0, io.EOF
			}
			return 0, err
		}
		n := binary.BigEndian.Uint32(rr.hdr[:])
		if n == 0 {
			rr.eof = true
			return 0, io.EOF
		}
		if n > MaxRecord {
			return 0, errBadRecord
		}
		rr.remain = int(n)
	}
	if len(p) > rr.remain {
		p = p[:rr.remain]
	}
	n, err := rr.r.Read(p)
	rr.remain -= n
	if err == io.EOF {
		if rr.remain > 0 {
			return n, io.ErrUnexpectedEOF
		}
		rr.eof = true
		if n > 0 {
			err = nil
		}
	}
	return n, err
}
