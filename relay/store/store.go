// Package store defines a relay's mailbox store: the [Store] interface,
// which keeps mailboxes and the sealed envelopes waiting in them, and the
// promises every implementation keeps. [Memory] is the implementation for
// tests and `--dev`; relay/store/boltstore is the durable one, an
// append-only envelope log, that `relay serve` uses by default (it reads
// bbolt files of earlier releases only to migrate them). Both pass the conformance
// suite in relay/store/storetest.
//
// The same stores keep an entry relay's forward outbox: the [Outbox]
// interface (outbox.go), with its own conformance suite, storetest.RunOutbox.
//
// # What is stored
//
// An envelope is opaque bytes to the store (the relay has already parsed its
// outer header). A mailbox is an Ed25519 owner key plus an optional send
// capability verifier; authorising requests with them is the relay's job.
//
// # Acknowledged only when durable
//
// [Store.Put] returns a [Ref] only once the envelope is durable, and every
// other write (CreateMailbox, RotateMailbox, DeleteMailbox, Ack, Sweep) has
// taken effect durably when it returns without error, so a crash after that
// loses none of it. The one exception is an Ack's deletion, which a durable
// store may make durable about Options.AckSync later (once its writer is
// free): a crash before then, or a failed write, undoes it, which only
// delivers the envelopes again.
// For [Memory], durable means "in this process". A Put
// whose ctx ends while it waits may or may not have stored the envelope;
// putting it again is safe, since duplicates are stored once.
//
// # No metadata
//
// A store is built so that its seized data reveals as little as possible:
//
//   - Mailbox ids are never stored. Every id is replaced by
//     HMAC-SHA256(k_id, id) ([Keys.MailboxHash]), where k_id is derived
//     from a 32-byte store key (Options.IDKey).
//   - Envelopes are encrypted at rest ([Keys.Seal], AES-256-GCM) under a
//     key derived from the store key and the mailbox id, so the stored
//     ciphertext reveals neither the content nor the recipient id that a
//     sealed envelope's outer header carries. Without the id, even the
//     store key does not open them. ([Memory] keeps nothing at rest and
//     holds envelopes in the clear.)
//   - Envelope refs (used for ack and dedupe) are HMAC-SHA256(k_ref,
//     envelope) ([Keys.Ref]).
//   - There are no arrival timestamps. Envelopes are ordered by a
//     per-mailbox sequence number, and expiry is kept only as a day number
//     (Unix days, [ExpiryDay]): an envelope put at time t with TTL d expires
//     on the first day boundary at or after t+d, so it lives at least d and
//     at most d plus one day. A retired mailbox id keeps only the day it
//     becomes free.
//   - No error contains a mailbox id, a key, a ref or an envelope.
//
// # Quotas
//
// Per mailbox (envelope count and bytes) and per store (envelope bytes and
// mailbox count); see [Options]. A Put that would exceed a quota fails with
// [ErrMailboxFull] or [ErrStoreFull] and nothing already stored is dropped;
// CreateMailbox beyond the mailbox count (retired ids included), or a
// RotateMailbox that would retire one more, fails with [ErrStoreFull].
//
// # Writing an implementation
//
// [Keys], [Notifier], [Options.WithDefaults], [Options.EnvelopeQuota],
// [Options.MailboxQuota], [Options.RetiredUntil], [ExpiryDay], [Today],
// [ValidateMailbox], [ValidateEnvelope], [ValidateForward] and
// [Options.OutboxQuota] are the rules shared by every
// implementation: one built on them derives the same hashes, refs and
// ciphertexts from a store key, computes days the same way and returns the
// same errors as the others.
package store

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"time"
)

// Sizes and limits.
const (
	IDSize          = 32       // mailbox id, bytes
	RefSize         = 32       // envelope ref, bytes
	MaxEnvelopeSize = 64 << 10 // the largest envelope bucket, bytes
	MaxSendCapSize  = 1024     // largest send capability verifier, bytes
	DefaultFetchMax = 64       // Fetch(max <= 0) returns at most this many
	DefaultTTL      = 7 * 24 * time.Hour
	secondsPerDay   = 24 * 60 * 60
	defaultMaxBatch = 512
	defaultBoxCount = 4096     // envelopes per mailbox
	defaultBoxBytes = 64 << 20 // bytes per mailbox
	defaultAllBytes = 1 << 30  // bytes per store
	defaultRetire   = 90 * 24 * time.Hour
	defaultMaxBoxes = 1_000_000
)

// Ref names one stored envelope: a keyed hash of its bytes. Equal envelopes
// have equal refs, which is how duplicates are recognised. A Ref is an
// envelope identifier: never log it.
type Ref [RefSize]byte

// Item is one envelope returned by Fetch.
type Item struct {
	Ref Ref
	// Seq is the envelope's position in its mailbox: it increases with
	// every accepted envelope (starting at 1) and is never reused, so it is
	// a cursor for FetchAfter. It is not a time.
	Seq      uint64
	Envelope []byte
}

// Mailbox is what the store knows about a mailbox.
// FirstSeq is the sequence number a new mailbox's first envelope gets: a
// random number below 2^62. A mailbox a relay lost and its owner made
// again then numbers its envelopes in another range than the one before
// (the chance that the old range's last number falls inside the new one
// is the new one's count in 2^62): a cursor the owner's client kept from
// the one before is either past all of them, and NextSeq, which the relay
// takes for a cursor of a mailbox before (relay/server's subscribeFrom),
// or below all of them. When every mailbox started at 1, a SubscribeAfter
// past such a cursor never pushed the new mailbox's first envelopes (a
// reviewer's find). Random rather than the clock: the store keeps no
// time finer than a day.
func FirstSeq() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return 1 + binary.BigEndian.Uint64(b[:])>>2
}

type Mailbox struct {
	Owner        ed25519.PublicKey // verifies fetch, ack, rotate and delete
	SendCap      []byte            // send capability verifier; empty if none
	Pending      int               // envelopes waiting
	PendingBytes int64             // their total size
	// NextSeq is the sequence number the mailbox's next envelope will
	// get: above every one it has had, acked or not, across restarts.
	NextSeq uint64
}

// Stats are store-wide totals for metrics. They carry no identifiers.
type Stats struct {
	Mailboxes int
	Envelopes int
	Bytes     int64  // envelope bytes stored
	Commits   uint64 // durable write transactions so far (always 0 for Memory)
	Syncs     uint64 // fdatasyncs of group commits so far (always 0 for Memory)

	// DiskFull is true while a durable store's writes fail for lack of
	// disk space or quota (ErrDiskFull): set by a commit that failed with
	// ENOSPC or EDQUOT, cleared by the next commit that succeeds. A relay
	// reports it as unhealthy and logs it. Always false for Memory.
	DiskFull bool
}

// Store is a relay's mailbox store. All methods are safe for concurrent use.
// Errors returned are, or wrap, the sentinels in errors.go where one applies;
// none of them contains an id, a key or a ref.
type Store interface {
	// CreateMailbox creates mailbox id owned by owner (an Ed25519 public
	// key) with an optional send capability verifier. It fails with
	// ErrMailboxExists if id is taken.
	CreateMailbox(ctx context.Context, id [IDSize]byte, owner ed25519.PublicKey, sendCap []byte) error

	// Mailbox returns the owner key, send capability verifier and pending
	// counts of mailbox id, or ErrNoMailbox.
	Mailbox(ctx context.Context, id [IDSize]byte) (Mailbox, error)

	// DeleteMailbox deletes mailbox id and every envelope in it, or fails
	// with ErrNoMailbox. The id is retired (see Options.Retire): creating
	// it again fails with ErrMailboxExists until Sweep frees it.
	DeleteMailbox(ctx context.Context, id [IDSize]byte) error

	// RotateMailbox atomically creates mailbox newID with the given owner
	// and send capability, moves every pending envelope of oldID into it
	// (keeping their order, refs and expiry days) and deletes oldID. It
	// returns the number of envelopes moved. It fails with ErrNoMailbox if
	// oldID does not exist and ErrMailboxExists if newID does.
	//
	// While oldID is retired (see Options.Retire), and for no longer than
	// Options.TTL after the rotation (day-coarse, like an envelope's
	// expiry), Forwarded(oldID) answers newID and the send capability
	// verifier oldID had: an envelope sent to oldID in that time, such as
	// one an entry relay queued before the rotation, still reaches the
	// mailbox (relay/server follows it).
	RotateMailbox(ctx context.Context, oldID, newID [IDSize]byte, owner ed25519.PublicKey, sendCap []byte) (moved int, err error)

	// Forwarded returns the id mailbox id was rotated to and the send
	// capability verifier id had then (empty if none), while that
	// forward lasts (see RotateMailbox). It fails with ErrNoMailbox for
	// an id that is a mailbox, was never one, was deleted, or whose
	// forward has ended. The new id may itself have been rotated or
	// deleted since.
	Forwarded(ctx context.Context, id [IDSize]byte) (newID [IDSize]byte, sendCap []byte, err error)

	// Put stores env in mailbox id and returns its Ref once it is durable.
	// An exact duplicate of an envelope still pending in the mailbox is
	// stored once: Put returns the same Ref and no error, even when the
	// mailbox is full. Put fails with ErrNoMailbox, ErrMailboxFull,
	// ErrStoreFull or ErrInvalid (empty or larger than MaxEnvelopeSize).
	// If ctx ends while Put waits for the commit, Put returns ctx.Err()
	// and the envelope may or may not have been stored; retrying is safe.
	// Put keeps no reference to env once it returns, however it returns:
	// the caller may reuse the buffer (the relay pools Send frames).
	Put(ctx context.Context, id [IDSize]byte, env []byte) (Ref, error)

	// Fetch returns up to max pending envelopes of mailbox id in the order
	// they were accepted (max <= 0 means DefaultFetchMax). Fetching does not
	// remove them; Ack does. The items are the caller's; a store that
	// pools the memory it reads envelopes into lets the caller give it
	// back ([Recycler]).
	Fetch(ctx context.Context, id [IDSize]byte, max int) ([]Item, error)

	// FetchAfter is Fetch starting after the envelope at sequence number
	// after: it returns up to max pending envelopes with Seq > after, in
	// order. FetchAfter(ctx, id, 0, max) is Fetch(ctx, id, max). Readers
	// use it to page past envelopes they hold without re-reading them.
	FetchAfter(ctx context.Context, id [IDSize]byte, after uint64, max int) ([]Item, error)

	// Holds reports, for each of refs, whether mailbox id still holds
	// that envelope (pending, not acked, expired or moved), from the index
	// alone: no envelope is read. It fails with ErrNoMailbox.
	Holds(ctx context.Context, id [IDSize]byte, refs []Ref) ([]bool, error)

	// Ack deletes the given envelopes from mailbox id and returns how many
	// were deleted; refs that are not pending are ignored. Fetch no longer
	// returns them once Ack returns, but a durable store may make the
	// deletion durable about Options.AckSync later; a crash (or a failed
	// write) before then undoes it and the envelopes are pending again.
	Ack(ctx context.Context, id [IDSize]byte, refs ...Ref) (int, error)

	// Notify subscribes to arrivals in mailbox id. The channel receives a
	// value (coalesced: at most one buffered) after each durable Put or
	// Rotate into the mailbox, and is closed when the store closes. Call
	// the returned function to unsubscribe. Subscriptions live in memory
	// only.
	Notify(id [IDSize]byte) (<-chan struct{}, func())

	// Sweep deletes every envelope whose expiry day has begun at now, and
	// returns how many it deleted. It also frees retired mailbox ids whose
	// retirement has ended, and ends the forwards (see RotateMailbox)
	// whose day has begun.
	Sweep(ctx context.Context, now time.Time) (expired int, err error)

	// Stats returns store-wide totals.
	Stats() Stats

	// Close releases the store. Calls after Close fail with ErrClosed.
	Close() error
}

// Recycler is a Store whose Fetch and FetchAfter read envelopes into
// memory it pools. Recycle gives the Envelopes of items back: the caller
// uses none of their bytes afterwards and gives each back once. Items
// never given back cost only the reuse. A caller that copies each
// envelope out (the relay queues it into its write buffer) gives them
// back as soon as it has. A Store that wraps another passes Recycle on
// only if it hands out the items of the other's FetchAfter unchanged and
// keeps none of them; otherwise it does not implement Recycler (a wrapper
// that embeds a Recycler must then hide Recycle).
type Recycler interface {
	Recycle(items []Item)
}

// Options tune a store. The zero value means sensible defaults.
type Options struct {
	// IDKey is the 32-byte store key from which the mailbox id hash, the
	// ref hash and the at-rest envelope keys are derived (see Keys). If
	// nil, Memory makes a random one and a durable store loads (or
	// creates) KeyFile.
	IDKey []byte

	// KeyFile is where a durable store keeps the store key when IDKey is
	// nil. Default for boltstore: <dir>/store.key. Put it on another volume
	// than the data file so a seized data file alone reveals no mailbox
	// ids. Memory ignores it.
	KeyFile string

	// TTL is how long an envelope waits before Sweep may delete it, and
	// an outbox item before Expire may (rounded up to a day boundary).
	// Default DefaultTTL (7 days).
	TTL time.Duration

	// MaxMailboxEnvelopes and MaxMailboxBytes limit one mailbox;
	// MaxStoreBytes limits the envelope bytes of the whole store.
	// 0 means the default (4096 envelopes, 64 MiB, 1 GiB); negative means
	// no limit.
	MaxMailboxEnvelopes int
	MaxMailboxBytes     int64
	MaxStoreBytes       int64

	// Retire is how long a deleted or rotated-away mailbox id stays
	// unusable, so that nobody else can create it while contacts may still
	// send to it (they get "no such mailbox" instead of a silent
	// take-over). Kept as a day number with the id's hash. Default 90 days;
	// negative means ids are free at once.
	Retire time.Duration

	// MaxMailboxes bounds the mailboxes of the store and the ids retired
	// (see Retire) together: Create beyond it, or a Rotate that would
	// retire one more, fails with ErrStoreFull. Default 1,000,000;
	// negative means no limit. Until 2026-12-07 retired ids did not
	// count, and rotating one mailbox over and over grew the store's
	// memory and log without bound (an audit: 147 bytes of heap and 124
	// of log each, for 90 days; the relay also limits such operations
	// per source, relay/server).
	MaxMailboxes int

	// MaxOutboxBytes bounds the item bytes of the forward outbox (see
	// Outbox); Enqueue beyond it fails with ErrOutboxFull. Outbox items
	// expire after TTL, like envelopes. Default DefaultOutboxBytes
	// (256 MiB); negative means no limit.
	MaxOutboxBytes int64

	// Now is the clock used to compute expiry days at Put. Default time.Now.
	Now func() time.Time

	// MaxBatch bounds how many writes one durable transaction holds
	// (boltstore's group commit). Default 512. Memory ignores it.
	MaxBatch int

	// CommitDelay is how long a durable store's committer waits for more
	// writes after the first one of a batch, unless the batch is full.
	// With the default 0 it waits only while writes come back to back,
	// after a batch of several, and then no longer than a quarter of an
	// fdatasync (boltstore lingers: see its package comment); after a
	// lone write, or a pause, it does not wait, so a quiet store adds no
	// latency. Negative never waits: a batch is every
	// write that arrived while the previous one was being committed.
	// Memory ignores it.
	CommitDelay time.Duration

	// OnCommit, if set, is called by a durable store's committer after each
	// successful commit with the number of writes in it and how long the
	// transaction took (for metrics). It must not block. Memory never
	// calls it.
	OnCommit func(writes int, took time.Duration)

	// AckSync is how long a durable store may hold the deletions of Acks
	// in memory, waiting to write them with the next batch and share its
	// fdatasync: a deletion that a crash undoes only delivers the
	// envelopes again, and the recipient drops what it has seen. Default
	// DefaultAckSync; negative writes and syncs every Ack before it
	// returns. Memory ignores it.
	AckSync time.Duration
}

// DefaultAckSync is Options.AckSync's default.
const DefaultAckSync = 100 * time.Millisecond

// WithDefaults returns o with every field that asks for a default set to
// it. Store implementations call it once on the options they are given;
// the other Options methods expect its result.
func (o Options) WithDefaults() Options {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.MaxMailboxEnvelopes == 0 {
		o.MaxMailboxEnvelopes = defaultBoxCount
	}
	if o.MaxMailboxBytes == 0 {
		o.MaxMailboxBytes = defaultBoxBytes
	}
	if o.MaxStoreBytes == 0 {
		o.MaxStoreBytes = defaultAllBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Retire == 0 {
		o.Retire = defaultRetire
	}
	if o.MaxMailboxes == 0 {
		o.MaxMailboxes = defaultMaxBoxes
	}
	if o.MaxOutboxBytes == 0 {
		o.MaxOutboxBytes = DefaultOutboxBytes
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = defaultMaxBatch
	}
	if o.AckSync == 0 {
		o.AckSync = DefaultAckSync
	}
	return o
}

// EnvelopeQuota reports whether one more envelope of n bytes fits in a
// mailbox holding boxCount envelopes of boxBytes bytes, in a store holding
// allBytes envelope bytes: it returns nil, ErrMailboxFull or ErrStoreFull.
func (o Options) EnvelopeQuota(boxCount int, boxBytes, allBytes int64, n int) error {
	if o.MaxMailboxEnvelopes > 0 && boxCount+1 > o.MaxMailboxEnvelopes {
		return ErrMailboxFull
	}
	if o.MaxMailboxBytes > 0 && boxBytes+int64(n) > o.MaxMailboxBytes {
		return ErrMailboxFull
	}
	if o.MaxStoreBytes > 0 && allBytes+int64(n) > o.MaxStoreBytes {
		return ErrStoreFull
	}
	return nil
}

// ExpiryDay is the Unix day (days since 1970-01-01 UTC) on which an
// envelope accepted at now with time to live ttl expires: the first day
// boundary at or after now+ttl. A store keeps this day, never now.
func ExpiryDay(now time.Time, ttl time.Duration) uint32 {
	s := now.Add(ttl).Unix()
	d := s / secondsPerDay
	if s%secondsPerDay != 0 {
		d++
	}
	if d < 0 {
		return 0
	}
	return uint32(d)
}

// Today is the Unix day that contains now. At now, envelopes and retired
// ids whose day is at most Today(now) have expired.
func Today(now time.Time) uint32 {
	s := now.Unix()
	if s < 0 {
		return 0
	}
	return uint32(s / secondsPerDay)
}

// ValidateMailbox checks the arguments of CreateMailbox and RotateMailbox:
// an Ed25519 public key and a send capability of at most MaxSendCapSize
// bytes. It returns nil or ErrInvalid.
func ValidateMailbox(owner ed25519.PublicKey, sendCap []byte) error {
	if len(owner) != ed25519.PublicKeySize {
		return ErrInvalid
	}
	if len(sendCap) > MaxSendCapSize {
		return ErrInvalid
	}
	return nil
}

// ValidateEnvelope checks the envelope of a Put: 1 to MaxEnvelopeSize
// bytes. It returns nil or ErrInvalid.
func ValidateEnvelope(env []byte) error {
	if len(env) == 0 || len(env) > MaxEnvelopeSize {
		return ErrInvalid
	}
	return nil
}

// RetiredUntil is the Unix day on which a mailbox id retired at now
// becomes free again (see Today). ok is false if ids are not retired at
// all (Retire < 0).
func (o Options) RetiredUntil(now time.Time) (day uint32, ok bool) {
	if o.Retire < 0 {
		return 0, false
	}
	return ExpiryDay(now, o.Retire), true
}

// ForwardUntil is the Unix day on which the forward of a mailbox id
// rotated away at now ends (see Store.RotateMailbox and Today): TTL after
// now, and no later than the id's retirement. ok is false if ids are not
// retired (Retire < 0): an id free at once cannot point anywhere.
func (o Options) ForwardUntil(now time.Time) (day uint32, ok bool) {
	retired, ok := o.RetiredUntil(now)
	if !ok {
		return 0, false
	}
	return min(ExpiryDay(now, o.TTL), retired), true
}

// MaxForwardChain is how many rotations of one mailbox may still forward
// into it (Store.RotateMailbox): one more within the TTL fails with
// ErrRotatedOften, so that an envelope naming an id rotated away within
// the TTL always reaches the mailbox, and a relay follows at most this
// many forwards for it.
const MaxForwardChain = 8

// NextChain returns the forward chain (MailboxKeys.Chain) of the mailbox
// that mailbox chain is rotated into at now: the forwards still going,
// and the new one's end (ForwardUntil). It fails with ErrRotatedOften if
// MaxForwardChain of them still go. Without forwards (Retire < 0) the
// chain is empty.
func (o Options) NextChain(chain []uint32, now time.Time) ([]uint32, error) {
	until, ok := o.ForwardUntil(now)
	if !ok {
		return nil, nil
	}
	today := Today(now)
	var next []uint32
	for _, d := range chain {
		if d > today {
			next = append(next, d)
		}
	}
	if len(next) >= MaxForwardChain {
		return nil, ErrRotatedOften
	}
	return append(next, until), nil
}

// MailboxQuota reports whether one more mailbox fits in a store holding
// count mailboxes: it returns nil or ErrStoreFull.
func (o Options) MailboxQuota(count int) error {
	if o.MaxMailboxes > 0 && count+1 > o.MaxMailboxes {
		return ErrStoreFull
	}
	return nil
}
