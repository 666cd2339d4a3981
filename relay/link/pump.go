package link

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/descriptor"
)

// pumpBatch is how many queued items a pump reads at a time.
const pumpBatch = 64

// pump hands one home relay's queued layers over its link.
type pump struct {
	f    *Forwarder
	dest [32]byte
	wake chan struct{}

	home atomic.Pointer[descriptor.Descriptor] // newest descriptor seen in the queue
	link *Link
	stop context.CancelFunc
	done chan struct{} // closed when the link's Run returned
}

func (p *pump) run(ctx context.Context) {
	defer p.close()
	backoff := p.f.cfg.MinBackoff
	for {
		done, err := p.drain(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := time.Duration(0)
		switch {
		case err != nil:
			p.f.cfg.Log.Warn("forwarding to a home relay failed; retrying", "err", err)
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, p.f.cfg.MaxBackoff)
		case done:
			backoff = p.f.cfg.MinBackoff
			wait = -1 // until kicked
		}
		if !p.sleep(ctx, wait) {
			return
		}
	}
}

// sleep waits d (negative: until kicked) or until ctx ends.
func (p *pump) sleep(ctx context.Context, d time.Duration) bool {
	var tc <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		tc = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-p.wake:
	case <-tc:
	}
	return true
}

// drain delivers queued items, a batch at a time with the batch's
// requests pipelined on the link, until none are left (done) or some fail.
func (p *pump) drain(ctx context.Context) (done bool, err error) {
	q := p.f.cfg.Queue
	items, err := q.Pending(ctx, p.dest, 0, pumpBatch)
	if err != nil || len(items) == 0 {
		return err == nil, err
	}
	payloads := make([]relay.ForwardPayload, len(items))
	var delivered []uint64
	for i, it := range items {
		if payloads[i], err = relay.ParseForwardPayload(it.Data); err != nil {
			// Checked before it was queued: the queue is damaged.
			p.f.cfg.Observe("refused")
			delivered = append(delivered, it.Seq)
		}
	}
	c, err := p.session(ctx, payloads[len(payloads)-1].Descriptor)
	if err != nil {
		return false, err
	}
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i := range items {
		if payloads[i].Layer == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.deliver(ctx, c, payloads[i])
		}()
	}
	wg.Wait()
	var firstErr error
	for i, it := range items {
		if errs[i] == nil && payloads[i].Layer != nil {
			delivered = append(delivered, it.Seq)
		} else if firstErr == nil {
			firstErr = errs[i]
		}
	}
	if err := q.Done(ctx, p.dest, delivered...); err != nil {
		return false, err
	}
	if firstErr != nil {
		c.Close() // the link redials
	}
	return false, firstErr
}

// deliver hands one layer to the home relay. Errors that retrying cannot
// fix (the home relay refuses the layer or its envelope) drop it.
func (p *pump) deliver(ctx context.Context, c *client.Client, fp relay.ForwardPayload) error {
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := c.DeliverLayer(dctx, fp.Layer)
	var re *relay.Error
	switch {
	case err == nil:
		p.f.cfg.Observe("delivered")
	case errors.Is(err, relay.ErrReplay):
		p.f.cfg.Observe("replay")
	case errors.As(err, &re) && permanent(re.Code):
		p.f.cfg.Observe("refused")
	default:
		return err
	}
	return nil
}

// permanent reports whether a home relay's refusal will not change on
// retry.
func permanent(c relay.Code) bool {
	switch c {
	case relay.CodeBadFrame, relay.CodeBadEnvelope, relay.CodeNoMailbox, relay.CodeCapability, relay.CodeUnsupported:
		return true
	}
	return false
}

// session returns the link's session, starting the link the first time
// and following the newest descriptor seen.
func (p *pump) session(ctx context.Context, line string) (*client.Client, error) {
	d, _, err := descriptor.ParseStale(line, time.Now())
	if err != nil {
		return nil, err
	}
	if h := p.home.Load(); h == nil || d.Expires.After(h.Expires) {
		p.home.Store(d)
	}
	if p.link == nil {
		p.link = New(Config{
			Dial:       func(ctx context.Context) (*client.Client, error) { return p.f.cfg.Dial(ctx, p.home.Load()) },
			MinBackoff: p.f.cfg.MinBackoff, MaxBackoff: p.f.cfg.MaxBackoff,
			Observe: func(up bool) {
				if up {
					p.f.cfg.Observe("up")
				} else {
					p.f.cfg.Observe("down")
				}
			},
		})
		lctx, cancel := context.WithCancel(ctx)
		p.stop, p.done = cancel, make(chan struct{})
		go func() {
			defer close(p.done)
			p.link.Run(lctx)
		}()
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return p.link.Session(sctx)
}

func (p *pump) close() {
	if p.stop != nil {
		p.stop()
		<-p.done
	}
}
