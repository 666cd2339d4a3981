package boltstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// TestCommitDelay: with a CommitDelay, a lone write waits that long for
// company before it is committed, and no longer.
func TestCommitDelay(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		const delay = 3 * time.Second
		s := open(t, dir, store.Options{CommitDelay: delay})
		defer s.Close()
		id := storetest.ID(1)
		start := time.Now()
		if err := s.CreateMailbox(ctx, id, storetest.Owner(1), nil); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took != delay {
			t.Fatalf("a lone write took %v, want the CommitDelay %v", took, delay)
		}
	})
}

// TestCancelWhileCommitting: a Put whose ctx ends after the committer took
// it returns ctx.Err() at once; Close still completes the write.
func TestCancelWhileCommitting(t *testing.T) {
	dir := t.TempDir()
	id := storetest.ID(1)
	env := storetest.Envelope(id, 4096, 1)
	synctest.Test(t, func(t *testing.T) {
		s := open(t, dir, store.Options{})
		if err := s.CreateMailbox(context.Background(), id, storetest.Owner(1), nil); err != nil {
			t.Fatal(err)
		}
		s.Close()
		// The committer holds the Put for a minute, waiting for a second write.
		s = open(t, dir, store.Options{MaxBatch: 2, CommitDelay: time.Minute})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := s.Put(ctx, id, env)
			errc <- err
		}()
		synctest.Wait() // the Put is with the committer
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled Put returned %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	})
	s := open(t, dir, store.Options{})
	defer s.Close()
	items, err := s.Fetch(context.Background(), id, 0)
	if err != nil || len(items) != 1 {
		t.Fatalf("after Close, the mailbox holds %d envelopes (%v); want the one handed to the committer", len(items), err)
	}
}

// TestCloseWhileWaiting: a write still waiting for the busy committer when
// Close is called fails with ErrClosed instead of hanging.
func TestCloseWhileWaiting(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		hold := make(chan struct{})
		var once sync.Once
		held := make(chan struct{})
		s := open(t, dir, store.Options{OnCommit: func(int, time.Duration) {
			once.Do(func() { close(held); <-hold }) // keep the committer busy once
		}})
		go s.CreateMailbox(ctx, storetest.ID(1), storetest.Owner(1), nil)
		<-held
		errc := make(chan error, 1)
		go func() { errc <- s.CreateMailbox(ctx, storetest.ID(2), storetest.Owner(2), nil) }()
		synctest.Wait() // the second write waits to be taken
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		if err := <-errc; !errors.Is(err, store.ErrClosed) {
			t.Fatalf("write waiting at Close returned %v, want ErrClosed", err)
		}
		close(hold)
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
	})
	s := open(t, dir, store.Options{})
	defer s.Close()
	if got := s.Stats().Mailboxes; got != 1 {
		t.Fatalf("%d mailboxes after Close, want the 1 committed before it", got)
	}
}
