package boltstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/relay/bufpool"
	"github.com/postern/postern/relay/store"
)

// Names inside the store directory.
const (
	LogDir     = "log"      // the log: segment files
	LegacyFile = "store.db" // the bbolt file of releases before the log; migrated at Open
	KeyFile    = "store.key"
)

// Store is the durable store.Store and store.Outbox on an append-only log.
// Open it with Open.
type Store struct {
	opts  store.Options
	keys  *store.Keys
	dir   string // the log directory
	lock  *os.File
	check [32]byte
	notes store.Notifier

	// rotating holds the one rotation the committer may have in hand
	// (see RotateMailbox).
	rotating chan struct{}

	mu      sync.RWMutex // guards ix; the committer writes, readers read
	ix      *index
	durable atomic.Uint64 // the last batch that is on disk
	batch   uint64        // committer only: the last batch number used
	broken  error         // committer only: a failed write could not be undone
	stuck   uint64        // committer only: a segment compaction could not delete
	// Index rebuilds after a failed write (restore): a compaction that
	// skipped records as dead gives up if one happened meanwhile, and a
	// later commit starts it again.
	restores atomic.Uint64
	spare    bool // committer only: the log directory holds a spare segment file
	// Committer only: the segment the spare was, while its file may still
	// be open for a reader (see reads.go); 0 if none.
	spareFrom uint64
	buf       []byte // committer only: the batch buffer, kept between commits

	// Committer only: the records of Ack batches not yet written (see
	// commit.go), and when the first of them was held.
	held      []byte
	heldOps   int // the Acks whose records held holds
	heldSince time.Time
	syncFail  error  // tests: fail every sync with this error
	applying  func() // tests: called by the committer before it applies a batch

	// Owned by the committer, for lingering (commit.go): the writes of
	// the last batch that wrote a frame and when it was durable, and the
	// running average time of an fdatasync.
	lastBatch int
	lastEnd   time.Time
	syncAvg   time.Duration
	closeErr  error // a failed write of the held acks at Close

	// Reads of segment files outside s.mu (reads.go).
	rmu     sync.Mutex
	reading map[uint64]int      // segment number → reads in progress
	orphans map[uint64]*os.File // dropped while read: the last reader closes it

	ops        chan *op
	quit       chan struct{}
	stopped    chan struct{}
	closeOnce  sync.Once
	closed     atomic.Bool
	compacting atomic.Bool
	bg         sync.WaitGroup

	// Owned by the committer; read by Stats.
	mailboxes atomic.Int64
	envelopes atomic.Int64
	bytes     atomic.Int64
	commits   atomic.Uint64
	syncs     atomic.Uint64
	diskFull  atomic.Bool
	outItems  atomic.Int64
	outBytes  atomic.Int64
	written   atomic.Int64 // bytes appended to the log

	// Tests: segments compaction read, and records it handed to the
	// committer to copy.
	compactScans, compactCarried atomic.Int64
}

var (
	_ store.Store    = (*Store)(nil)
	_ store.Outbox   = (*Store)(nil)
	_ store.Recycler = (*Store)(nil)
)

// Open opens (or creates) the store in dir: the log in dir/log and,
// unless opts.IDKey or opts.KeyFile say otherwise, the store key in
// dir/store.key. dir is created with mode 0700, files with 0600. A store
// directory of an older release (dir/store.db, bbolt) is checked and
// migrated to the log first. A missing key file is created only for a new
// store; a key that does not match the data is refused. A log that is
// missing while the key file exists, or that fails the checks at Open (see
// the package comment), is refused with an error naming it and saying what
// to do. Zero fields of opts take the defaults documented on
// store.Options.
func Open(dir string, opts store.Options) (*Store, error) {
	opts = opts.WithDefaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create directory %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s, err := open(dir, opts)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s.lock = lock
	go s.run()
	return s, nil
}

// open finds, migrates or creates the log, loads the key and replays the
// log.
func open(dir string, opts store.Options) (*Store, error) {
	logDir := filepath.Join(dir, LogDir)
	exists, err := prepareLog(dir, opts)
	if err != nil {
		return nil, err
	}
	key, keyName, err := loadKey(opts, dir, logDir, exists)
	if err != nil {
		return nil, err
	}
	k, err := store.NewKeys(key)
	if err != nil {
		return nil, fmt.Errorf("store: %s: %w", keyName, err)
	}
	s := &Store{opts: opts, keys: k, dir: logDir, check: k.Check(),
		ops: make(chan *op), quit: make(chan struct{}), stopped: make(chan struct{}), rotating: make(chan struct{}, 1)}
	if !exists {
		if err := createLog(logDir, s.check); err != nil {
			return nil, err
		}
	}
	ix, err := loadIndex(logDir, nil, k)
	if errors.Is(err, errWrongKey) {
		return nil, fmt.Errorf("store: key %s does not match data %s; use the key file created with it", keyName, logDir)
	}
	if err != nil {
		return nil, err
	}
	s.setIndex(ix)
	if fi, err := os.Stat(filepath.Join(logDir, spareName)); err == nil && fi.Mode().IsRegular() {
		s.spare = true
	}
	return s, nil
}

// prepareLog migrates a store of an older release, removes what an
// interrupted migration or creation left, and reports whether the log
// exists. A log that is missing while the key file exists is refused.
func prepareLog(dir string, opts store.Options) (bool, error) {
	logDir, legacy := filepath.Join(dir, LogDir), filepath.Join(dir, LegacyFile)
	interrupted, err := removeTemp(logDir + ".tmp")
	if err != nil {
		return false, err
	}
	if _, err := os.Stat(logDir); err == nil {
		// A migration that completed but had not yet removed the old file.
		if err := os.Remove(legacy); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("store: remove migrated %s: %w", legacy, err)
		}
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("store: log directory %s: %w", logDir, err)
	}
	if fi, err := os.Stat(legacy); err == nil && fi.Size() > 0 {
		return true, migrate(dir, opts)
	}
	if interrupted {
		return false, nil // the first start was cut short before the log existed
	}
	return false, refuseMissing(logDir, legacy, keyFilePath(opts, dir))
}

// refuseMissing returns an error if a store was created in the directory
// of logDir before, although its log is missing: an empty bbolt file, or a
// key file.
func refuseMissing(logDir, legacy, keyPath string) error {
	if fi, err := os.Stat(legacy); err == nil && fi.Size() == 0 {
		return preflight(legacy, keyPath) // the checks of the bbolt releases
	}
	if keyPath == "" {
		return nil
	}
	if _, err := os.Stat(keyPath); errors.Is(err, fs.ErrNotExist) {
		return nil // a new store
	}
	return fmt.Errorf("store: log directory %s is missing but key file %s exists, so a store was created here before; "+
		"refusing to start an empty store in its place: restore the log directory from a backup, "+
		"or move the key file aside to start a new, empty store on purpose", logDir, keyPath)
}

// removeTemp removes the temporary log directory of an interrupted
// creation or migration and reports whether there was one.
func removeTemp(tmp string) (bool, error) {
	if _, err := os.Stat(tmp); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err := os.RemoveAll(tmp); err != nil {
		return false, fmt.Errorf("store: remove %s left by an interrupted start: %w", tmp, err)
	}
	return true, nil
}

// createLog makes the log directory of a new store with its first
// segment: built as logDir.tmp and renamed, so it exists whole or not at
// all.
func createLog(logDir string, check [32]byte) error {
	tmp := logDir + ".tmp"
	err := os.Mkdir(tmp, 0o700)
	if err == nil {
		var f *os.File
		if f, err = createSegment(tmp, segHead{num: 1, check: check, outNext: 1}); err == nil {
			f.Close()
		}
	}
	if err == nil {
		err = os.Rename(tmp, logDir)
	}
	if err == nil {
		err = syncDir(filepath.Dir(logDir))
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("store: create log directory %s: %w", logDir, err)
	}
	return nil
}

// setIndex installs ix and the totals it holds.
func (s *Store) setIndex(ix *index) {
	s.ix = ix
	boxes, envs, bytes, items, obytes := ix.totals()
	s.mailboxes.Store(boxes)
	s.envelopes.Store(envs)
	s.bytes.Store(bytes)
	s.outItems.Store(items)
	s.outBytes.Store(obytes)
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

// Close stops the committer (writes already handed to it complete) and
// the compactor, wakes and closes every Notify channel and closes the log.
// A Fetch still reading when the log closes fails with store.ErrClosed
// (it reads outside the index lock, so Close does not wait for it).
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.quit)
		<-s.stopped
		if s.closeErr != nil {
			err = fmt.Errorf("store: acks not written at close (their envelopes will be delivered again): %w", s.closeErr)
		}
		s.bg.Wait()
		s.markClosed()
		s.notes.Close()
		s.mu.Lock()
		for _, seg := range s.ix.segs {
			if cerr := seg.f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("store: close %s: %w", seg.path, cerr)
			}
		}
		s.mu.Unlock()
		s.rmu.Lock()
		for num, f := range s.orphans { // a read still under way fails with ErrClosed
			f.Close()
			delete(s.orphans, num)
		}
		s.rmu.Unlock()
		s.lock.Close()
	})
	return err
}

func (s *Store) Stats() store.Stats {
	return store.Stats{
		Mailboxes: int(s.mailboxes.Load()),
		Envelopes: int(s.envelopes.Load()),
		Bytes:     s.bytes.Load(),
		Commits:   s.commits.Load(),
		Syncs:     s.syncs.Load(),
		DiskFull:  s.diskFull.Load(),
	}
}

// LogBytes returns how many bytes the store has appended to its log since
// Open: envelopes, index records, batch frames and compaction's copies.
func (s *Store) LogBytes() int64 { return s.written.Load() }

func (s *Store) Notify(id [store.IDSize]byte) (<-chan struct{}, func()) {
	return s.notes.Subscribe(s.keys.MailboxHash(id))
}

// isLogical reports whether err is one of package store's request errors,
// as opposed to a storage failure.
func isLogical(err error) bool {
	var e *store.Error
	return errors.As(err, &e)
}

// read runs fn under the read lock unless the store is closed.
func (s *Store) read(ctx context.Context, fn func(ix *index) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed.Load() {
		return store.ErrClosed
	}
	return fn(s.ix)
}

// readAt reads n bytes at l; the caller holds s.mu.
func (s *Store) readAt(l loc, n int) ([]byte, error) {
	seg := s.ix.segs[l.seg]
	if seg == nil {
		return nil, fmt.Errorf("store: read %s: %w", s.dir, errNoSegment)
	}
	b := make([]byte, n)
	if _, err := seg.f.ReadAt(b, l.off); err != nil {
		return nil, fmt.Errorf("store: read %s: %w", seg.path, err)
	}
	return b, nil
}

// damaged is the error for a record that fails authentication.
func (s *Store) damaged(l loc, err error) error {
	path := filepath.Join(s.dir, segName(l.seg))
	return fmt.Errorf("%w (log segment %s, offset %d)", err, path, l.off)
}

func (s *Store) Mailbox(ctx context.Context, id [store.IDSize]byte) (store.Mailbox, error) {
	hid := s.keys.MailboxHash(id)
	var mb store.Mailbox
	var keys []byte
	err := s.read(ctx, func(ix *index) error {
		b := ix.mailbox(hid)
		if b == nil {
			return store.ErrNoMailbox
		}
		mb = store.Mailbox{Owner: slices.Clone(b.owner), SendCap: slices.Clone(b.sendCap), Pending: len(b.envs), PendingBytes: b.bytes, NextSeq: b.nextSeq}
		keys = b.keys // never changed in place: a new record is a new slice
		return nil
	})
	if err != nil || keys == nil {
		return mb, err
	}
	k, err := s.keys.OpenMailbox(id, keys)
	if err != nil {
		return store.Mailbox{}, err
	}
	mb.Owner, mb.SendCap = k.Owner, k.SendCap
	return mb, nil
}

func (s *Store) Forwarded(ctx context.Context, id [store.IDSize]byte) ([store.IDSize]byte, []byte, error) {
	hid := s.keys.MailboxHash(id)
	var sealed []byte
	err := s.read(ctx, func(ix *index) error {
		f, ok := ix.forwards[hid]
		if !ok || f.until <= store.Today(s.opts.Now()) {
			return store.ErrNoMailbox
		}
		sealed = f.sealed // never changed in place: a new forward is a new slice
		return nil
	})
	if err != nil {
		return [store.IDSize]byte{}, nil, err
	}
	return s.keys.OpenForward(id, sealed)
}

func (s *Store) Holds(ctx context.Context, id [store.IDSize]byte, refs []store.Ref) ([]bool, error) {
	hid := s.keys.MailboxHash(id)
	held := make([]bool, len(refs))
	err := s.read(ctx, func(ix *index) error {
		b := ix.mailbox(hid)
		if b == nil {
			return store.ErrNoMailbox
		}
		for i, r := range refs {
			_, held[i] = b.refs.seq(b, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return held, nil
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
	var reads []segRead
	err := s.read(ctx, func(ix *index) error {
		b := ix.mailbox(hid)
		if b == nil {
			return store.ErrNoMailbox
		}
		durable := s.durable.Load()
		i, _ := slices.BinarySearchFunc(b.envs, after+1, bySeq)
		for ; i < len(b.envs) && len(items) < max && after != ^uint64(0); i++ {
			e := &b.envs[i]
			if !b.visible(e, durable) {
				continue
			}
			l, n := e.sealed()
			seg := ix.segs[l.seg]
			if seg == nil {
				return fmt.Errorf("store: read %s: %w", s.dir, errNoSegment)
			}
			items = append(items, store.Item{Ref: e.ref, Seq: e.seq})
			reads = append(reads, segRead{seg: seg, at: l, n: n, rec: e.at})
		}
		s.holdReads(reads)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return items, nil
	}
	// The reads and the decryption run outside s.mu, so that a slow disk
	// read (a cold backlog) does not hold up the committer (reads.go).
	defer s.releaseReads(reads)
	if fetchReading != nil {
		fetchReading()
	}
	// One key derivation for the call; each envelope is decrypted in the
	// buffer read for it.
	c := s.keys.Envelopes(id)
	for i, r := range reads {
		// The caller gives the buffer back (Recycle); on a failure, this
		// loop gives back what it has read.
		sealed := bufpool.Get(r.n)
		items[i].Envelope = sealed
		if _, err := r.seg.f.ReadAt(sealed, r.at.off); err != nil {
			s.Recycle(items[:i+1])
			if s.closed.Load() {
				return nil, store.ErrClosed
			}
			if err == io.EOF { // a short read: the log is shorter than its index says
				err = io.ErrUnexpectedEOF
			}
			if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
				return nil, fmt.Errorf("store: %w", err) // it names the file
			}
			return nil, fmt.Errorf("store: read %s: %w", r.seg.path, err)
		}
		env, err := c.OpenInPlace(items[i].Ref, sealed)
		if err != nil {
			s.Recycle(items[:i+1])
			return nil, s.damaged(r.rec, err)
		}
		// env is sealed's start; with the buffer's capacity, so that
		// Recycle knows its pool.
		items[i].Envelope = sealed[:len(env)]
	}
	return items, nil
}

// Recycle gives back the buffers FetchAfter read items' envelopes into
// (store.Recycler).
func (s *Store) Recycle(items []store.Item) {
	for i := range items {
		bufpool.Put(items[i].Envelope)
		items[i].Envelope = nil
	}
}

// markClosed appends a close record, so that damage to the last batch
// before it is told apart from a batch cut short by a crash (see
// scanSegment). It is not synced: a close record lost is a crash.
func (s *Store) markClosed() {
	if s.broken != nil {
		return
	}
	seg := s.ix.active()
	if _, err := seg.f.WriteAt(frame(seg.seed, appendRecord(nil, recClose)), seg.size); err != nil {
		seg.f.Truncate(seg.size)
	}
}
