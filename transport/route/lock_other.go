//go:build !unix

package route

// LockFile is a no-op where flock is not available.
func LockFile(string) func() { return func() {} }
