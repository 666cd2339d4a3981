// Package boltstore is the durable [store.Store] and [store.Outbox]: an
// append-only log of records in segment files, an index of it in memory,
// and one group-committing goroutine that writes each batch with a single
// fdatasync. (The name stays from the bbolt releases; bbolt is now used
// only to migrate their data file.) It keeps every promise of package
// store; this comment says how, on disk.
//
// # Why a log (issue #13)
//
// Measured on the project's 2-core machine, one 16-envelope group commit
// per op (BenchmarkLayout, BenchmarkRaw): a flat, tuned bbolt bucket
// (FillPercent 1.0, NoFreelistSync, hashmap freelist, 64 MiB AllocSize)
// reached 3,261 env/s writing 42,911 bytes per 4 KiB envelope; envelopes
// in a log with their index in that bbolt 3,778 env/s and 19,652 B/env
// (three fdatasyncs and page rewrites per commit); the log with its index
// in memory 24,634 env/s and 4,472 B/env, the same as the raw write
// (24,446). Only the last can write each envelope about once.
//
// # Files
//
// dir/log/<16 hex digits>.seg are the segments ([LogDir]), dir/log/spare
// a compacted segment's file kept for reuse (see Recycled segments); dir/store.key
// is the store key ([KeyFile]) unless Options.IDKey or Options.KeyFile
// say otherwise; dir is locked (flock) while open. A new log is built as
// log.tmp and renamed. A log that is missing while the key file exists is
// refused; a key that does not match the segments is refused.
//
// # The log
//
// Every integer is big-endian. A segment is a header and then batch
// frames; the committer starts a new segment past 64 MiB.
//
//	segment header  8B "PSTRLOG2", 8B segment number, 32B store.Keys.Check,
//	                8B next outbox seq when the segment began, 4B CRC32C
//	batch frame     4B length n, 4B CRC32C (Castagnoli) of the n bytes
//	                continued from the segment's seed, n bytes of records
//	record          1B type, 4B body length, body (types in logrecords.go)
//
// Segments written before recycling have the magic "PSTRLOG1" and frame
// checksums of the n bytes alone. They are read as they are, and the
// newest of them takes new batches in its own layout until the next
// segment, which is a PSTRLOG2 one; nothing is migrated.
//
// Mailbox ids appear only as keyed hashes (store.Keys.MailboxHash),
// envelopes only sealed (store.Keys.Seal, under a key derived from the
// store key and the mailbox id), outbox items sealed with
// store.Keys.SealOutbox; there are no timestamps, only expiry days.
// Counters (pending counts, bytes) are not stored: replay derives them.
//
// # Open
//
// Open replays every segment into the index, checking every frame's
// checksum and every record's layout. It reads one batch frame at a time
// (so does compaction), so its memory is the index and the largest batch,
// not a segment. In the newest segment, a damaged
// frame that no good frame follows is the batch a crash interrupted (never
// acknowledged, but for the held acks that led it: see below) and is cut
// off; anywhere else, damage makes Open refuse
// with an error naming the segment and saying what to do. "Follows" means
// anywhere after it: the committer writes a batch only once the one before
// is synced, so a crash tears the last batch written alone, and a good
// frame under the segment's seed past a damaged one proves damage, even
// to the length that would lead to it (scanSegment tries every offset,
// record headers before checksums: 50-60 ms per 64 MiB, after a crash
// only; checksums of candidates read at most twice the file, then the
// frame counts as torn; a first-layout segment, whose frames a client can
// forge, counts only the frame right after). Close appends a
// small close record, so damage to the last batch of a cleanly closed log
// is not mistaken for a crash. A failed write's batch is cut back
// durably before the next is written. The key check in each segment's
// header comes before its frames: under another key every checksum fails,
// and Open says the key does not match rather than that the log is corrupt. Damage the checksum misses fails the
// operation that reads the envelope alone (AES-GCM authentication).
//
// # Durability and group commit
//
// Every write goes to one committer goroutine. It takes the writes waiting
// (up to Options.MaxBatch; while writes come back to back, after a batch
// of several it lingers for more, until none has come for an eighth of an
// fdatasync and at most a quarter of one, never more than 50 and 100 µs
// by its timers; a negative Options.CommitDelay turns that off, and a
// positive one waits that long instead: see "Lingering" in commit.go),
// applies them in order to the index while appending their records to one
// frame, writes the frame at the end of the newest segment and fdatasyncs
// it; only then does Put return and do readers see the new envelopes. An
// op that fails a check fails alone; a failed write or sync fails the
// batch, cuts the segment back and replays the log. ENOSPC and EDQUOT
// become store.ErrDiskFull and set Stats.DiskFull until a commit
// succeeds.
//
// A batch of Acks alone is applied to the index and Ack returns, but its
// records are held in memory: they lead the next batch's frame and share
// its fdatasync, or the committer writes and syncs them Options.AckSync
// (default 100 ms) after the first of them was held (once it is idle), or
// Close does (and reports a failure). So the log never has more than one
// frame not yet synced, at its end, and the rule above for a damaged last
// frame holds. A crash before then, or a failed write or sync of the batch
// they lead, undoes those acks: the envelopes are pending again and are
// delivered again (a live subscription pushes them once the client
// subscribes again), and the recipient drops what it has seen. With every
// envelope put and then acked, that halves the fdatasyncs per envelope at
// moderate rates (TestScale's traffic phase). At most 1 MiB of records is
// held; a batch of acks beyond that is written at once.
//
// # Expiry and compaction
//
// Sweep and Expire write one record each (the day), which replay repeats.
// The oldest segment is compacted when at most half of it is live, or
// when the log holds more dead bytes than live ones: its live records are
// copied through the committer to the end of the log, and once that is
// durable the segment file is deleted (or kept as the spare, below: for
// the log that is the same). Compaction reads the segment and copies
// only the records the index still points at; a segment the index holds
// nothing of (every envelope in it acked) is dropped without being read.
// A failed write's replay can make a skipped record live again (it undoes
// held acks), so a drop after one is refused, and the next commit starts
// compaction over.
// Compacting only the oldest segment
// means a tombstone never outlives the records it kills and is never
// copied; a crash mid-compaction leaves duplicates that replay merges.
// Each step is durable before the next: a chunk of copies is a group
// commit (ack after fdatasync), a new segment is a synced temporary file
// renamed (Open removes a temporary file left behind), the old segment is
// removed (or renamed to the spare) only once its copies are durable and
// the index points at them,
// and the directory is synced after the removal (and again before the
// next compaction) so that the tombstones of the next segment never go
// first. TestCompactionCrashSteps opens a copy of the directory taken
// after every one of these steps, with acks, deletes and puts between
// chunks; TestCompactionKill kills a process that compacts all the time.
//
// # Recycled segments
//
// A compacted segment's file is renamed to the spare (if there is none)
// instead of being deleted, and the next segment is written over it: the
// directory synced (so the spare's own rename is durable before its
// header changes, else a crash could bring the old segment back with the
// new header), its header rewritten and synced, the file renamed to the
// segment's name and the directory synced again. Overwriting blocks a file already has needs no
// block allocation and no size change, so the fdatasync of each batch
// commits no filesystem journal; measured on this project's ext4 machines
// (8 KiB write and fdatasync, 4,000 paced at 2,000/s): p50 0.14–0.16 ms
// against 0.22–0.24 appending, p99.9 0.58–0.84 against 0.70–1.75.
//
// The frames the file still holds from its last use must never replay:
// every frame's checksum starts from a seed that belongs to the segment
// number and is secret (store.Keys.FrameSeed, from the store key), so an
// old frame fails the check under the new number, and so does a frame a
// client planted in bytes the log keeps in the clear (an owner key, a
// capability verifier), whose seed it cannot know: a chance of 2^-32
// each. Replay stops at the first of them as at a batch cut short by a
// crash. Only the newest segment may have bytes past its last batch:
// before a new segment starts, the one before is cut to its end and
// synced (every time, so a sync that failed is tried again). Open cuts the
// newest one (as a torn batch), so a restarted relay appends to it.
// TestRecycledSegment opens copies taken at the spare's rename (the old
// frames right after the header) and after a few batches;
// TestPlantedFrameNeverReplays lines a close record up with frames
// planted in a capability verifier under guessable seeds;
// TestFirstLayoutSegments recycles a PSTRLOG1 file;
// TestCompactionCrashSteps runs every step with and without recycling.
// Builds before recycling refuse both the spare file and PSTRLOG2
// segments: a store opened by this one cannot go back without a backup.
// The log directory holds at most one spare, of up to a segment's size
// (64 MiB), which the store's byte totals do not count.
//
// # Mailbox keys
//
// Since 2026-12-07 a mailbox record (type 12) keeps the mailbox's owner
// key, send capability verifier and forward chain (the days on which the
// forwards into it end, store.MailboxKeys) sealed under the mailbox's envelope
// key (store.Keys.SealMailbox: derived from the store key and the id
// itself), as the index does; Mailbox opens them with the id a request
// names. Before, the record held both in the clear: the owner key is the
// same on every relay of a card, so two seized stores were linked by it,
// and a client could plant bytes of its choosing in the log (see
// Recycled segments). Such a record (an older release's, or one migrated
// from bbolt) is still read, and the mailbox's next Put writes it anew
// sealed; compaction, which has no id, carries it as it is. The old
// bytes stay in a segment until its compaction, and in the spare until
// the log writes over them (TestOwnerKeysSealed).
//
// # Forwards
//
// A rotation's batch retires the old id with a forward record (type 11):
// the old id's hash, its retirement day, the day its forward ends
// (store.Options.ForwardUntil: the TTL) and the new id with the old
// capability verifier, sealed under a key derived from the store key and
// the old id itself (store.Keys.SealForward): the store key and the data
// together do not open it; a Send naming the old id does. It adds no link
// beyond the rotation's own batch, which puts the old id's hash beside the
// new mailbox's record (and moves the envelopes with their refs), as it
// always did, until compaction parts them. The index keeps the sealed
// bytes of the forwards that have not ended (150-200 bytes each, for the
// TTL); a Sweep on or after the day ends them in the log, and compaction
// carries an ended one as a plain retirement (type 6), without the sealed
// bytes. Those stay in the forward's segment until its compaction (a log
// of one segment is never compacted) and in the spare until the log writes
// over them: someone with the data, store.key and the old id could then
// still read where it went. A log with a
// forward record cannot be opened by a release before 2026-12-07 (it
// refuses the unknown record type as damage).
//
// # The index in memory
//
// A pending envelope costs a 64-byte entry (seq, ref, expiry day, record
// size and place) in its mailbox's list, which is sorted by seq and
// trimmed after replay, and a 16-byte slot mapping the first 8 bytes of
// its ref to its seq (refs are keyed hashes; a ref whose prefix is taken
// goes to a map of whole refs). Which commit added an envelope is kept
// per mailbox (the tail of the list from newFrom on), not per entry.
// BenchmarkOpen50k reports the heap an open store holds per envelope.
//
// # Reads
//
// Fetch looks its envelopes up in the index under the index lock and
// reads and decrypts them after letting go of it, so that a slow read (a
// backlog no longer in the page cache) never holds up the committer,
// which needs the lock to apply every batch. A segment compacted away
// meanwhile keeps its file open until its last reader is done, and the
// spare is not written over while a reader still has it open (reads.go).
// BenchmarkPutBesideFetch measures Put latency beside a reader fetching a
// 64 × 64 KiB backlog from a cold cache: on this project's machine p99
// 7.7–9.8 ms against 15.4–22.7 ms with the reads under the lock.
//
// Each envelope is read, and decrypted in place, in a buffer of the pool
// in package relay/bufpool (which Put builds its records in too, and the
// relay reads Send frames into). The caller gives it back with Recycle
// ([store.Recycler]) once it has copied the envelope out, as the relay
// does once it has queued a delivery: BenchmarkFetch (16-envelope pages
// of 4 KiB from the page cache) 1.6–2.0 µs per envelope given back
// against 2.8–3.2 µs each read into a new buffer.
//
// # Migration
//
// A directory of the bbolt releases (dir/store.db) is checked as before
// (page walk, bbolt's check, the bucket walk: integrity.go, pages.go) and
// copied into a new log at Open; the old file is deleted only once the log
// is durable. See migrate.go.
package boltstore
