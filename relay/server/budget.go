package server

import (
	"context"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/store"
)

// maxEnvelope is the largest envelope a store read can return.
const maxEnvelope = envelope.Bucket64K

// withBudgetDefaults fills the delivery budget's defaults and keeps the
// budgets whole numbers of batches.
func (cfg *Config) withBudgetDefaults() {
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = 256 << 10
	}
	cfg.BatchBytes = max(cfg.BatchBytes, maxEnvelope)
	if cfg.SessionDeliveryBytes <= 0 {
		cfg.SessionDeliveryBytes = 2 * cfg.BatchBytes
	}
	cfg.SessionDeliveryBytes = max(cfg.SessionDeliveryBytes, cfg.BatchBytes)
	if cfg.MaxDeliveryBytes <= 0 {
		cfg.MaxDeliveryBytes = 64 << 20
	}
	cfg.MaxDeliveryBytes = max(cfg.MaxDeliveryBytes, cfg.BatchBytes)
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
}

// batch is one store read for delivery, holding its share of the
// session's and the server's delivery budgets until released.
type batch struct {
	ss    *session
	items []store.Item
}

// readBatch reads up to max envelopes after seq after (never more than
// one batch) once the session and the server have budget for them. The
// caller queues the items (which copies them) and then calls release,
// which gives their envelopes back to a store that pools them.
func (ss *session) readBatch(ctx context.Context, id [32]byte, after uint64, max int) (*batch, error) {
	if err := ss.acquire(ctx, ss.deliverSem); err != nil {
		return nil, err
	}
	if err := ss.acquire(ctx, ss.srv.deliverSem); err != nil {
		<-ss.deliverSem
		return nil, err
	}
	b := &batch{ss: ss}
	items, err := ss.read(ctx, id, after, min(max, ss.srv.batchItems))
	if err != nil {
		b.release()
		return nil, err
	}
	b.items = items
	return b, nil
}

// acquire takes a token of sem. Frames queued before stay queued only
// while it does not wait: before waiting it writes them out.
func (ss *session) acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	default:
	}
	if err := ss.flush(); err != nil {
		return err
	}
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *batch) release() {
	if r, ok := b.ss.srv.cfg.Store.(store.Recycler); ok {
		r.Recycle(b.items) // queued: each envelope was copied into the write buffer
	}
	b.items = nil
	<-b.ss.srv.deliverSem
	<-b.ss.deliverSem
}

// deliverBatch queues a batch's items as Deliver frames for request req
// and releases the batch; the caller flushes before it waits for
// anything. It returns the last sequence number queued.
func (ss *session) deliverBatch(b *batch, req uint32, id [32]byte, onItem func(store.Item)) (uint64, error) {
	defer b.release()
	var last uint64
	for _, it := range b.items {
		if onItem != nil {
			onItem(it)
		}
		if err := ss.queue(relay.Deliver{Req: req, Mailbox: id, Ref: it.Ref, Seq: it.Seq, Envelope: it.Envelope}); err != nil {
			return last, err
		}
		last = it.Seq
	}
	return last, nil
}

// writeTimeout is how long the next write may block: WriteTimeout, or a
// tenth of it while most of the delivery budget is held, so that sessions
// which stopped reading cannot keep it from the others for long.
func (s *Server) writeTimeout() time.Duration {
	if held := len(s.deliverSem); held*4 > cap(s.deliverSem)*3 {
		return s.cfg.WriteTimeout / 10
	}
	return s.cfg.WriteTimeout
}
