package server

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/bufpool"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

func (ss *session) create(p []byte) error {
	m, err := relay.ParseCreate(p)
	if err != nil {
		return relay.ErrBadFrame
	}
	// The creator proves it holds the owner key.
	if !relay.Verify(m.Owner[:], ss.bind, m, m.Sig) {
		return relay.ErrUnauthorized
	}
	if !ss.opAllowed() {
		return relay.ErrBusy
	}
	return ss.srv.cfg.Store.CreateMailbox(ss.ctx, m.Mailbox, ed25519.PublicKey(m.Owner[:]), m.CapVerifier)
}

func (ss *session) send(p []byte) (store.Ref, error) {
	m, err := relay.ParseSend(p)
	if err != nil {
		ss.srv.obs.Envelope("rejected", "malformed")
		return store.Ref{}, relay.ErrBadFrame
	}
	return ss.accept(time.Now(), m.Cap, m.Envelope)
}

// sendPooled is send for a pooled payload (frameReader.ReadFrame),
// which it gives back once the store has the envelope or refused it.
func (ss *session) sendPooled(p []byte) (store.Ref, error) {
	defer bufpool.Put(p)
	return ss.send(p)
}

// layer opens a forward layer handed over by an entry relay and accepts
// the Send inside like a Send from a client.
func (ss *session) layer(p []byte) (store.Ref, error) {
	start := time.Now()
	m, err := relay.ParseLayer(p)
	if err != nil {
		ss.srv.obs.Envelope("rejected", "malformed")
		return store.Ref{}, relay.ErrBadFrame
	}
	if ss.srv.cfg.Layers == nil {
		return store.Ref{}, relay.ErrUnsupported
	}
	sendCap, env, done, err := ss.srv.cfg.Layers.Open(m.Layer)
	switch {
	case errors.Is(err, relay.ErrReplay):
		return store.Ref{}, relay.ErrReplay
	case errors.Is(err, relay.ErrBusy): // a copy is being stored
		return store.Ref{}, relay.ErrBusy
	case err != nil:
		ss.srv.obs.Envelope("rejected", "bad_envelope")
		return store.Ref{}, relay.ErrBadEnvelope
	}
	ref, err := ss.accept(start, sendCap, env)
	done(err == nil)
	return ref, err
}

// relayAuth authenticates the session as a link from another relay: a
// valid signed descriptor and its key's signature over this session's
// binding. Nothing of the descriptor outlives the check.
func (ss *session) relayAuth(p []byte) error {
	m, err := relay.ParseRelayAuth(p)
	if err != nil {
		return relay.ErrBadFrame
	}
	d, err := descriptor.Parse(m.Descriptor, time.Now())
	if err != nil || !relay.VerifyRelayAuth(d.RelayKey, ss.bind, m.Sig) {
		return relay.ErrUnauthorized
	}
	ss.peerRelay.Store(true)
	return nil
}

// accept checks an envelope's mailbox and capability and stores it.
func (ss *session) accept(start time.Time, sendCap, env []byte) (store.Ref, error) {
	obs := ss.srv.obs
	m := relay.Send{Cap: sendCap, Envelope: env}
	id, err := envelope.PeekMailbox(m.Envelope)
	if err != nil {
		obs.Envelope("rejected", "bad_envelope")
		return store.Ref{}, relay.ErrBadEnvelope
	}
	to, verifier, err := ss.destination(id)
	if err != nil {
		obs.Envelope("rejected", reasonOf(err))
		return store.Ref{}, err
	}
	if !capable(m.Cap, verifier) {
		obs.Envelope("rejected", "capability")
		return store.Ref{}, relay.ErrCapability
	}
	spent, ok := ss.takeSend(len(m.Envelope))
	if !ok {
		obs.Envelope("rejected", "source_limit")
		return store.Ref{}, relay.ErrRelayFull
	}
	ref, err := ss.putFollowing(id, to, m.Envelope)
	if err != nil {
		if refused(err) {
			ss.giveSend(spent)
		}
		obs.Envelope("rejected", reasonOf(err))
		return store.Ref{}, err
	}
	obs.Envelope("accepted", "")
	obs.SendDuration(time.Since(start))
	return ref, nil
}

// capable reports whether send capability sendCap satisfies verifier
// (SHA-256 of the capability; empty: none needed).
func capable(sendCap, verifier []byte) bool {
	if len(verifier) == 0 {
		return true
	}
	sum := sha256.Sum256(sendCap)
	return len(sendCap) > 0 && subtle.ConstantTimeCompare(sum[:], verifier) == 1
}

// putFollowing stores env, which names mailbox id, in mailbox to (destination's
// answer for id). A rotation of the mailbox between destination's look and
// the Put (the owner's Rotate on another session) makes the Put answer "no
// such mailbox": putFollowing then looks again and, where the id now forwards
// elsewhere, stores it there, so a forward an entry relay hands over
// during its recipient's rotation is not refused for good. The capability
// checked stays right: a forward keeps the verifier its id had when it was
// rotated away, the one checked if the first look found the mailbox.
func (ss *session) putFollowing(id, to [store.IDSize]byte, env []byte) (store.Ref, error) {
	for try := 0; ; try++ {
		ref, err := ss.srv.cfg.Store.Put(ss.ctx, to, env)
		if !errors.Is(err, store.ErrNoMailbox) || try == maxForwardHops {
			return ref, err
		}
		next, _, derr := ss.destination(id)
		if derr != nil && !errors.Is(derr, store.ErrNoMailbox) {
			return store.Ref{}, derr // a store failure: retry, not "no such mailbox"
		}
		if derr != nil || next == to {
			return ref, err
		}
		to = next
	}
}

// maxForwardHops bounds how many rotations destination follows from the
// id an envelope names: the store refuses a rotation that would make a
// longer chain of forwards (store.ErrRotatedOften), so every id rotated
// away within the TTL is followed to its mailbox, at a bounded cost.
const maxForwardHops = store.MaxForwardChain

// destination returns the mailbox an envelope naming id goes to, and the
// send capability verifier it must satisfy: id's own, or, for an id
// rotated away within the store's TTL (store.Store.RotateMailbox), the
// mailbox it went to, through at most maxForwardHops rotations, and the
// verifier id had when it was rotated away (the capability the sender was
// given with id; a later rotation's is the owner's affair). An envelope an
// entry relay queued for the mailbox before its owner rotated it, or one
// from a contact who has not had the new card yet, so still arrives.
func (ss *session) destination(id [store.IDSize]byte) (to [store.IDSize]byte, verifier []byte, err error) {
	st := ss.srv.cfg.Store
	mb, err := st.Mailbox(ss.ctx, id)
	if !errors.Is(err, store.ErrNoMailbox) {
		return id, mb.SendCap, err
	}
	to = id
	for hop := range maxForwardHops {
		next, c, ferr := st.Forwarded(ss.ctx, to)
		if ferr != nil {
			if errors.Is(ferr, store.ErrNoMailbox) {
				return id, nil, err
			}
			return id, nil, ferr
		}
		if hop == 0 {
			verifier = c
		}
		to = next
		if _, err = st.Mailbox(ss.ctx, to); !errors.Is(err, store.ErrNoMailbox) {
			return to, verifier, err
		}
	}
	return id, nil, err
}

// reasonOf maps an error to a fixed metric reason.
func reasonOf(err error) string {
	switch codeOf(err) {
	case relay.CodeNoMailbox:
		return "no_mailbox"
	case relay.CodeCapability:
		return "capability"
	case relay.CodeMailboxFull:
		return "mailbox_full"
	case relay.CodeRelayFull:
		return "relay_full"
	case relay.CodeBadFrame:
		return "malformed"
	}
	return "internal"
}

// owned checks that m is signed by the owner of mailbox id.
func (ss *session) owned(id [32]byte, m relay.OwnerRequest, sig [relay.SigSize]byte) error {
	_, err := ss.ownedBox(id, m, sig)
	return err
}

// ownedBox is owned, returning the mailbox.
func (ss *session) ownedBox(id [32]byte, m relay.OwnerRequest, sig [relay.SigSize]byte) (store.Mailbox, error) {
	mb, err := ss.srv.cfg.Store.Mailbox(ss.ctx, id)
	if err != nil {
		return store.Mailbox{}, err
	}
	if !relay.Verify(mb.Owner, ss.bind, m, sig) {
		return store.Mailbox{}, relay.ErrUnauthorized
	}
	return mb, nil
}

func (ss *session) fetch(p []byte) (int, error) {
	m, err := relay.ParseFetch(p)
	if err != nil {
		return 0, relay.ErrBadFrame
	}
	if err := ss.owned(m.Mailbox, m, m.Sig); err != nil {
		return 0, err
	}
	max := int(m.Max)
	if max <= 0 || max > relay.MaxFetch {
		max = relay.MaxFetch
	}
	// Batch by batch, so a Fetch never holds more than one batch of
	// envelopes, and a client that stops reading holds none for long.
	n, after := 0, m.After
	for n < max {
		want := min(max-n, ss.srv.batchItems)
		b, err := ss.readBatch(ss.ctx, m.Mailbox, after, want)
		if err != nil {
			return 0, err
		}
		got := len(b.items)
		if after, err = ss.deliverBatch(b, m.Req, m.Mailbox, nil); err != nil {
			return 0, err
		}
		n += got
		if got < want {
			break
		}
	}
	return n, nil
}

// fetchPart answers a FetchPart: part of the first waiting envelope after
// m.After, as a relay.Part body (nil when nothing waits). The envelope is
// read under the same budgets as a Fetch's batch of one.
func (ss *session) fetchPart(p []byte) ([]byte, error) {
	m, err := relay.ParseFetchPart(p)
	if err != nil {
		return nil, relay.ErrBadFrame
	}
	if err := ss.owned(m.Mailbox, m, m.Sig); err != nil {
		return nil, err
	}
	b, err := ss.readBatch(ss.ctx, m.Mailbox, m.After, 1)
	if err != nil {
		return nil, err
	}
	defer b.release()
	if len(b.items) == 0 {
		return nil, nil
	}
	// An offset at or past the end gets no data, not an error: the
	// envelope the client was reading may be gone, and this one, shorter,
	// is the next; the client sees its ref and starts it over.
	it := b.items[0]
	off := min(int64(m.Offset), int64(len(it.Envelope)))
	n := min(int64(len(it.Envelope))-off, int64(m.Max), relay.MaxPart)
	part := relay.Part{Ref: it.Ref, Seq: it.Seq, Total: uint32(len(it.Envelope)), Data: it.Envelope[off : off+n]}
	return part.Append(nil), nil // a copy: the envelope goes back to the store's pool
}

// read is a store read under the server-wide read budget.
func (ss *session) read(ctx context.Context, id [32]byte, after uint64, max int) ([]store.Item, error) {
	if err := ss.acquire(ctx, ss.srv.readSem); err != nil {
		return nil, err
	}
	defer func() { <-ss.srv.readSem }()
	return ss.srv.cfg.Store.FetchAfter(ctx, id, after, max)
}

func (ss *session) ack(p []byte) (int, error) {
	m, err := relay.ParseAck(p)
	if err != nil {
		return 0, relay.ErrBadFrame
	}
	if err := ss.owned(m.Mailbox, m, m.Sig); err != nil {
		return 0, err
	}
	refs := make([]store.Ref, len(m.Refs))
	for i, r := range m.Refs {
		refs[i] = r
	}
	done, err := ss.srv.cfg.Store.Ack(ss.ctx, m.Mailbox, refs...)
	if err != nil {
		return 0, err
	}
	for i := 0; i < done; i++ {
		ss.srv.obs.Envelope("delivered", "")
	}
	ss.smu.Lock()
	if sub := ss.subs[m.Mailbox]; sub != nil {
		sub.acked(refs)
	}
	ss.smu.Unlock()
	return done, nil
}

func (ss *session) rotate(p []byte) (int, error) {
	m, err := relay.ParseRotate(p)
	if err != nil {
		return 0, relay.ErrBadFrame
	}
	if err := ss.owned(m.Old, m, m.OldSig); err != nil {
		return 0, err
	}
	if !relay.Verify(m.NewOwner[:], ss.bind, m, m.NewSig) {
		return 0, relay.ErrUnauthorized
	}
	if !ss.opAllowed() {
		return 0, relay.ErrBusy
	}
	n, err := ss.srv.cfg.Store.RotateMailbox(ss.ctx, m.Old, m.New, ed25519.PublicKey(m.NewOwner[:]), m.CapVerifier)
	if err == nil {
		// Only a rotation that happened ends the old id's subscription.
		ss.unsubscribe(m.Old)
	}
	return n, err
}

func (ss *session) delete(p []byte) error {
	m, err := relay.ParseDelete(p)
	if err != nil {
		return relay.ErrBadFrame
	}
	if err := ss.owned(m.Mailbox, m, m.Sig); err != nil {
		return err
	}
	ss.unsubscribe(m.Mailbox)
	return ss.srv.cfg.Store.DeleteMailbox(ss.ctx, m.Mailbox)
}

// opAllowed spends one of the session's source's mailbox operations
// (Config.MailboxOps), reporting false, and counting the refusal, if it
// has none left.
func (ss *session) opAllowed() bool {
	if ss.srv.ops.take(ss.source()) {
		return true
	}
	if o, ok := ss.srv.obs.(MailboxOpsObserver); ok {
		o.MailboxOpRefused()
	}
	return false
}
