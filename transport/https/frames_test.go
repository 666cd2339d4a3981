package https

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func encodeRecords(chunks [][]byte, end bool) []byte {
	var b bytes.Buffer
	var hdr [4]byte
	for _, c := range chunks {
		if len(c) == 0 {
			continue
		}
		binary.BigEndian.PutUint32(hdr[:], uint32(len(c)))
		b.Write(hdr[:])
		b.Write(c)
	}
	if end {
		b.Write([]byte{0, 0, 0, 0})
	}
	return b.Bytes()
}

func TestRecordReader(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		want  string
		err   error
		trail bool // bytes after the end record are ignored
	}{
		{"empty body", nil, "", nil, false},
		{"end record only", []byte{0, 0, 0, 0}, "", nil, false},
		{"two records and end", encodeRecords([][]byte{[]byte("hello "), []byte("world")}, true), "hello world", nil, false},
		{"no end record", encodeRecords([][]byte{[]byte("abc")}, false), "abc", nil, false},
		{"data after end ignored", append(encodeRecords([][]byte{[]byte("x")}, true), 0, 0, 0, 1, 'y'), "x", nil, true},
		{"truncated payload", []byte{0, 0, 0, 5, 'a', 'b'}, "ab", io.ErrUnexpectedEOF, false},
		{"truncated header", []byte{0, 0}, "", io.ErrUnexpectedEOF, false},
		{"oversized record", []byte{0xff, 0xff, 0xff, 0xff, 'a'}, "", errBadRecord, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := io.ReadAll(&recordReader{r: bytes.NewReader(tc.in)})
			if string(got) != tc.want || !errors.Is(err, tc.err) {
				t.Errorf("got %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func FuzzRecordReader(f *testing.F) {
	f.Add(encodeRecords([][]byte{[]byte("hello")}, true), 3)
	f.Add([]byte{0, 0, 0, 2, 'h'}, 1)
	f.Add([]byte{0xff, 0, 0, 0}, 7)
	f.Fuzz(func(t *testing.T, in []byte, bufSize int) {
		if bufSize <= 0 || bufSize > 1<<16 {
			bufSize = 1
		}
		rr := &recordReader{r: bytes.NewReader(in)}
		buf := make([]byte, bufSize)
		total := 0
		for range len(in) + 2 {
			n, err := rr.Read(buf)
			total += n
			if err != nil {
				break
			}
		}
		if total > len(in) {
			t.Fatalf("decoded %d bytes from %d", total, len(in))
		}
		// Well-formed input decodes to its payload.
		chunks := [][]byte{in, in[:len(in)/2]}
		got, err := io.ReadAll(&recordReader{r: bytes.NewReader(encodeRecords(chunks, true))})
		if err != nil || !bytes.Equal(got, append(append([]byte{}, in...), in[:len(in)/2]...)) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
