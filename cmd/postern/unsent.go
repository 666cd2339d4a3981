package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/route"
)

// Unsent messages. A send that gives up (--timeout, an error, an
// interrupt) may have left the message, or part of it, on the relay: the
// relay's answers can be lost while the envelopes arrived. The user is
// told to send it again, and a new send would seal it under a new message
// id, which the recipient, getting both, would show twice. So a send that
// gives up records its message id in POSTERN_HOME/unsent, under a hash of
// the recipient's mailbox, the sender's key (none if anonymous) and the
// message, and a later send of the same bytes to the same mailbox from
// the same sender, within unsentTTL, seals them under that id: the
// recipient's inbox takes the message once (envelope.Options.MessageID).
// A send that succeeds removes its record.
//
// The file (mode 0600, written whole under unsent.lock) is a JSON object
//
//	"<32 hex digits: the hash>": {"id": "<32 hex digits>", "day": <Unix day>}
//
// It holds no address, mailbox id or message; whoever holds it can confirm
// a guess of (recipient, sender, whole message) for a message a send gave
// up on, for at most unsentTTL.

// unsentTTL is how long a message given up on keeps its id for a send
// again: a relay keeps an envelope a week.
const unsentTTL = 7 * 24 * time.Hour

type unsentRecord struct {
	ID  string `json:"id"`
	Day int64  `json:"day"`
}

// unsentStore is the record of one message in POSTERN_HOME/unsent.
type unsentStore struct {
	path, key string
}

// openUnsent returns the record of msg to card from from (nil: anonymous),
// or nil without a state directory.
func openUnsent(e *env, card *envelope.Card, from *envelope.Identity, msg []byte) *unsentStore {
	if homeDir(e) == fallbackHome {
		return nil
	}
	h := sha256.New()
	h.Write([]byte("postern unsent v1\x00"))
	h.Write(card.Mailbox[:])
	if from != nil {
		h.Write([]byte{1})
		h.Write(from.AuthKey())
	} else {
		h.Write([]byte{0})
	}
	sum := sha256.Sum256(msg)
	h.Write(sum[:])
	return &unsentStore{path: filepath.Join(homeDir(e), "unsent"), key: hex.EncodeToString(h.Sum(nil)[:16])}
}

// lookup returns the message id a send that gave up on this message
// recorded, if one did within unsentTTL.
func (u *unsentStore) lookup() (id [envelope.IDSize]byte, ok bool) {
	if u == nil {
		return id, false
	}
	all, _ := u.read()
	r, found := all[u.key]
	if !found || expired(r) {
		return id, false
	}
	b, err := hex.DecodeString(r.ID)
	if err != nil || len(b) != envelope.IDSize {
		return id, false
	}
	return [envelope.IDSize]byte(b), true
}

// record keeps id as the message's, for a send again.
func (u *unsentStore) record(id [envelope.IDSize]byte) error {
	return u.update(func(all map[string]unsentRecord) {
		all[u.key] = unsentRecord{ID: hex.EncodeToString(id[:]), Day: today()}
	})
}

// forget drops the message's record: it was sent.
func (u *unsentStore) forget() error {
	return u.update(func(all map[string]unsentRecord) { delete(all, u.key) })
}

func expired(r unsentRecord) bool { return today()-r.Day > int64(unsentTTL/(24*time.Hour)) }

// read returns the records in the file; a damaged file reads as empty (it
// only saves a recipient a copy) and is written over.
func (u *unsentStore) read() (map[string]unsentRecord, bool) {
	all := map[string]unsentRecord{}
	data, err := os.ReadFile(u.path)
	if err != nil {
		return all, errors.Is(err, fs.ErrNotExist)
	}
	if json.Unmarshal(data, &all) != nil {
		return map[string]unsentRecord{}, false
	}
	return all, true
}

// update applies change to the records under the file's lock, drops
// expired ones, and writes the file (removing it when empty).
func (u *unsentStore) update(change func(map[string]unsentRecord)) error {
	if u == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(u.path), 0o700); err != nil {
		return err
	}
	defer route.LockFile(u.path + ".lock")()
	all, _ := u.read()
	change(all)
	for k, r := range all {
		if expired(r) {
			delete(all, k)
		}
	}
	if len(all) == 0 {
		if err := os.Remove(u.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	out, _ := json.MarshalIndent(all, "", "  ")
	return writeFileAtomic(u.path, append(out, '\n'), 0o600)
}
