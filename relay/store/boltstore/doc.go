// Package boltstore is the durable [store.Store] and [store.Outbox]: one
// bbolt file, with every write going through a group-committing goroutine. It keeps every promise
// of package store; this comment says how, on disk.
//
// # Files
//
// Open(dir, opts) keeps the data in dir/store.db ([DataFile]) and, unless
// Options.IDKey or Options.KeyFile say otherwise, the 32-byte store key in
// dir/store.key ([KeyFile]). dir is created with mode 0700, both files with
// 0600; a key file that other users may access is refused. Keep the key on
// another volume (Options.KeyFile) or only in memory (Options.IDKey) and a
// seized data file does not reveal which mailbox ids exist, nor, without the
// ids, any envelope. A missing key file is created only if the data file has
// never been used with a key, and a key that does not match the data file
// (see the keycheck below) is refused.
//
// # Integrity at open
//
// Open refuses to start on a data file it cannot trust, with an error that
// names the file and says what to do (restore it from a backup, or move it
// aside with its key file to start a new, empty store on purpose); it
// never panics or faults on a damaged file, and never silently replaces a
// lost store with an empty one, which would lose every mailbox and free
// the retired ids for anyone to take. In order:
//
//   - A data file that is missing or empty while the key file exists (a
//     store was created here before), or empty while the key is given as
//     Options.IDKey, is refused. A key file missing beside a data file
//     created with a key is refused too.
//   - The page walk (pages.go) reads the file with ReadAt, before bbolt
//     maps it: a valid meta page, a file at least as long as the meta page
//     says (a truncated file would make bbolt fault on the first read past
//     its end), a freelist page of the right type, and every page of every
//     bucket inside the file, referenced once and of the right type.
//   - bbolt opens the file; a panic or memory fault inside it becomes an
//     error.
//   - bbolt's consistency check (Tx.Check: freelist, page references, key
//     order), with keys and values kept out of its messages, and a walk of
//     the store's buckets: all six mailbox buckets present, mailbox
//     records that parse, sub-buckets where the layout has them, and, if
//     the file has an outbox bucket (files made before the outbox have
//     none; Open then creates it empty), only destination sub-buckets
//     holding outbox records whose header parses (Open sums their sizes).
//     Damage inside one envelope record or index entry, or inside an
//     outbox item's ciphertext, is not looked for at open: the operation
//     that reads it fails alone with a "corrupt" error (see below); a
//     damaged outbox item fails Pending past it until Expire deletes it.
//
// Open reads the whole file once. On a 119 MiB store of 50,000 envelopes
// (cached in memory) the checks add about 0.25 s to Open, so about 2 s
// per GiB; from a cold disk, read time dominates.
//
// # Disk full
//
// A commit that fails with ENOSPC or EDQUOT fails its writes with
// store.ErrDiskFull (code store.CodeStoreFull, wrapping the cause) and sets
// Stats.DiskFull until a commit succeeds. bbolt rolls the transaction back,
// so the file stays consistent and reopens.
//
// # Buckets of store.db
//
// Every mailbox appears only as its keyed hash h = store.Keys.MailboxHash(id):
//
//	meta                 "format" -> 1B layout version (1); "keycheck" -> 32B store.Keys.Check
//	mailboxes            h -> mailbox record
//	envelopes / h        8B seq -> envelope record
//	refs / h             32B ref -> 8B seq (dedupe and ack)
//	expiry / 4B day      h || 8B seq -> empty (one bucket per expiry day)
//	retired              h -> 4B day the retired id becomes free again
//	outbox / 32B dest    8B seq -> outbox record (one bucket per destination relay)
//
// The outbox bucket's bbolt sequence (Bucket.NextSequence) is the last
// outbox sequence number issued, across all destinations, so numbers are
// never reused, even after a destination's bucket is deleted (Done and
// Expire delete it once empty, so Dests lists its keys). Destinations are
// relay hashes, which identify relays, not users, and are kept as they
// are: the relay must know where to forward after a restart.
//
// # Records
//
// Every integer is big-endian.
//
// Mailbox record:
//
//	1B  version (1)
//	32B owner Ed25519 public key
//	8B  next sequence number
//	4B  pending envelope count
//	8B  pending envelope bytes (plaintext)
//	2B  send capability length n (<= store.MaxSendCapSize)
//	nB  send capability verifier
//
// Envelope record:
//
//	1B  version (1)
//	4B  expiry day (Unix days)
//	32B ref
//	..  sealed envelope (store.Keys.Seal): 12B nonce || AES-256-GCM(envelope) || 16B tag
//
// Outbox record:
//
//	1B  version (1)
//	4B  expiry day (Unix days)
//	..  sealed item (store.Keys.SealOutbox): 12B nonce || AES-256-GCM(item) || 16B tag
//
// Outbox items are sealed under a key derived from the store key, a label of
// their own and the destination, so no outbox key equals an envelope key.
// Unlike an envelope, the store key and the data file together open them.
//
// There are no timestamps: an envelope's or outbox item's age shows only as
// its expiry day.
// Sweep deletes whole expiry-day buckets whose day has begun, so it never
// scans live envelopes. Expire (the outbox's) has no day index: it reads
// the 5-byte header of every outbox item, which MaxOutboxBytes bounds, and
// decrypts none.
//
// # Durability and group commit
//
// Every write (Put, Ack, mailbox changes, Sweep, and the outbox's Enqueue,
// Done and Expire) is handed to one committer goroutine. It takes the first
// write waiting, then every other one already waiting (up to
// Options.MaxBatch, waiting up to Options.CommitDelay for more), applies
// them in order in one bbolt read-write transaction, commits (bbolt fsyncs
// on commit) and only then returns each write's result: Put returns once its
// envelope is on disk, Enqueue once its item is. While one batch is being
// fsynced, the next one accumulates. A write that fails a check
// (store.ErrNoMailbox, a quota) fails alone; a storage error rolls the whole
// batch back and fails every write in it.
package boltstore
