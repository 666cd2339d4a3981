// Package envelope seals and opens Postern's sealed-sender envelopes, and holds
// the identities and contact cards they are addressed with.
//
// Three calls cover normal use:
//
//	id, _ := envelope.NewIdentity()               // on the device, never registered
//	env, _ := envelope.Seal(card, id, msg, nil)   // to a contact card, from id (nil: anonymous)
//	opened, _ := envelope.Open(recipientID, env)  // sender key (or anonymous), payload, envelope id
//
// A relay calls only [PeekMailbox], which checks the size and the outer header
// without any cryptography and returns the recipient mailbox id.
//
// # Outer format (what a relay sees)
//
// Every envelope is exactly one bucket long: [Bucket4K], [Bucket16K] or
// [Bucket64K] bytes. Nothing but the header below is visible.
//
//	offset  size  field
//	0       1     version   = 1 (Version)
//	1       1     suite     = 1 X-Wing, 2 X25519 (Suite)
//	2       32    mailbox   recipient mailbox id
//	34      Nenc  enc       HPKE encapsulated key: 1120 bytes (X-Wing), 32 (X25519)
//	34+Nenc rest  ct        HPKE ciphertext of the inner plaintext, 16-byte tag last
//
// The HPKE context is RFC 9180 base mode with info = "postern envelope v1" ||
// version || suite, and the 34-byte header is the AEAD's additional data, so
// the header cannot be changed without Open failing.
//
// Suites (KEM, KDF, AEAD):
//
//	1  SuiteXWing    MLKEM768-X25519 (X-Wing), HKDF-SHA256, ChaCha20-Poly1305  (default)
//	2  SuiteX25519   DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305 (compact)
//
// # Inner plaintext (only the recipient sees it)
//
//	offset  size  field
//	0       1     flags     bit 0: authenticated sender; bit 1: fragment; others zero
//	1       16    id        envelope id, for replay detection: random, or
//	                        for a whole message the sender's message id
//	17      32    sender    sender's X25519 authentication public key (zero if anonymous)
//	49      32    tag       sender tag (zero if anonymous)
//	81      4     length    payload length, big endian
//	85      len   payload
//	...     rest  padding   zero bytes up to the bucket; checked on Open
//
// # Sender authentication (deniable)
//
// HPKE's auth mode does not exist for hybrid KEMs, so the sender is
// authenticated inside the encrypted payload. Let S be the sender's X25519
// authentication key pair and R the recipient's, published on its contact card.
//
//	dh   = X25519(s, R) = X25519(r, S)                 static-static secret
//	exp  = HPKE Export("postern sender auth v1", 32)   unique to this envelope
//	key  = HKDF-SHA256(ikm = dh || exp, salt = "", info = "postern sender key v1" || S || R)
//	tag  = HMAC-SHA256(key, "postern sender tag v1" || header || flags || id || S)
//
// Properties this gives:
//   - Only the holder of s (or the recipient, see below) can produce a tag
//     that verifies for sender S. A sender that puts someone else's S into the
//     sender field cannot compute dh and fails.
//   - The tag is bound to this envelope's HPKE context through exp, so it
//     cannot be lifted into another envelope; the AEAD binds the payload and
//     the header to the same context.
//   - Deniability: the recipient can compute the same tag for any envelope
//     it makes, so a tag proves nothing to a third party (like Signal's sealed
//     sender, unlike a signature).
//   - Relays see no sender information at all; the sender key travels inside
//     the ciphertext, which is protected by X-Wing against a future quantum
//     attacker who records traffic today (with the default suite).
//
// Properties it lacks, by design or for now:
//   - Key-compromise impersonation: whoever steals the recipient's X25519
//     authentication private key r can forge envelopes to that recipient that
//     appear to come from anybody. This is the price of deniability.
//   - Authentication is classical: a quantum attacker able to compute discrete
//     logarithms could later forge tags (not read content or sender).
//   - No forward secrecy against compromise of the recipient's KEM private
//     key: every envelope to a mailbox is sealed to the same long-term key.
//     Rotating keys and mailboxes bounds the exposure.
//   - Replays are detected by the recipient through the envelope id (see
//     [ReplayCache]); envelopes carry no timestamp.
//
// # Message ids
//
// Every message has a 16-byte id: a whole envelope's id is its message id,
// and the fragments of a longer message carry it in their payload (masked
// per bucket, see [SealMessage]). A sender may seal one message more than
// once, into a smaller bucket when a censor stalls the larger envelopes,
// not knowing whether the relay stored the first sealing before the
// connection froze; [Options.MessageID] gives every sealing the same id,
// [Opened.MessageID] returns it, and a recipient that records the message
// ids it took takes each message once.
//
// # Large payloads
//
// A payload longer than [MaxPayload] for the largest bucket is refused with an
// error matching [ErrPayloadTooLarge]. [SealMessage] splits a long message into
// fragments (flags bit 1) that a [Joiner] puts back together.
package envelope
