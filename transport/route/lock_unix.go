//go:build unix

package route

import (
	"os"
	"syscall"
)

// LockFile takes an exclusive lock (flock) on path, created if need be,
// waiting for it, and returns what gives it back. A process that cannot
// lock goes on without it: the route memory and the CLI's state files
// use it to keep two postern processes from writing over each other.
func LockFile(path string) func() {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return func() {}
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return func() {}
	}
	return func() { f.Close() }
}
