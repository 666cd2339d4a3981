package store_test

import (
	"testing"

	"github.com/postern/postern/relay/store"
)

// TestNotifier exercises a zero Notifier directly; the conformance suite
// checks Notify through the stores.
func TestNotifier(t *testing.T) {
	var n store.Notifier
	a, b := [32]byte{1}, [32]byte{2}
	pending := func(ch <-chan struct{}) bool {
		select {
		case _, ok := <-ch:
			return ok
		default:
			return false
		}
	}
	cha, cancelA := n.Subscribe(a)
	chb, cancelB := n.Subscribe(b)
	defer cancelB()
	n.Wake(a)
	n.Wake(a)
	if !pending(cha) || pending(cha) {
		t.Fatal("two wakes did not leave exactly one signal")
	}
	if pending(chb) {
		t.Fatal("waking a woke b")
	}
	cancelA()
	cancelA()
	n.Wake(a)
	if pending(cha) {
		t.Fatal("woken after unsubscribing")
	}
	n.Close()
	n.Close()
	if _, ok := <-chb; ok {
		t.Fatal("Close left a subscription open")
	}
	late, cancel := n.Subscribe(a)
	cancel()
	if _, ok := <-late; ok {
		t.Fatal("Subscribe after Close returned an open channel")
	}
	n.Wake(a) // harmless after Close
}
