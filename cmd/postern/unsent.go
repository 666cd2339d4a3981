package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport/route"
)

// Unsent messages. A send that gives up (--timeout, an error, an
// interrupt, a crash) may have left the message, or part of it, on the
// relay: the relay's answers can be lost while the envelopes arrived. A
// new send of it would seal it under a new message id, and the recipient,
// getting both, would show both. So a send (with a state directory; card
// updates aside) records its message's id in POSTERN_HOME/unsent before
// its first envelope goes out, and puts back what was there before once
// the relay has the whole message or if nothing went out (sendRecord
// finish); `send --again` with the
// same bytes to the same contact, within unsentTTL, seals them under the
// recorded id, and the recipient's inbox takes the message once
// (envelope.Options.MessageID). Only --again does: the same bytes sent
// later as a new message ("ok") must be shown again.
//
// The file (mode 0600, written whole under unsent.lock) is a JSON object
//
//	"<32 hex digits>": {"id": "<32 hex digits>", "day": <Unix day>}
//
// keyed by a hash of the recipient's mailbox, the sender's key (none if
// anonymous) and the message, and holding the message id masked by
// another hash of the same: neither an address, a mailbox id, a message
// nor a message id can be read from it. Whoever holds it and guesses a
// message and its recipient can confirm the guess, and recover the id
// (then match it against the recipient's replay file), for a message a
// send gave up on, for at most unsentTTL.

// unsentTTL is how long a message given up on keeps its id for a send
// again: a relay keeps an envelope a week.
const unsentTTL = 7 * 24 * time.Hour

type unsentRecord struct {
	ID  string `json:"id"`
	Day int64  `json:"day"`
}

// unsentStore is the record of one message in POSTERN_HOME/unsent.
type unsentStore struct {
	path string
	key  string                // the record's key in the file
	mask [envelope.IDSize]byte // what the message id is stored XORed with
}

// openUnsent returns the record of msg to card from from (nil: anonymous),
// or nil without a state directory.
func openUnsent(e *env, card *envelope.Card, from *envelope.Identity, msg []byte) *unsentStore {
	if homeDir(e) == fallbackHome {
		return nil
	}
	h := sha256.New()
	h.Write(card.Mailbox[:])
	if from != nil {
		h.Write([]byte{1})
		h.Write(from.AuthKey())
	} else {
		h.Write([]byte{0})
	}
	sum := sha256.Sum256(msg)
	h.Write(sum[:])
	base := h.Sum(nil)
	key := sha256.Sum256(append([]byte("postern unsent key v1\x00"), base...))
	mask := sha256.Sum256(append([]byte("postern unsent mask v1\x00"), base...))
	return &unsentStore{path: filepath.Join(homeDir(e), "unsent"), key: hex.EncodeToString(key[:16]), mask: [envelope.IDSize]byte(mask[:envelope.IDSize])}
}

// lookup returns the message id recorded for the message, if one was
// within unsentTTL.
func (u *unsentStore) lookup() (id [envelope.IDSize]byte, ok bool) {
	if u == nil {
		return id, false
	}
	r, found := u.read()[u.key]
	if !found || expired(r) {
		return id, false
	}
	b, err := hex.DecodeString(r.ID)
	if err != nil || len(b) != envelope.IDSize {
		return id, false
	}
	return u.masked([envelope.IDSize]byte(b)), true
}

// masked is id XOR the record's mask (which undoes itself).
func (u *unsentStore) masked(id [envelope.IDSize]byte) [envelope.IDSize]byte {
	for i := range id {
		id[i] ^= u.mask[i]
	}
	return id
}

// record keeps id as the message's, for a send again.
func (u *unsentStore) record(id [envelope.IDSize]byte) error {
	if u == nil {
		return nil
	}
	m := u.masked(id)
	return u.update(func(all map[string]unsentRecord) {
		all[u.key] = unsentRecord{ID: hex.EncodeToString(m[:]), Day: today()}
	})
}

// forget drops the message's record: it was sent.
func (u *unsentStore) forget() error {
	return u.update(func(all map[string]unsentRecord) { delete(all, u.key) })
}

func expired(r unsentRecord) bool { return today()-r.Day > int64(unsentTTL/(24*time.Hour)) }

// read returns the records in the file; a damaged file reads as empty (it
// only saves a recipient a copy) and is written over.
func (u *unsentStore) read() map[string]unsentRecord {
	all := map[string]unsentRecord{}
	data, err := os.ReadFile(u.path)
	if err != nil || json.Unmarshal(data, &all) != nil {
		return map[string]unsentRecord{}
	}
	return all
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
	all := u.read()
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

// sendRecord is what one send does with its message's record.
type sendRecord struct {
	u    *unsentStore
	prev *unsentRecord // the record there before this send, if any
	used bool          // this send took prev's id (--again)
}

// beginRecord looks the message up, before it is sealed: with again, s
// takes the id of the send that gave up on it. Control messages (card
// updates, which the user cannot send again) are not recorded.
func beginRecord(s *sender, again bool) *sendRecord {
	r := &sendRecord{}
	if isCtl, _, _ := parseControl(s.msg); isCtl {
		return r
	}
	r.u = openUnsent(s.e, s.card, s.from, s.msg)
	if r.u == nil {
		return r
	}
	if old, ok := r.u.read()[r.u.key]; ok && !expired(old) {
		r.prev = &old
	}
	if !again {
		return r
	}
	if id, ok := r.u.lookup(); ok {
		s.message, r.used = id, true
		fmt.Fprintln(s.e.stderr, "sending again under the message id of the send that gave up: the recipient shows the message once")
	} else {
		fmt.Fprintln(s.e.stderr, "warning: --again: no send of this message to this contact gave up in the last 7 days (that this device recorded); it goes as a new message")
	}
	return r
}

// start records s's message id before anything goes out, so that a send
// that ends in any way (a crash, a closed terminal) can be sent again
// under its id.
func (r *sendRecord) start(s *sender) {
	if r.u == nil {
		return
	}
	if err := r.u.record(s.message); err != nil {
		fmt.Fprintf(s.e.stderr, "warning: could not record this send in %s (`send --again` cannot reuse its id): %v\n", r.u.path, err)
		return
	}
	s.recorded = true
}

// finish ends the record after the send. A message sent, or of which
// nothing went out (or the relay has no such mailbox), leaves what was
// there before it: the record of an earlier send that gave up, whose
// envelopes may be on the relay (a reviewer's find: a `send --again` that
// could not get out deleted it, and the next showed the message twice),
// and none once that message was sent again. A send that failed after an
// envelope went out keeps its own.
func (r *sendRecord) finish(s *sender, err error) {
	if !s.recorded || (err != nil && s.issued && !errors.Is(err, relay.ErrNoMailbox)) {
		return
	}
	if err != nil && r.used {
		return // sent again, and nothing went out: the record stays for the next --again
	}
	s.recorded = false
	mine := r.u.masked(s.message)
	uerr := r.u.update(func(all map[string]unsentRecord) {
		if cur, ok := all[r.u.key]; !ok || cur.ID != hex.EncodeToString(mine[:]) {
			return // another send's record now: not this one's to end
		}
		delete(all, r.u.key)
		if r.prev != nil && !r.used {
			all[r.u.key] = *r.prev
		}
	})
	if uerr != nil {
		fmt.Fprintf(s.e.stderr, "warning: could not update %s: %v\n", r.u.path, uerr)
	}
}
