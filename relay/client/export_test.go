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
func (in *Inbox) HeldForTest() int { return in.heldRefs() }
