package boltstore

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
)

// File names inside the store directory.
const (
	DataFile = "store.db"
	KeyFile  = "store.key"
)

// dataFormat is the layout version kept in the meta bucket.
const dataFormat = 1

// Bucket and meta key names (see the package comment).
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

// Store is the durable store.Store on one bbolt file. Open it with Open.
type Store struct {
	opts  store.Options
	keys  *store.Keys
	db    *bolt.DB
	path  string
	notes store.Notifier

	ops       chan *op
	quit      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
	closed    atomic.Bool

	// Owned by the committer; read by Stats.
	mailboxes atomic.Int64
	envelopes atomic.Int64
	bytes     atomic.Int64
	commits   atomic.Uint64
	diskFull  atomic.Bool
	outItems  atomic.Int64
	outBytes  atomic.Int64
}

var (
	_ store.Store  = (*Store)(nil)
	_ store.Outbox = (*Store)(nil)
)

// Open opens (or creates) the store in dir: dir/store.db for data and,
// unless opts.IDKey or opts.KeyFile say otherwise, dir/store.key for the
// store key. dir is created with mode 0700 and both files with 0600. A
// missing key file is created only when the data file has never been used
// with a key; a key that does not match the data file is refused. A data
// file that is missing or empty while the key file exists, or that fails
// the integrity checks (see the package comment), is refused with an
// error naming it and saying what to do; Open never panics on a damaged
// file. Zero fields of opts take the defaults documented on store.Options.
func Open(dir string, opts store.Options) (*Store, error) {
	opts = opts.WithDefaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, DataFile)
	if err := preflight(path, keyFilePath(opts, dir)); err != nil {
		return nil, err
	}
	db, err := openBolt(path)
	if err != nil {
		return nil, err
	}
	if err := checkDB(db, path); err != nil {
		db.Close()
		return nil, err
	}
	s, err := open(db, path, dir, opts)
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// open checks the data file's format and key, creates what is missing and
// starts the committer.
func open(db *bolt.DB, path, dir string, opts store.Options) (*Store, error) {
	check, format, err := readMeta(db)
	if err != nil {
		return nil, fmt.Errorf("store: read %s: %w", path, err)
	}
	if len(format) > 0 && (len(format) != 1 || format[0] != dataFormat) {
		return nil, fmt.Errorf("store: %s has data format %v but this relay understands %d; use a matching relay version", path, format, dataFormat)
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
	s := &Store{
		opts: opts, keys: k, db: db, path: path,
		ops: make(chan *op), quit: make(chan struct{}), stopped: make(chan struct{}),
	}
	if err := db.Update(s.initialise); err != nil {
		return nil, fmt.Errorf("store: initialise %s: %w", path, err)
	}
	go s.run()
	return s, nil
}

// readMeta returns the key check and data format kept in the meta bucket,
// both empty for a new file.
func readMeta(db *bolt.DB) (check, format []byte, err error) {
	err = db.View(func(tx *bolt.Tx) error {
		if m := tx.Bucket(bucketMeta); m != nil {
			check = append([]byte(nil), m.Get(metaKeyCheck)...)
			format = append([]byte(nil), m.Get(metaFormat)...)
		}
		return nil
	})
	return check, format, err
}

// initialise creates the buckets and meta entries that are missing (the
// outbox bucket is missing in files made before it existed) and loads the
// store totals from the mailbox and outbox records.
func (s *Store) initialise(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketMeta, bucketMailboxes, bucketEnvelopes, bucketRefs, bucketExpiry, bucketRetired, bucketOutbox} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	m := tx.Bucket(bucketMeta)
	if err := m.Put(metaFormat, []byte{dataFormat}); err != nil {
		return err
	}
	check := s.keys.Check()
	if err := m.Put(metaKeyCheck, check[:]); err != nil {
		return err
	}
	var boxes, envs, bytes int64
	err := tx.Bucket(bucketMailboxes).ForEach(func(_, v []byte) error {
		r, err := decodeMailbox(v)
		if err != nil {
			return err
		}
		boxes++
		envs += int64(r.count)
		bytes += int64(r.bytes)
		return nil
	})
	s.mailboxes.Store(boxes)
	s.envelopes.Store(envs)
	s.bytes.Store(bytes)
	items, obytes, oerr := outboxTotals(tx)
	s.outItems.Store(items)
	s.outBytes.Store(obytes)
	return errors.Join(err, oerr)
}

// loadKey returns the store key and a name for it in error messages.
func loadKey(opts store.Options, dir, dataPath string, dataHasKey bool) ([]byte, string, error) {
	if opts.IDKey != nil {
		if len(opts.IDKey) != store.KeySize {
			return nil, "", fmt.Errorf("store: Options.IDKey must be %d bytes, got %d", store.KeySize, len(opts.IDKey))
		}
		return append([]byte(nil), opts.IDKey...), "Options.IDKey", nil
	}
	path := opts.KeyFile
	if path == "" {
		path = filepath.Join(dir, KeyFile)
	}
	key, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := checkKeyFile(path, key); err != nil {
			return nil, "", err
		}
		return key, "file " + path, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, "", fmt.Errorf("store: read key file %s: %w", path, err)
	case dataHasKey:
		return nil, "", fmt.Errorf("store: key file %s is missing but data file %s was created with a key; "+
			"restore the key file from a backup or point Options.KeyFile at it, "+
			"or move the data file aside to start a new, empty store on purpose", path, dataPath)
	}
	key, err = createKeyFile(path)
	if err != nil {
		return nil, "", err
	}
	return key, "file " + path, nil
}

// checkKeyFile checks the mode and size of the key file at path, read as
// key.
func checkKeyFile(path string, key []byte) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("store: key file %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("store: key file %s is accessible by other users (mode %04o); run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	if len(key) != store.KeySize {
		return fmt.Errorf("store: key file %s holds %d bytes, want %d; it is not a store key", path, len(key), store.KeySize)
	}
	return nil
}

// createKeyFile writes a new random store key to path (which must not
// exist) with mode 0600, durably.
func createKeyFile(path string) ([]byte, error) {
	key := make([]byte, store.KeySize)
	rand.Read(key)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: create key file %s: %w", path, err)
	}
	_, err = f.Write(key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("store: write key file %s: %w", path, err)
	}
	return key, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close stops the committer (writes already handed to it complete), wakes
// and closes every Notify channel and closes the data file.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.quit)
		<-s.stopped
		s.notes.Close()
		if cerr := s.db.Close(); cerr != nil {
			err = fmt.Errorf("store: close %s: %w", s.path, cerr)
		}
	})
	return err
}

func (s *Store) Stats() store.Stats {
	return store.Stats{
		Mailboxes: int(s.mailboxes.Load()),
		Envelopes: int(s.envelopes.Load()),
		Bytes:     s.bytes.Load(),
		Commits:   s.commits.Load(),
		DiskFull:  s.diskFull.Load(),
	}
}

func (s *Store) Notify(id [store.IDSize]byte) (<-chan struct{}, func()) {
	return s.notes.Subscribe(s.keys.MailboxHash(id))
}

// isLogical reports whether err is one of package store's request errors,
// as opposed to a storage failure.
func isLogical(err error) bool {
	var e *store.Error
	return errors.As(err, &e)
}

// view runs a read transaction unless the store is closed.
func (s *Store) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return store.ErrClosed
	}
	err := s.db.View(fn)
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return store.ErrClosed
	}
	if err != nil && !isLogical(err) {
		return fmt.Errorf("store: read %s: %w", s.path, err)
	}
	return err
}

func (s *Store) Mailbox(ctx context.Context, id [store.IDSize]byte) (store.Mailbox, error) {
	hid := s.keys.MailboxHash(id)
	var mb store.Mailbox
	err := s.view(ctx, func(tx *bolt.Tx) error {
		r, err := getMailbox(tx, hid)
		if err != nil {
			return err
		}
		mb = store.Mailbox{Owner: r.owner, SendCap: r.sendCap, Pending: int(r.count), PendingBytes: int64(r.bytes)}
		return nil
	})
	return mb, err
}

func (s *Store) Fetch(ctx context.Context, id [store.IDSize]byte, max int) ([]store.Item, error) {
	return s.FetchAfter(ctx, id, 0, max)
}

func (s *Store) FetchAfter(ctx context.Context, id [store.IDSize]byte, after uint64, max int) ([]store.Item, error) {
	if max <= 0 {
		max = store.DefaultFetchMax
	}
	hid := s.keys.MailboxHash(id)
	var items []store.Item
	err := s.view(ctx, func(tx *bolt.Tx) error {
		if _, err := getMailbox(tx, hid); err != nil {
			return err
		}
		eb := tx.Bucket(bucketEnvelopes).Bucket(hid[:])
		if eb == nil {
			return nil
		}
		if after == ^uint64(0) {
			return nil
		}
		c := eb.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(items) < max; k, v = c.Next() {
			r, err := decodeEnvelope(v)
			if err != nil {
				return err
			}
			env, err := s.keys.Open(id, r.ref, r.sealed)
			if err != nil {
				return err
			}
			items = append(items, store.Item{Ref: r.ref, Seq: binary.BigEndian.Uint64(k), Envelope: env})
		}
		return nil
	})
	return items, err
}

func getMailbox(tx *bolt.Tx, hid [32]byte) (mailboxRecord, error) {
	v := tx.Bucket(bucketMailboxes).Get(hid[:])
	if v == nil {
		return mailboxRecord{}, store.ErrNoMailbox
	}
	return decodeMailbox(v)
}
