package boltstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/relay/store/storetest"
)

// TestRetiredCountAfterReopen: the retired ids a store rebuilt from its
// log at Open count against MaxMailboxes as they did before it closed.
func TestRetiredCountAfterReopen(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	opts := store.Options{MaxMailboxes: 2, Now: func() time.Time { return now }, Retire: 30 * 24 * time.Hour}
	dir := t.TempDir()
	s, err := boltstore.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.CreateMailbox(ctx, storetest.ID(1), storetest.Owner(1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateMailbox(ctx, storetest.ID(1), storetest.ID(2), storetest.Owner(2), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = boltstore.Open(dir, opts); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateMailbox(ctx, storetest.ID(3), storetest.Owner(3), nil); !errors.Is(err, store.ErrStoreFull) {
		t.Fatalf("a mailbox beside one and a retired id, reopened: %v", err)
	}
}
