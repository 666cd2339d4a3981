package transport

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// SessionCache keeps TLS sessions (resumption tickets and their secrets)
// between connections, so that a client resumes as a browser does instead
// of making every connection a full handshake. Keys are opaque strings
// that a transport derives from the relay's endpoint (a hash: they never
// hold an address); values are the transport's own encoding. A browser
// uses a TLS 1.3 ticket once, so transports Take a session (remove it)
// and Put the new one the server sends.
//
// Implementations must be safe for concurrent use. A session is a secret:
// whoever holds it can resume, so keep it out of logs and shared files.
type SessionCache interface {
	// Take returns the session stored under key and removes it, or nil.
	Take(key string) []byte
	// Put stores session under key, replacing any; nil removes it.
	Put(key string, session []byte)
}

// DefaultSessions is how many sessions NewSessionMemory keeps when asked
// for zero.
const DefaultSessions = 256

// SessionMemory is a SessionCache in memory that keeps the most recently
// stored sessions.
type SessionMemory struct {
	mu    sync.Mutex
	max   int
	order *list.List // of string keys, most recent at the front
	items map[string]sessionItem
}

type sessionItem struct {
	value []byte
	elem  *list.Element
}

// NewSessionMemory returns an empty cache of at most max sessions
// (DefaultSessions if max <= 0).
func NewSessionMemory(max int) *SessionMemory {
	if max <= 0 {
		max = DefaultSessions
	}
	return &SessionMemory{max: max, order: list.New(), items: make(map[string]sessionItem)}
}

// Take implements SessionCache.
func (m *SessionMemory) Take(key string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	it, ok := m.items[key]
	if !ok {
		return nil
	}
	m.order.Remove(it.elem)
	delete(m.items, key)
	return it.value
}

// Put implements SessionCache.
func (m *SessionMemory) Put(key string, session []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if it, ok := m.items[key]; ok {
		m.order.Remove(it.elem)
		delete(m.items, key)
	}
	if session == nil {
		return
	}
	m.items[key] = sessionItem{value: append([]byte(nil), session...), elem: m.order.PushFront(key)}
	for m.order.Len() > m.max {
		oldest := m.order.Back()
		m.order.Remove(oldest)
		delete(m.items, oldest.Value.(string))
	}
}

// SessionDir is a SessionCache in a directory, so that consecutive runs
// of a program resume: one file per key, named by the SHA-256 of the key,
// mode 0600, in a directory of mode 0700. A file that cannot be read or
// written counts as no session (the connection makes a full handshake).
type SessionDir struct {
	dir string
	mu  sync.Mutex // a Take and a Put of one key do not interleave
}

// OpenSessionDir returns the cache kept in dir, creating dir (0700) if
// needed.
func OpenSessionDir(dir string) (*SessionDir, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("TLS session cache %s: %w; check the state directory's permissions", dir, err)
	}
	return &SessionDir{dir: dir}, nil
}

func (d *SessionDir) path(key string) string {
	sum := sha256.Sum256([]byte(key))
	return filepath.Join(d.dir, hex.EncodeToString(sum[:16]))
}

// Take implements SessionCache.
func (d *SessionDir) Take(key string) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.path(key)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	os.Remove(p)
	return b
}

// Put implements SessionCache.
func (d *SessionDir) Put(key string, session []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.path(key)
	if session == nil {
		os.Remove(p)
		return
	}
	tmp, err := os.CreateTemp(d.dir, ".tmp-*")
	if err != nil {
		return
	}
	_, err = tmp.Write(session)
	err = errors.Join(err, tmp.Chmod(0o600), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
}
