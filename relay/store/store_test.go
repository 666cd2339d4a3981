package store_test

import (
	"testing"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts store.Options) store.Store {
		return store.NewMemory(opts)
	})
}

func BenchmarkPutMemory(b *testing.B) {
	s := store.NewMemory(store.Options{MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1})
	defer s.Close()
	storetest.BenchPut(b, s)
}

func TestMemoryOutboxConformance(t *testing.T) {
	storetest.RunOutbox(t, func(t *testing.T, opts store.Options) store.Outbox {
		return store.NewMemory(opts)
	})
}
