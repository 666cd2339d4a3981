//go:build !unix

package boltstore

import "os"

// lockDir opens dir; other systems get no lock.
func lockDir(dir string) (*os.File, error) { return os.Open(dir) }
