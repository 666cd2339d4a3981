package main

import (
	"os"
	"syscall"
)

// stdoutClosed reports whether the process started with its standard
// output closed (`postern recv >&-`). The Go runtime then opens /dev/null
// read-write on descriptor 1, where a shell's `> /dev/null` opens it
// write-only; recv must not take messages from the relay that nobody can
// see, so it refuses.
func stdoutClosed(f *os.File) bool {
	if f == nil || f.Fd() != 1 {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(1, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0x103 {
		return false
	}
	flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, 1, syscall.F_GETFL, 0)
	return errno == 0 && flags&syscall.O_ACCMODE == syscall.O_RDWR
}
