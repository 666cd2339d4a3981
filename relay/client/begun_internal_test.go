package client

import (
	"bytes"
	"testing"

	"github.com/postern/postern/relay"
)

// FuzzBegun: what begun makes of a Deliver frame's payload read as far
// as got (a relay's bytes, up to a page left) is what ParseDeliver reads
// of the whole, cut at got, for the request it answers only; nothing
// panics, and the data is a copy.
func FuzzBegun(f *testing.F) {
	whole := relay.Deliver{Req: 7, Mailbox: [32]byte{1}, Ref: [relay.RefSize]byte{2}, Seq: 9, Envelope: []byte("an envelope")}.AppendPayload(nil)
	f.Add(whole, len(whole), uint32(7))
	f.Add(whole, deliverHead, uint32(7))
	f.Add(whole, deliverHead-1, uint32(7))
	f.Add(whole, len(whole), uint32(8))
	f.Add([]byte{}, 0, uint32(0))
	f.Fuzz(func(t *testing.T, p []byte, got int, req uint32) {
		got = min(max(got, 0), len(p))
		c := &Client{}
		c.seen(relay.FrameDeliver, p, got)
		b, ok := c.begun(req)
		d, err := relay.ParseDeliver(p)
		if len(p) > deliverHead && err != nil {
			t.Fatalf("ParseDeliver of %d bytes: %v", len(p), err)
		}
		want := got >= deliverHead && len(p) > deliverHead && d.Req == req
		if ok != want {
			t.Fatalf("begun of %d of %d bytes for request %d: %v", got, len(p), req, ok)
		}
		if !ok {
			return
		}
		if b.Seq != d.Seq || b.Ref != Ref(d.Ref) || b.Total != len(d.Envelope) || !bytes.Equal(b.Data, d.Envelope[:got-deliverHead]) {
			t.Fatalf("begun %d/%d of seq %d; the whole: seq %d, %d bytes", len(b.Data), b.Total, b.Seq, d.Seq, len(d.Envelope))
		}
		if len(b.Data) > 0 && &b.Data[0] == &p[deliverHead] {
			t.Fatal("begun's data is the payload's, not a copy")
		}
		c.seen(relay.FramePing, p, got) // not a Deliver: what is kept stays
		c.seen(relay.FrameDeliver, nil, 0)
		if _, ok := c.begun(req); ok {
			t.Fatal("begun after the frame was filed")
		}
	})
}
