package server

import (
	"time"

	"github.com/postern/postern/relay/store"
)

// Envelope bytes per source. Without a bound one client could fill the
// whole store (max_store_bytes, 1 GiB by default: sixteen mailboxes of its
// own at 64 MiB each, made within its mailbox allowance) in seconds, and
// every other client's sends would then be refused as "relay storage
// full" until the envelopes expired. So each source may send
// Config.SendBytes a day (an eighth of the store's quota by default: 128
// MiB), refilled evenly. A source's sends always count, but the relay
// refuses one beyond the allowance (relay.ErrBusy, counted as rejected
// for "source_limit") only while the store holds half its quota or more.
// Below that nothing is refused, so that a network behind one address (a
// carrier's NAT) or an entry relay forwarding for many clients is not
// held to one client's share while there is room for all; once the store
// is half full the sources that sent the most lately are the ones
// refused, and one source alone takes the store from half full to full
// at its allowance a day instead of at once.
//
// Only the count is kept, in memory, by the keyed hash of the source
// (IPv4 address or IPv6 /64): never which envelope or mailbox a source
// sent to. Clients refused as busy try another of the card's relays or an
// entry relay, which queues and retries; an entry relay's sends count as
// that relay's, so a home relay that many entry relays forward to should
// raise the allowance (send_bytes_per_source).
const sendBytesPeriod = 24 * time.Hour

// newSendLimiter is the allowance of envelope bytes cfg asks for, setting
// cfg.SendBytes to what is in effect.
func newSendLimiter(cfg *Config) *opLimiter {
	if cfg.StoreBytes <= 0 || cfg.SendBytes < 0 {
		return &opLimiter{}
	}
	if cfg.SendBytes == 0 {
		cfg.SendBytes = cfg.StoreBytes / 8
	}
	cfg.SendBytes = max(cfg.SendBytes, store.MaxEnvelopeSize)
	// The accounts are scanned (prune) at most every 5.6 minutes, as the
	// mailbox allowance's by default.
	return newLimiter(float64(cfg.SendBytes), sendBytesPeriod, sendBytesPeriod/DefaultMailboxOps, cfg.Now)
}

// sendAllowed spends n envelope bytes of the session's source, reporting
// false if the store is half full or more and the source has fewer left.
func (ss *session) sendAllowed(n int) bool {
	s := ss.srv
	if s.sends.per == 0 {
		return true
	}
	pressed := s.cfg.Store.Stats().Bytes >= s.cfg.StoreBytes/2
	return s.sends.takeN(ss.source(), float64(n), pressed)
}
