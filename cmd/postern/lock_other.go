//go:build !unix

package main

// lockDataDir does nothing where flock is missing: there, two relays on
// one data directory are the operator's to avoid.
func lockDataDir(string) (func(), error) { return func() {}, nil }
