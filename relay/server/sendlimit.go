package server

import (
	"errors"
	"time"

	"github.com/postern/postern/relay/store"
)

// Envelope bytes per source. Without a bound one client could fill the
// whole store (max_store_bytes, 1 GiB by default: sixteen mailboxes of its
// own at 64 MiB each, made within its mailbox allowance) in seconds, and
// every other client's sends would then be refused as "relay storage
// full" until the envelopes expired. So each source may send
// Config.SendBytes a day, refilled evenly. A source's sends always count
// (down to nothing left, not below), but the relay refuses one beyond the
// allowance only while the store holds half its quota or more. Below
// that nothing is refused, so that a network behind one address (a
// carrier's NAT) or an entry relay forwarding for many clients is not
// held to one client's share while there is room for all; once the store
// is half full the sources that sent the most lately are the ones
// refused. An envelope the store then refuses (a full mailbox) costs
// nothing.
//
// The refusal is "relay storage full" (relay.ErrRelayFull, counted as
// rejected for "source_limit"): for this source, for now, it is. It was
// "busy" at first, but busy also answers a copy of a forward layer being
// stored, which a client causes at will by forwarding a layer twice, so
// an entry relay could not stop its drain on busy without letting any
// client hold everyone's forwards back (a reviewer's find), and a home
// relay that made the copy wait instead held the relay-wide send slots
// for as long (the next reviewer's). Every version of the code already
// treats relay full as "this relay, later": a sender tries another relay,
// an entry relay keeps the layer and rests.
//
// What one source can hold is then at most the half it fills while
// nothing is refused (and tops up whenever expiries take the store below
// half) and what it sends above that in an envelope's life, up to its
// TTL and a day (expiry is day-coarse). The default allowance keeps that
// to three quarters of the store, so that the others always have a
// quarter: a quarter of the quota per envelope life, 32 MiB a day for 1
// GiB and 7 days (a reviewer's find: an eighth of the quota a day, the
// first default, let one source fill the store in four days). A client
// with several addresses, or sending through several entry relays, is
// several sources.
//
// Only the count is kept, in memory, by the keyed hash of the source
// (IPv4 address or IPv6 /64): never which envelope or mailbox a source
// sent to. Clients refused try another of the card's relays or an entry
// relay, which queues and retries. The sessions an entry relay
// tunnels here, and the layers it forwards, count as that relay's, as do
// a relay's links through an upstream: a home relay that many entry
// relays reach should raise the allowance (send_bytes_per_source).
const sendBytesPeriod = 24 * time.Hour

// newSendLimiter is the allowance of envelope bytes cfg asks for, setting
// cfg.SendBytes to what is in effect.
func newSendLimiter(cfg *Config) *opLimiter {
	if cfg.StoreBytes <= 0 || cfg.SendBytes < 0 {
		return &opLimiter{}
	}
	if cfg.SendBytes == 0 {
		cfg.SendBytes = defaultSendBytes(cfg.StoreBytes, cfg.StoreTTL)
	}
	cfg.SendBytes = max(cfg.SendBytes, store.MaxEnvelopeSize)
	// The accounts are scanned (prune) at most every 5.6 minutes, as the
	// mailbox allowance's by default.
	return newLimiter(float64(cfg.SendBytes), sendBytesPeriod, sendBytesPeriod/DefaultMailboxOps, cfg.Now)
}

// defaultSendBytes is the allowance a day for a store of quota bytes that
// keeps envelopes ttl (0: store.DefaultTTL): a quarter of the quota over
// an envelope's life, ttl and a day.
func defaultSendBytes(quota int64, ttl time.Duration) int64 {
	if ttl <= 0 {
		ttl = store.DefaultTTL
	}
	life := float64(ttl+24*time.Hour) / float64(sendBytesPeriod)
	return int64(float64(quota) / 4 / life)
}

// takeSend spends n envelope bytes of the session's source, reporting
// false if the store is half full or more and the source has fewer left.
// It returns what it spent, which giveSend returns if the store then
// does not take the envelope.
func (ss *session) takeSend(n int) (float64, bool) {
	s := ss.srv
	if s.sends.per == 0 {
		return 0, true
	}
	pressed := s.cfg.Store.Stats().Bytes >= s.cfg.StoreBytes/2
	return s.sends.takeN(ss.source(), float64(n), pressed)
}

// giveSend returns to the session's source what takeSend spent on an
// envelope the store refused (refused: a full mailbox, say): only what is
// stored counts (a reviewer's find: an entry relay retrying a layer for a
// full mailbox spent its whole allowance on it, and the layers behind it
// were refused).
func (ss *session) giveSend(spent float64) {
	ss.srv.sends.giveBack(ss.source(), spent)
}

// refused reports whether a Put's error says the store did not take the
// envelope: no such or full mailbox, the store full (its quota, or the
// disk, whose failed write is undone), an invalid envelope. Any other
// error may come after the envelope was stored (a session that ended
// while its Put waited for the commit: the store commits it anyway), and
// giving the bytes back then let a source that hung up after each Send
// store without limit (a reviewer's find: 48 of 48 stored where 16 were
// allowed).
func refused(err error) bool {
	var e *store.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case store.CodeNoMailbox, store.CodeMailboxFull, store.CodeStoreFull, store.CodeInvalid:
		return true
	}
	return false
}
