package store_test

import (
	"crypto/rand"
	"testing"

	"github.com/postern/postern/relay/store"
)

// BenchmarkKeysPut is the key work of one durable Put of a 4 KiB envelope
// (mailbox hash, ref, at-rest seal), round-robin over 64 mailboxes as 64
// senders to 64 mailboxes would be.
func BenchmarkKeysPut(b *testing.B) {
	key := make([]byte, store.KeySize)
	rand.Read(key)
	k, err := store.NewKeys(key)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([][store.IDSize]byte, 64)
	for i := range ids {
		rand.Read(ids[i][:])
	}
	env := make([]byte, 4096)
	rand.Read(env)
	b.SetBytes(int64(len(env)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		id := ids[i%len(ids)]
		k.MailboxHash(id)
		k.Seal(id, k.Ref(env), env)
	}
}
