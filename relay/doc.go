// Package relay is Postern's relay session protocol: the frames spoken
// over any transport stream, their encoding, the error codes and the owner
// signatures. It is the wire contract between two sides that live in their
// own packages:
//
//   - relay/client: a session to a relay, Dial (through transport/route),
//     Follow, and Inbox (messages from deliveries, acked only once taken).
//     It links no server code and no database.
//   - relay/server: sessions on transport listeners, push, quotas and the
//     Observer for metrics, over a relay/store.Store; forwarding is behind
//     its Forwarder interface.
//   - relay/store: the store interface and the memory store;
//     relay/store/boltstore the durable one, the only package that imports
//     bbolt.
//   - relay/link: links between relays and forwarding.
//   - relay/relaytest: an in-process relay for tests.
//
// Every frame type has a Go type here with an Append method and a Parse
// function (on cryptobyte, strict: trailing bytes are an error), and a
// fixed byte vector in testdata/frames.golden.
//
// # Session protocol
//
// A session is a reliable byte stream from a transport (transport.Conn).
// Everything on it is a frame:
//
//	type    1 byte
//	length  4 bytes, big endian, at most MaxPayload(type): MaxFrameSize,
//	        MaxForwardFrameSize for Forward and Layer
//	payload length bytes
//
// The client speaks first with ClientHello; the server answers ServerHello
// with the version it picked and a fresh 32-byte challenge. After that the
// client sends requests, each with a 4-byte request id of its choosing, and
// the server answers each with exactly one Result frame carrying that id (a
// Fetch is answered by its Deliver frames and then its Result). Deliver
// frames for a subscription arrive at any time.
//
// Mailbox owners sign every request that reads or changes a mailbox:
//
//	sig = Ed25519(owner, SigContext || relay key || challenge || type || payload up to the first sig)
//
// where relay key is the 32-byte Ed25519 key of the relay's signed
// descriptor, which the client knows from the descriptor it dialed (or,
// in a tunnel, the key the inner TLS proved), never from anything the
// relay says in the session. A signature is only good for this one relay,
// this one session and this one request: an entry relay, or anyone in the
// middle, that hands a client another relay's challenge gets signatures
// the other relay refuses. The relay stores the owner's public key and
// nothing else about the owner.
//
// A relay that dials another relay for a link (forwarding) says RelayAuth
// first: its own signed descriptor and
//
//	sig = Ed25519(its descriptor key, RelayAuthContext || peer relay key || challenge)
//
// The peer checks the descriptor (signature, validity) and sig, and takes
// Layer frames only on sessions authenticated that way. It keeps nothing
// of the descriptor beyond the session and never logs it.
//
// ProtocolVersion history:
//
//	1  first version
//	2  owner signatures bound to the relay's key; RelayAuth before Layer
//
// Frames, client to relay (u8, u16, u32: big-endian integers):
//
//	0x01 ClientHello  magic "PSTN" | min u8 | max u8
//	0x10 Create       req u32 | mailbox 32 | owner 32 | caplen u8 | capverifier | sig 64
//	0x11 Send         req u32 | caplen u8 | cap | envelope (a whole bucket)
//	0x12 Subscribe    req u32 | mailbox 32 | sig 64
//	0x13 Fetch        req u32 | mailbox 32 | max u16 | after u64 | sig 64
//	0x14 Ack          req u32 | mailbox 32 | n u16 | n × ref 32 | sig 64
//	0x15 Rotate       req u32 | old 32 | new 32 | newowner 32 | caplen u8 | capverifier | sig 64 (old owner) | sig 64 (new owner)
//	0x16 Delete       req u32 | mailbox 32 | sig 64
//	0x17 Ping         req u32 | data (at most 64 bytes)
//	0x18 Forward      req u32 | desclen u16 | home relay descriptor | forward layer (to an entry
//	                  relay; see package relay/forward; a server without a Forwarder answers CodeUnsupported)
//	0x19 Descriptor   req u32 (asks for the relay's current signed descriptor)
//	0x1A Layer        req u32 | forward layer (entry relay to home relay over a relay link
//	                  after RelayAuth; answered OK once stored, CodeReplay if received
//	                  before, CodeUnauthorized on a session that is no relay link)
//	0x1B Tunnel       req u32 | home relay descriptor line (to an entry relay; see Tunnels)
//	0x1C RelayAuth    req u32 | desclen u16 | the sending relay's descriptor | sig 64 (relay links)
//	0x1D FetchPart    req u32 | mailbox 32 | after u64 | offset u32 | max u32 | sig 64 (part of
//	                  the first waiting envelope with seq > after; see Parts)
//	0x1E SubscribeAfter req u32 | mailbox 32 | after u64 | sig 64 (a subscription
//	                  that pushes only envelopes with seq > after; see Parts)
//
// Frame, entry relay to home relay, in place of ClientHello:
//
//	0x03 TunnelHello  magic "PSTN" (see Tunnels)
//
// Frames, relay to client:
//
//	0x02 ServerHello  version u8 | challenge 32 | maxenvelope u32
//	0x20 Result       req u32 | code u16 | msglen u16 | msg | body
//	                  body: Send → ref 32; Fetch → count u32; Ack → count u32; Rotate → moved u32;
//	                  Descriptor → the descriptor line; FetchPart → ref 32 | seq u64 | total u32 |
//	                  data (empty when nothing waits); SubscribeAfter → from u64 (the cursor the
//	                  subscription starts from: after, or 0 when after is past every envelope
//	                  the mailbox has had, as when the relay lost it and it was made again)
//	0x21 Deliver      req u32 | mailbox 32 | ref 32 | seq u64 | envelope
//	                  (req is the Subscribe's or the Fetch's request id; seq is
//	                  the envelope's position in the mailbox, a Fetch cursor)
//	0x22 Pong         req u32 | data
//
// A Fetch returns waiting envelopes with seq > after, oldest first, so a
// client pages past envelopes it holds (fragments of an unfinished message)
// without the relay re-sending them. A subscription pushes every waiting
// envelope once and then each new one, keeping at most MaxUnacked pushed and
// not yet acked on the session; acks make room.
//
// A Send carries the recipient's send capability when the mailbox has one:
// the mailbox stores SHA-256(cap) as its verifier and the relay compares.
// The relay reads only the envelope's outer header (envelope.PeekMailbox).
// A Send (or a forward's layer) naming a mailbox id rotated away within
// the relay's TTL is stored in the mailbox it went to (through at most 8
// rotations) if it carries the capability the old id had; a Deliver then
// names the new mailbox, and the envelope inside still names the old id
// (store.Store.Forwarded).
//
// Errors are a Code and a short message for humans; unknown frame types and
// malformed frames are answered with a Result (CodeBadFrame, CodeUnknownFrame)
// when a request id can be read, and otherwise end the session.
//
// # Parts
//
// Some censors let a flow carry a few kilobytes and then freeze or reset
// it; a Deliver of a 64 KiB envelope never gets through one. A client
// that sees that asks with FetchPart for at most a few kilobytes of the
// first waiting envelope past its cursor, and for the next part of the
// same envelope (after = its seq - 1, offset = what it has) on the same
// session or, once the censor ends that one, on the next: each part is
// answered whole or not at all, and nothing is lost by a flow cut between
// parts. The data is the envelope's bytes, which the client opens when it
// has them all and acks as any delivery. When the envelope at that
// position is gone (acked from another session, expired), the answer
// names another ref (with no data if the asked offset is past its end)
// and the client starts that one from its start. A
// relay from before parts answers CodeUnknownFrame. Ask at most MaxPart
// bytes: a larger max is cut to it.
//
// A client that has paged through the mailbox so, and holds the fragments
// of unfinished messages it found there (they stay on the relay until the
// message is complete), follows the mailbox with SubscribeAfter its last
// seq: a Subscribe would push those large envelopes first again, into the
// censor's limit. An offset past an envelope's end costs the client a few
// bytes to learn which envelope is next (its ref, seq and size), so a
// client that already holds it pages past it.
//
// # Tunnels
//
// A client that cannot reach its home relay but can reach an entry relay
// receives through a tunnel:
//
//  1. client → entry: the usual hello, then Tunnel with the home relay's
//     descriptor, with no other request in flight and no subscription.
//  2. The entry relay checks the descriptor and dials the home relay like
//     a client (one of its transports, through transport/route), sending
//     TunnelHello instead of ClientHello. The home relay answers a Result
//     with request id 0: OK when it takes tunnels.
//  3. The entry relay answers the Tunnel OK (or CodeUnsupported when it
//     does not tunnel, CodeBadFrame for a bad descriptor, CodeBusy at its
//     tunnel cap, CodeInternal when the home relay is unreachable or
//     refused) and from the next byte on copies bytes both ways between
//     the client and the home relay until either side ends; then the
//     outer session ends.
//  4. Inside, the client runs TLS 1.3 (ALPN TunnelALPN) with the home
//     relay, which presents a self-signed certificate whose key is its
//     Ed25519 descriptor key; the client accepts exactly that key (no CA,
//     no name). Then a whole session, hello first, runs inside TLS.
//
// The entry relay learns that some client tunnels to that home relay and
// how many bytes pass, never the mailbox or the requests; the home relay
// sees the entry relay's address, never the client's.
//
// # No metadata
//
// Neither side ever logs, stores or puts into an error a remote address,
// a mailbox id, a key, a ref or an envelope. A Deliver frame whose request
// id answers no Fetch or Subscribe of the session is dropped by the client.
package relay
