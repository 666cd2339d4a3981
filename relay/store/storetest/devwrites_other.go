//go:build !linux

package storetest

// DeviceWriteBytes is -1 off Linux: see the Linux version.
func DeviceWriteBytes(path string) int64 { return -1 }
