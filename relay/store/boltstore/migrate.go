package boltstore

import (
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
)

// Migration of a store directory of an older release, whose data was one
// bbolt file (LegacyFile): Open checks it as that release did (page walk,
// bbolt's consistency check, the bucket walk; integrity.go, pages.go),
// copies every mailbox, envelope (still sealed: the at-rest encryption is
// unchanged), retired id and outbox item into a new log built as log.tmp,
// syncs it, renames it to log and only then deletes the old file. A crash
// at any point leaves either the old file (migrated again at the next
// Open) or the complete log.

// legacyFormat is the layout version the bbolt file kept in its meta
// bucket.
const legacyFormat = 1

// Bucket and meta key names of the bbolt file.
var (
	bucketMeta      = []byte("meta")
	bucketMailboxes = []byte("mailboxes")
	bucketEnvelopes = []byte("envelopes")
	bucketRefs      = []byte("refs")
	bucketExpiry    = []byte("expiry")
	bucketRetired   = []byte("retired")
	bucketOutbox    = []byte("outbox")
	metaFormat      = []byte("format")
	metaKeyCheck    = []byte("keycheck")
)

// migrate turns dir/store.db into dir/log.
func migrate(dir string, opts store.Options) error {
	path := filepath.Join(dir, LegacyFile)
	if err := preflight(path, keyFilePath(opts, dir)); err != nil {
		return err
	}
	db, err := openBolt(path)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := checkDB(db, path); err != nil {
		return err
	}
	k, err := legacyKey(db, dir, path, opts)
	if err != nil {
		return err
	}
	logDir := filepath.Join(dir, LogDir)
	if err := os.Mkdir(logDir+".tmp", 0o700); err != nil {
		return fmt.Errorf("store: migrate %s: %w", path, err)
	}
	if err := copyBolt(db, path, logDir+".tmp", k); err != nil {
		os.RemoveAll(logDir + ".tmp")
		return fmt.Errorf("store: migrate %s to %s: %w", path, logDir, err)
	}
	if err := os.Rename(logDir+".tmp", logDir); err != nil {
		return fmt.Errorf("store: migrate %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("store: migrate %s: %w", path, err)
	}
	db.Close()
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("store: remove migrated %s: %w", path, err)
	}
	return syncDir(dir)
}

// legacyKey checks the bbolt file's format and that the store key matches
// it, and returns the keys.
func legacyKey(db *bolt.DB, dir, path string, opts store.Options) (*store.Keys, error) {
	var check, format []byte
	db.View(func(tx *bolt.Tx) error {
		if m := tx.Bucket(bucketMeta); m != nil {
			check = append([]byte(nil), m.Get(metaKeyCheck)...)
			format = append([]byte(nil), m.Get(metaFormat)...)
		}
		return nil
	})
	if len(format) > 0 && (len(format) != 1 || format[0] != legacyFormat) {
		return nil, fmt.Errorf("store: %s has data format %v but this relay understands %d; use a matching relay version", path, format, legacyFormat)
	}
	key, keyName, err := loadKey(opts, dir, path, len(check) > 0)
	if err != nil {
		return nil, err
	}
	k, err := store.NewKeys(key)
	if err != nil {
		return nil, fmt.Errorf("store: %s: %w", keyName, err)
	}
	want := k.Check()
	if len(check) > 0 && !hmac.Equal(check, want[:]) {
		return nil, fmt.Errorf("store: key %s does not match data file %s; use the key file created with it", keyName, path)
	}
	return k, nil
}

// logWriter appends frames of records to a segment being built.
type logWriter struct {
	f    *os.File
	seed uint32
	buf  []byte
}

func (lw *logWriter) add(rec []byte) error {
	lw.buf = append(lw.buf, rec...)
	if len(lw.buf) < 1<<20 {
		return nil
	}
	return lw.flush()
}

func (lw *logWriter) flush() error {
	if len(lw.buf) == 0 {
		return nil
	}
	_, err := lw.f.Write(frame(lw.seed, lw.buf))
	lw.buf = lw.buf[:0]
	return err
}

// copyBolt runs copyLegacy on db (the file at path) into dir, turning a
// panic or memory fault on damage the checks missed into an error, as
// checkDB does.
func copyBolt(db *bolt.DB, path, dir string, k *store.Keys) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = corrupt(path, fmt.Sprintf("reading it failed: %v", r))
		}
	}()
	return db.View(func(tx *bolt.Tx) error { return copyLegacy(tx, dir, k) })
}

// copyLegacy writes the content of the bbolt file into the first segment
// of a new log in dir.
func copyLegacy(tx *bolt.Tx, dir string, k *store.Keys) error {
	outNext := uint64(1)
	if ob := tx.Bucket(bucketOutbox); ob != nil {
		outNext = ob.Sequence() + 1
	}
	h := segHead{num: 1, check: k.Check(), outNext: outNext}
	f, err := createSegment(dir, h)
	if err != nil {
		return err
	}
	defer f.Close()
	lw := &logWriter{f: f, seed: h.seed(k)}
	if tx.Bucket(bucketMeta) != nil {
		if err := copyMailboxes(tx, lw); err != nil {
			return err
		}
		if err := copyOutbox(tx, lw); err != nil {
			return err
		}
	}
	if err := lw.flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return syncDir(dir)
}

// copyMailboxes copies mailbox records, their envelopes and retired ids.
func copyMailboxes(tx *bolt.Tx, lw *logWriter) error {
	envs := tx.Bucket(bucketEnvelopes)
	err := tx.Bucket(bucketMailboxes).ForEach(func(k, v []byte) error {
		box, err := decodeMailbox(v)
		if err != nil || len(k) != 32 {
			return errRecord
		}
		hid := [32]byte(k)
		if err := lw.add(appendMailbox(nil, hid, box.owner, box.nextSeq, box.sendCap)); err != nil {
			return err
		}
		eb := envs.Bucket(k)
		if eb == nil {
			return nil
		}
		return eb.ForEach(func(sk, v []byte) error {
			r, err := decodeEnvelope(v)
			if err != nil || len(sk) != 8 {
				return errRecord
			}
			return lw.add(appendRecord(nil, recEnvelope, envelopeHead(hid, binary.BigEndian.Uint64(sk), r.day, r.ref), r.sealed))
		})
	})
	if err != nil {
		return err
	}
	return tx.Bucket(bucketRetired).ForEach(func(k, v []byte) error {
		if len(k) != 32 || len(v) != 4 {
			return errRecord
		}
		return lw.add(appendRetired(nil, [32]byte(k), binary.BigEndian.Uint32(v)))
	})
}

// copyOutbox copies the outbox items, if the file has an outbox.
func copyOutbox(tx *bolt.Tx, lw *logWriter) error {
	return walkOutboxKeys(tx, func(dest [32]byte, seq uint64, r outboxRecord) error {
		return lw.add(appendOutbox(nil, dest, seq, r.day, r.sealed))
	})
}

// walkOutboxKeys calls fn with every outbox item of the bbolt file.
func walkOutboxKeys(tx *bolt.Tx, fn func(dest [32]byte, seq uint64, r outboxRecord) error) error {
	ob := tx.Bucket(bucketOutbox)
	if ob == nil {
		return nil
	}
	return ob.ForEachBucket(func(d []byte) error {
		return ob.Bucket(d).ForEach(func(k, v []byte) error {
			r, err := decodeOutbox(v)
			if err != nil || len(k) != 8 {
				return errRecord
			}
			return fn([32]byte(d), binary.BigEndian.Uint64(k), r)
		})
	})
}

// walkOutbox checks the bbolt file's outbox, if it has one (files made
// before it existed do not): only destination buckets with 32-byte
// names, holding 8-byte keys and records that parse.
func walkOutbox(tx *bolt.Tx) error {
	ob := tx.Bucket(bucketOutbox)
	if ob == nil {
		return nil
	}
	return ob.ForEach(func(k, v []byte) error {
		if v != nil || len(k) != 32 {
			return errors.New("the outbox bucket holds an entry that is not a destination bucket")
		}
		return ob.Bucket(k).ForEach(func(k, v []byte) error {
			if _, err := decodeOutbox(v); err != nil || len(k) != 8 {
				return errors.New("an outbox record is damaged")
			}
			return nil
		})
	})
}
