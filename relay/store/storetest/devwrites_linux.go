//go:build linux

package storetest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DeviceWriteBytes returns the bytes written so far to the block device
// that holds path, by every process on the host (the sectors-written
// field of /sys/dev/block/MAJ:MIN/stat, in 512-byte sectors), or -1 if
// the file system has no block device or the counter cannot be read.
//
// It is the check on WriteBytes, which counts pages as they are dirtied:
// on a kernel whose page cache keeps a file in large folios, dirtying a
// few bytes of a cached folio counts the whole folio, so overwriting a
// file that was recently written or read counts far more than the device
// is sent (a 13,000-byte pwrite + fdatasync over a file written in one
// 16 MiB write counted 2.1 MB on Linux 6.18; the device wrote 17–28 KB).
// The device's counter includes the file system's journal (about: ext4
// checkpoints some of it later, outside a short window), and whatever
// else runs on the host.
func DeviceWriteBytes(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return -1
	}
	dev := uint64(st.Dev)
	data, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(dev), unix.Minor(dev)))
	if err != nil {
		return -1
	}
	f := strings.Fields(string(data))
	if len(f) < 7 {
		return -1
	}
	sectors, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		return -1
	}
	return sectors * 512
}
