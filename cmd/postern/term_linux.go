package main

import (
	"os"
	"syscall"
	"unsafe"
)

// isTerminal reports whether v is a terminal (a TCGETS ioctl works on
// it). Tests replace it to see prompts and progress.
var isTerminal = func(v any) bool {
	f, ok := v.(*os.File)
	if !ok || f == nil {
		return false
	}
	var t syscall.Termios
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCGETS, uintptr(unsafe.Pointer(&t)))
	return errno == 0
}
