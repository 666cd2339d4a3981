// Package boltstore is the durable [store.Store]: one bbolt file, with every
// write going through a group-committing goroutine. It keeps every promise
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
// There are no timestamps: an envelope's age shows only as its expiry day.
// Sweep deletes whole expiry-day buckets whose day has begun, so it never
// scans live envelopes.
//
// # Durability and group commit
//
// Every write (Put, Ack, mailbox changes, Sweep) is handed to one committer
// goroutine. It takes the first write waiting, then every other one already
// waiting (up to Options.MaxBatch, waiting up to Options.CommitDelay for
// more), applies them in order in one bbolt read-write transaction, commits
// (bbolt fsyncs on commit) and only then returns each write's result: Put
// returns once its envelope is on disk. While one batch is being fsynced,
// the next one accumulates. A write that fails a check (store.ErrNoMailbox,
// a quota) fails alone; a storage error rolls the whole batch back and fails
// every write in it.
package boltstore
