// Package forward seals and opens the forward layer of a two-hop send
// (issue #10). A client that does not want its home relay to see its
// network address seals a Send (send capability and envelope) in a layer
// only the home relay can open, and hands the layer to any entry relay
// (relay FrameForward). The entry relay reads the destination with Dest,
// passes the layer on over a relay link, and learns nothing else; the home
// relay opens it with an Opener and stores the envelope as if the client had
// sent it directly.
//
//	layer, _ := forward.Seal(homeDescriptor, epoch, sendCap, env)  // client
//	dest, _ := forward.Dest(layer)                                 // entry relay
//	sendCap, env, _ := opener.Open(layer)                          // home relay
//
// # Layer layout
//
// All integers are big-endian.
//
//	offset  size  field
//	0       4     magic   "PFW1" (Magic)
//	4       1     suite   envelope suite of the home relay's envelope key:
//	                      1 X-Wing (default), 2 X25519
//	5       4     epoch   the home relay's forward epoch the layer is sealed for
//	9       32    relay   SHA-256 of the home relay's Ed25519 descriptor key
//	41      rest  sealed  enc || ct, see envelope.SealTo: enc is 1120 bytes
//	                      (X-Wing) or 32 (X25519), ct ends in a 16-byte tag
//
// sealed is HPKE base mode (envelope.SealTo) to the home descriptor's
// EnvelopeKey with
//
//	info = "postern forward layer v1" || relay key (32 B Ed25519) || epoch (u32)
//	aad  = the 41 header bytes
//
// of the plaintext
//
//	offset  size  field
//	0       1     caplen  0..MaxCapLen
//	1       64    cap     send capability in the first caplen bytes, then
//	                      zero bytes (checked on Open)
//	65      rest  env     one whole envelope (4, 16 or 64 KiB)
//
// The capability field has a fixed size so that a layer's length depends
// only on the suite and the envelope's bucket, not on whether the recipient's
// mailbox has a send capability. A layer is therefore exactly
// HeaderSize + enc + 16 + 1 + MaxCapLen + bucket bytes, at most MaxLayer;
// Dest and Open refuse any other length.
//
// # Binding
//
// The header is the AEAD's additional data and the relay key and epoch are
// in the HPKE info, so a layer opens only at the relay whose key it names and
// only in its epoch: rewriting the relay hash or the epoch (to push a layer
// to another relay sharing the envelope key, or into a later epoch) makes
// the AEAD fail. An Opener checks the header's relay and epoch first and
// answers ErrWrongRelay or ErrWrongEpoch without any cryptography.
//
// # Who sees what
//
//   - The entry relay sees the client's connection, the destination relay
//     hash, the epoch, the suite and the length (hence the envelope's
//     bucket). It does not see the mailbox, the capability or the envelope
//     header, and cannot change any of them without the layer failing.
//   - The home relay sees what a direct Send shows (capability, envelope
//     header with the mailbox, bucket) and which entry relay the layer came
//     through, but not the client's address.
//   - An observer of the link between the two sees what its transport
//     encryption leaves visible, at most the layer's length and timing.
//
// # Replays
//
// An entry relay, or anyone who recorded a layer, can hand it to the home
// relay again. An Opener remembers SHA-256 of the HPKE encapsulation of the
// last replayCap layers whose envelope was stored and refuses a repeat with
// ErrReplay; the encapsulation is fresh for every Seal. A layer is
// remembered only once its envelope is stored: an entry relay takes
// ErrReplay as delivered, so a layer remembered when it opened, whose
// store then failed (a full mailbox, a write error, the link lost), was
// dropped by the retry that would have stored it. A copy that comes while
// the first is being stored is ErrInFlight, for the entry relay to retry. The cache is in memory and bounded:
// after a restart, or once a layer has been evicted, a replayed layer opens
// again, and it is the store's exact-duplicate dedupe of envelopes that keeps
// it from being stored twice. Rotating the epoch makes all older layers
// unopenable (ErrWrongEpoch).
package forward
