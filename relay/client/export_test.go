package client

import (
	"context"
	"crypto/ed25519"
)

// AckForTest is the inbox's ack step: save taken ids, then ack refs.
func (in *Inbox) AckForTest(ctx context.Context, c *Client, owner ed25519.PrivateKey, mailbox [32]byte, refs []Ref) error {
	return in.ack(ctx, c, owner, mailbox, refs)
}

// HeldForTest is how many delivered envelopes the inbox holds unacked.
func (in *Inbox) HeldForTest() int {
	n := 0
	for _, h := range in.held {
		n += len(h.refs)
	}
	return n
}

// HeldPushedForTest is FollowConfig.Held of the inbox's Follow.
func (in *Inbox) HeldPushedForTest() int { return in.heldPushed() }

// PushingForTest is the envelope a subscription of c is pushing, if some
// of it is still to come (FollowConfig.Leave).
func (c *Client) PushingForTest() (Pushing, bool) {
	p, _, ok := c.pushing()
	return p, ok
}

// ReadingDeliverForTest is how much of the Deliver frame being read came
// (0 when none is being read).
func (c *Client) ReadingDeliverForTest() int {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	return c.inGot
}

// DeliverHeadForTest is the size of a Deliver frame's payload before its
// envelope.
const DeliverHeadForTest = deliverHead
