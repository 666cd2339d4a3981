package boltstore

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// TestRotationsOneAtATime: a rotation waits while another is in the
// committer's hands (and gives up with its context, changing nothing);
// one whose caller gave up while the committer had it keeps its turn
// until the committer is done with it, and is applied.
func TestRotationsOneAtATime(t *testing.T) {
	s, err := Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bg := context.Background()
	for n := 1; n <= 2; n++ {
		if err := s.CreateMailbox(bg, storetest.ID(n), storetest.Owner(n), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Put(bg, storetest.ID(n), storetest.Envelope(storetest.ID(n), 4096, n)); err != nil {
			t.Fatal(err)
		}
	}

	s.rotating <- struct{}{} // another rotation's turn
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	_, err = s.RotateMailbox(ctx, storetest.ID(1), storetest.ID(3), storetest.Owner(3), nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a rotation beside another's turn: %v", err)
	}
	<-s.rotating
	if _, err := s.Fetch(bg, storetest.ID(1), 10); err != nil {
		t.Fatalf("a rotation that waited and gave up changed its mailbox: %v", err)
	}

	// The committer, holding the rotation, waits.
	taken, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s.applying = func() { once.Do(func() { close(taken); <-resume }) }
	ctx, cancel = context.WithCancel(bg)
	done := make(chan error, 1)
	go func() {
		_, err := s.RotateMailbox(ctx, storetest.ID(1), storetest.ID(3), storetest.Owner(3), nil)
		done <- err
	}()
	<-taken
	cancel()
	err = <-done
	stuck := len(s.rotating)
	close(resume)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a rotation given up: %v", err)
	}
	if stuck != 1 {
		t.Fatal("a rotation given up while the committer had it let the next one in")
	}
	for deadline := time.Now().Add(10 * time.Second); len(s.rotating) > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) { // a deadlock guard
			t.Fatal("the turn of a rotation given up was never given back")
		}
	}
	if _, err := s.Fetch(bg, storetest.ID(3), 10); err != nil {
		t.Fatalf("the rotation given up was not applied: %v", err)
	}
	if _, err := s.RotateMailbox(bg, storetest.ID(2), storetest.ID(4), storetest.Owner(4), nil); err != nil {
		t.Fatalf("the next rotation: %v", err)
	}
}
