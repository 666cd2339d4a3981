package boltstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
)

// Checks at Open (see "Integrity at open" in the package comment).

// corrupt is the error for a data file that fails a check at Open.
func corrupt(path, detail string) error {
	return fmt.Errorf("store: data file %s is corrupt (%s); refusing to start on it: "+
		"restore it from a backup, or move it and its key file aside to start a new, empty store "+
		"(every mailbox and retired id in it is then lost)", path, detail)
}

// keyFilePath is the key file Open will read, or "" if the key is given
// in memory.
func keyFilePath(opts store.Options, dir string) string {
	switch {
	case opts.IDKey != nil:
		return ""
	case opts.KeyFile != "":
		return opts.KeyFile
	}
	return filepath.Join(dir, KeyFile)
}

// preflight checks the data file at path before bbolt opens it: a missing
// or empty data file is accepted only for a store that was never created,
// and an existing one must pass the page walk.
func preflight(path, keyPath string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("store: data file %s: %w", path, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("store: data file %s is not a regular file; move it aside", path)
	case fi.Size() > 0:
		return checkFile(path, fi.Size())
	case keyPath == "":
		// bbolt never leaves a data file empty once it has written it.
		return fmt.Errorf("store: data file %s is empty, so its store was lost; "+
			"restore it from a backup, or delete it to start a new, empty store on purpose", path)
	}
	state := "missing"
	if err == nil {
		state = "empty"
	}
	if keyPath == "" {
		return nil
	}
	if _, kerr := os.Stat(keyPath); errors.Is(kerr, fs.ErrNotExist) {
		return nil // a new store
	}
	return fmt.Errorf("store: data file %s is %s but key file %s exists, so a store was created here before; "+
		"refusing to start an empty store in its place: restore the data file from a backup, "+
		"or move the key file aside to start a new, empty store on purpose", path, state, keyPath)
}

// checkFile runs the page walk on the data file at path.
func checkFile(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store: data file %s: %w", path, err)
	}
	defer f.Close()
	if err := checkPages(f, size); err != nil {
		return corrupt(path, err.Error())
	}
	return nil
}

// openBolt opens the data file with bbolt, turning a panic or memory fault
// inside bbolt into an error. It closes the file bbolt opened, but bbolt
// may have mapped it, and a mapping keeps its lock until the process
// exits; the page walk keeps bbolt from reaching the damage it panics on.
func openBolt(path string) (db *bolt.DB, err error) {
	var f *os.File
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if f != nil {
				f.Close()
			}
			db, err = nil, corrupt(path, fmt.Sprintf("bbolt: %v", r))
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout: 2 * time.Second,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err = os.OpenFile(name, flag, perm)
			return f, err
		},
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("store: open %s: the file is locked by another process; stop the other relay using it", path)
	}
	if err != nil {
		return nil, corrupt(path, err.Error())
	}
	return db, nil
}

// checkDB runs bbolt's consistency check and the bucket walk on db,
// turning a panic or memory fault into an error.
func checkDB(db *bolt.DB, path string) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = corrupt(path, fmt.Sprintf("reading it failed: %v", r))
		}
	}()
	return db.View(func(tx *bolt.Tx) error {
		var first error
		n := 0
		for e := range tx.Check(bolt.WithKVStringer(redacted{})) {
			if first == nil {
				first = e
			}
			n++
		}
		if first != nil {
			return corrupt(path, fmt.Sprintf("bbolt check found %d problems, the first: %v", n, first))
		}
		if err := walkBuckets(tx); err != nil {
			return corrupt(path, err.Error())
		}
		return nil
	})
}

// redacted keeps keys and values (mailbox hashes, refs) out of bbolt's
// check messages.
type redacted struct{}

func (redacted) KeyToString([]byte) string   { return "(key)" }
func (redacted) ValueToString([]byte) string { return "(value)" }

// walkBuckets checks the store's own layout: the six top-level buckets
// (unless the file is new), mailbox and retired id records that parse, sub-buckets with
// names of the right size where the layout has them, and the outbox if
// the file has one (walkOutbox). Damage inside an
// envelope record or an index entry is left to the operation that reads
// it, which fails alone (see the package comment).
func walkBuckets(tx *bolt.Tx) error {
	if tx.Bucket(bucketMeta) == nil {
		if k, _ := tx.Cursor().First(); k != nil {
			return errors.New("the meta bucket is missing")
		}
		return nil // a new file
	}
	for _, name := range [][]byte{bucketMailboxes, bucketEnvelopes, bucketRefs, bucketExpiry, bucketRetired} {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("the %s bucket is missing", name)
		}
	}
	err := tx.Bucket(bucketMailboxes).ForEach(func(k, v []byte) error {
		if _, err := decodeMailbox(v); err != nil || len(k) != 32 {
			return errors.New("a mailbox record is damaged")
		}
		return nil
	})
	if err == nil {
		err = tx.Bucket(bucketRetired).ForEach(func(k, v []byte) error {
			if len(k) != 32 || len(v) != 4 { // a sub-bucket has a nil value
				return errors.New("a retired id record is damaged")
			}
			return nil
		})
	}
	for _, sub := range []struct {
		name []byte
		key  int
	}{{bucketEnvelopes, 32}, {bucketRefs, 32}, {bucketExpiry, 4}} {
		if err != nil {
			break
		}
		err = tx.Bucket(sub.name).ForEach(func(k, v []byte) error {
			if v != nil || len(k) != sub.key {
				return fmt.Errorf("the %s bucket holds an entry that is not a bucket", sub.name)
			}
			return nil
		})
	}
	if err != nil {
		return err
	}
	return walkOutbox(tx)
}
