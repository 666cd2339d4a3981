package client

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/postern/postern/envelope"
)

// BenchmarkReplaySave records fresh ids in a replay file that already
// holds held of them, as an Inbox does once per page or batch (fresh 64)
// or per message for a receiver following one message at a time (fresh
// 1), and reports the bytes written to the file per save. Beside it, in
// the same run, raw: the same ids appended to a file and synced, the
// least a durable record of them can cost.
func BenchmarkReplaySave(b *testing.B) {
	const limit = 16384
	for _, held := range []int{0, limit} {
		for _, fresh := range []int{1, 64} {
			b.Run(fmt.Sprintf("held=%d/fresh=%d", held, fresh), func(b *testing.B) {
				path := filepath.Join(b.TempDir(), "replay")
				if err := ReplayFile(path).Save(randomIDs(held)); err != nil {
					b.Fatal(err)
				}
				rl, err := loadReplayLog(ReplayFile(path), limit)
				if err != nil {
					b.Fatal(err)
				}
				start := writeBytes(b)
				for b.Loop() {
					for _, id := range randomIDs(fresh) {
						rl.add(id)
					}
					if err := rl.save(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(writeBytes(b)-start)/float64(b.N), "B-written/save")
			})
			b.Run(fmt.Sprintf("held=%d/fresh=%d/raw", held, fresh), func(b *testing.B) {
				f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				buf := make([]byte, fresh*envelope.IDSize)
				rand.Read(buf)
				start := writeBytes(b)
				for b.Loop() {
					if _, err := f.Write(buf); err != nil {
						b.Fatal(err)
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(writeBytes(b)-start)/float64(b.N), "B-written/save")
			})
		}
	}
}

func randomIDs(n int) [][envelope.IDSize]byte {
	ids := make([][envelope.IDSize]byte, n)
	for i := range ids {
		rand.Read(ids[i][:])
	}
	return ids
}

// writeBytes is what this process has passed to write calls so far
// (/proc/self/io wchar).
func writeBytes(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skip("no /proc/self/io:", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no wchar in /proc/self/io")
	return 0
}
