package boltstore

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// TestDiskFullTmpfs fills a small tmpfs (as root only): the Put that does
// not fit fails with ErrDiskFull and sets Stats.DiskFull; once there is
// room again a Put succeeds and clears it, and the file reopens cleanly.
func TestDiskFullTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	ctx := context.Background()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	s, err := Open(dir, store.Options{IDKey: testKey})
	must(t, err)
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	var full error
	for i := 0; full == nil && i < 100; i++ {
		_, full = s.Put(ctx, id, storetest.Envelope(id, 16<<10, i))
	}
	if !errors.Is(full, store.ErrDiskFull) || !errors.Is(full, syscall.ENOSPC) {
		t.Fatalf("Put on a full disk: %v, want ErrDiskFull", full)
	}
	if !s.Stats().DiskFull {
		t.Fatal("Stats().DiskFull is false on a full disk")
	}
	must(t, syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT, "size=4m,mode=0700"))
	if _, err := s.Put(ctx, id, storetest.Envelope(id, 16<<10, 1000)); err != nil {
		t.Fatalf("Put after space was freed: %v", err)
	}
	if s.Stats().DiskFull {
		t.Fatal("Stats().DiskFull still true after a successful commit")
	}
	n := s.Stats().Envelopes
	must(t, s.Close())
	s, err = Open(dir, store.Options{IDKey: testKey})
	if err != nil {
		t.Fatalf("reopen after a full disk: %v", err)
	}
	defer s.Close()
	if items, err := s.Fetch(ctx, id, 1<<20); err != nil || len(items) != n {
		t.Fatalf("after reopen: %d envelopes, %v; want %d", len(items), err, n)
	}
}
