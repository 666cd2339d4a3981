package store

import (
	"context"
	"time"
)

// The forward outbox (issue #10). In a two-hop send the client hands its
// envelope, wrapped in a forward layer, to an entry relay, which must
// deliver the layer to the recipient's home relay over a relay link. The
// entry relay stores the layer in its Outbox before it acks the client,
// forwards it, and deletes it with Done when the home relay acks; until the
// item's expiry it retries. The outbox lives beside the mailboxes:
// boltstore keeps both in one data file, under one store key.
//
// Promises, as for mailboxes: Enqueue returns only once the item is
// durable, Done and Expire have taken effect durably when they return, and
// there are no arrival times: an item keeps only its expiry day,
// ExpiryDay(now, Options.TTL). A destination is a relay hash, not user
// data, but it is still never logged nor put in an error.

// Outbox limits.
const (
	// MaxForwardSize is the largest outbox item: a Forward payload, the
	// home relay's descriptor (at most 8 KiB) and a forward layer wrapping
	// an envelope of MaxEnvelopeSize bytes (at most 66,778 bytes).
	MaxForwardSize = 80 << 10
	// DefaultOutboxBytes is the default of Options.MaxOutboxBytes.
	DefaultOutboxBytes = 256 << 20
)

// Outbox errors. ErrOutboxFull has CodeStoreFull: to a client it means the
// same as ErrStoreFull.
var (
	ErrOutboxFull = &Error{CodeStoreFull,
		"relay forward queue full: too many messages are waiting for other relays; retry later or use another entry relay"}
	ErrInvalidForward = &Error{CodeInvalid,
		"invalid forward: a forward item must be 1 to 81920 bytes"}
)

// Outbox is the entry relay's durable queue of forward layers, by
// destination relay. All methods are safe for concurrent use. Errors are,
// or wrap, the package's sentinels where one applies, and never contain a
// destination or an item.
type Outbox interface {
	// Enqueue stores item (1 to MaxForwardSize bytes, else
	// ErrInvalidForward) for relay dest and returns it with its sequence
	// number once it is durable. It fails with ErrOutboxFull, dropping
	// nothing already stored, if the outbox would exceed
	// Options.MaxOutboxBytes. If ctx ends while Enqueue waits for the
	// commit, the item may or may not have been stored.
	Enqueue(ctx context.Context, dest [32]byte, item []byte) (OutboxItem, error)

	// Pending returns up to max items for dest with Seq > after, oldest
	// first (max <= 0 means DefaultFetchMax). Reading removes nothing.
	Pending(ctx context.Context, dest [32]byte, after uint64, max int) ([]OutboxItem, error)

	// Done deletes the items of dest with the given sequence numbers;
	// numbers that are not pending for dest are ignored.
	Done(ctx context.Context, dest [32]byte, seqs ...uint64) error

	// Dests lists the destinations that have pending items, in byte order.
	Dests(ctx context.Context) ([][32]byte, error)

	// Expire deletes every item whose expiry day has begun at now (see
	// Today) and returns how many it deleted.
	Expire(ctx context.Context, now time.Time) (int, error)

	// OutboxStats returns the outbox totals.
	OutboxStats() OutboxStats
}

// OutboxItem is one forward layer in the outbox.
type OutboxItem struct {
	// Seq increases with every item accepted by the store (starting at 1,
	// across all destinations) and is never reused, so it is a cursor for
	// Pending and the handle for Done. It is not a time.
	Seq  uint64
	Item []byte
}

// OutboxStats are outbox totals for metrics. They carry no identifiers.
type OutboxStats struct {
	Items int
	Bytes int64 // item bytes stored
}

// ValidateForward checks the item of an Enqueue: 1 to MaxForwardSize
// bytes. It returns nil or ErrInvalidForward.
func ValidateForward(item []byte) error {
	if len(item) == 0 || len(item) > MaxForwardSize {
		return ErrInvalidForward
	}
	return nil
}

// OutboxQuota reports whether one more item of n bytes fits in an outbox
// holding allBytes item bytes: it returns nil or ErrOutboxFull.
func (o Options) OutboxQuota(allBytes int64, n int) error {
	if o.MaxOutboxBytes > 0 && allBytes+int64(n) > o.MaxOutboxBytes {
		return ErrOutboxFull
	}
	return nil
}
