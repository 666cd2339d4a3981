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
	"slices"
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
// newest id recorded, and the recipient's inbox takes the message once
// (envelope.Options.MessageID). Only --again does: the same bytes sent
// later as a new message ("ok") must be shown again.
//
// The file (mode 0600, written whole under unsent.lock) is a JSON object
//
//	"<32 hex digits>": [{"id": "<32 hex digits>", "day": <Unix day>}, ...]
//
// (one entry per send not known to have delivered it, oldest first, at
// most maxUnsentEntries) keyed by a hash of the recipient's mailbox, the sender's key (none if
// anonymous) and the message, and holding the message id masked by
// another hash of the same: neither an address, a mailbox id, a message
// nor a message id can be read from it. Whoever holds it and guesses a
// message and its recipient can confirm the guess, and recover the id
// (then match it against the recipient's replay file), for a message a
// send gave up on, for at most unsentTTL.

// unsentTTL is how long a message given up on keeps its id for a send
// again: a relay keeps an envelope a week.
const unsentTTL = 7 * 24 * time.Hour

// maxUnsentEntries bounds the entries one message keeps.
const maxUnsentEntries = 8

type unsentRecord struct {
	ID  string `json:"id"` // the message id, masked, in hex
	Day int64  `json:"day"`
}

// unsentStore is the record of one message in POSTERN_HOME/unsent.
type unsentStore struct {
	path string
	key  string                // the message's key in the file
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

// lookup returns the newest message id recorded for the message within
// unsentTTL.
func (u *unsentStore) lookup() (id [envelope.IDSize]byte, ok bool) {
	if u == nil {
		return id, false
	}
	rs := u.read()[u.key]
	for i := len(rs) - 1; i >= 0; i-- {
		b, err := hex.DecodeString(rs[i].ID)
		if err == nil && len(b) == envelope.IDSize && !expired(rs[i]) {
			return u.masked([envelope.IDSize]byte(b)), true
		}
	}
	return id, false
}

// masked is id XOR the store's mask (which undoes itself).
func (u *unsentStore) masked(id [envelope.IDSize]byte) [envelope.IDSize]byte {
	for i := range id {
		id[i] ^= u.mask[i]
	}
	return id
}

// entry is id as the file keeps it.
func (u *unsentStore) entry(id [envelope.IDSize]byte) string {
	m := u.masked(id)
	return hex.EncodeToString(m[:])
}

// edit applies change to the message's entries under the file's lock and
// returns how many remain.
func (u *unsentStore) edit(change func([]unsentRecord) []unsentRecord) (left int, err error) {
	if u == nil {
		return 0, nil
	}
	err = u.update(func(all map[string][]unsentRecord) {
		rs := change(all[u.key])
		if len(rs) > maxUnsentEntries {
			rs = rs[len(rs)-maxUnsentEntries:]
		}
		if left = len(rs); left == 0 {
			delete(all, u.key)
		} else {
			all[u.key] = rs
		}
	})
	return left, err
}

// add records id for the message, unless it is there (its day kept).
func (u *unsentStore) add(id [envelope.IDSize]byte) (int, error) {
	e := u.entry(id)
	return u.edit(func(rs []unsentRecord) []unsentRecord {
		if slices.ContainsFunc(rs, func(r unsentRecord) bool { return r.ID == e }) {
			return rs
		}
		return append(rs, unsentRecord{ID: e, Day: today()})
	})
}

// remove takes id out of the message's entries.
func (u *unsentStore) remove(id [envelope.IDSize]byte) (int, error) {
	e := u.entry(id)
	return u.edit(func(rs []unsentRecord) []unsentRecord {
		return slices.DeleteFunc(rs, func(r unsentRecord) bool { return r.ID == e })
	})
}

func expired(r unsentRecord) bool { return today()-r.Day > int64(unsentTTL/(24*time.Hour)) }

// read returns the entries in the file; a damaged file reads as empty (it
// only saves a recipient a copy) and is written over.
func (u *unsentStore) read() map[string][]unsentRecord {
	all := map[string][]unsentRecord{}
	data, err := os.ReadFile(u.path)
	if err != nil || json.Unmarshal(data, &all) != nil {
		return map[string][]unsentRecord{}
	}
	return all
}

// update applies change to the entries under the file's lock, drops
// expired ones, and writes the file (removing it when empty).
func (u *unsentStore) update(change func(map[string][]unsentRecord)) error {
	if err := os.MkdirAll(filepath.Dir(u.path), 0o700); err != nil {
		return err
	}
	defer route.LockFile(u.path + ".lock")()
	all := u.read()
	change(all)
	for k, rs := range all {
		if rs = slices.DeleteFunc(rs, expired); len(rs) == 0 {
			delete(all, k)
		} else {
			all[k] = rs
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

// sendRecord is what one send does with its message's entries.
type sendRecord struct {
	u    *unsentStore
	used bool // --again: the send took the newest entry's id
}

// beginRecord looks the message up, before it is sealed: with again, s
// takes the id of the newest send of it not known to have delivered it.
// Control messages (card updates, which the user cannot send again) are
// not recorded.
func beginRecord(s *sender, again bool) *sendRecord {
	r := &sendRecord{}
	if isCtl, _, _ := parseControl(s.msg); isCtl {
		return r
	}
	if r.u = openUnsent(s.e, s.card, s.from, s.msg); r.u == nil || !again {
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

// start adds s's message id before anything goes out, so that a send
// that ends in any way (a crash, a closed terminal) can be sent again
// under its id.
func (r *sendRecord) start(s *sender) {
	if r.u == nil {
		return
	}
	if _, err := r.u.add(s.message); err != nil {
		fmt.Fprintf(s.e.stderr, "warning: could not record this send in %s (`send --again` cannot reuse its id): %v\n", r.u.path, err)
		return
	}
	s.recorded = true
}

// finish takes the send's id out once the relay has the whole message, or
// if nothing went out (or the relay has no such mailbox), unless the
// send was a --again that sent nothing (its id is an earlier send's, whose
// envelopes may be on the relay); a send that failed after an envelope
// went out keeps it. Each send takes out only its own id: two sends of one
// message at once, or one after another, leave the entries of those not
// known to have delivered it (a reviewer's find: with one record per
// message, sends that overlapped left a delivered one's id, or dropped a
// failed one's). s.recorded ends up saying whether any entry remains,
// which `send --again` would use.
func (r *sendRecord) finish(s *sender, err error) {
	if r.u == nil || !s.recorded {
		return
	}
	keep := err != nil && ((s.issued && !errors.Is(err, relay.ErrNoMailbox)) || r.used)
	var left int
	var uerr error
	if keep {
		left, uerr = r.u.add(s.message) // back, if another send took it out
	} else {
		left, uerr = r.u.remove(s.message)
	}
	if uerr != nil {
		fmt.Fprintf(s.e.stderr, "warning: could not update %s: %v\n", r.u.path, uerr)
	}
	s.recorded = left > 0
}
