package forward

import (
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"

	"github.com/postern/postern/envelope"
)

// DefaultReplayCapacity is the replay cache size NewOpener uses for a
// capacity below 1: 65536 layers, a few MiB once full. Memory grows with
// use, not with the capacity asked for.
const DefaultReplayCapacity = 1 << 16

// Opener opens the layers addressed to one relay in one epoch and drops
// replays. Use NewOpener; it is safe for concurrent use. To accept two
// epochs during a rotation, run two Openers and pick by ErrWrongEpoch.
type Opener struct {
	id       *envelope.Identity
	relayKey ed25519.PublicKey
	relay    [32]byte
	epoch    uint32

	// replay remembers the first 16 bytes of SHA-256 of each opened
	// layer's HPKE encapsulation (fresh per layer; 128 bits is ample).
	replay *envelope.ReplayCache
}

// NewOpener returns an Opener for the relay with Ed25519 key relayKey whose
// descriptor publishes id's envelope key (either suite), in epoch epoch,
// remembering the last replayCap layers (DefaultReplayCapacity if below 1).
func NewOpener(id *envelope.Identity, relayKey ed25519.PublicKey, epoch uint32, replayCap int) (*Opener, error) {
	if id == nil {
		return nil, fmt.Errorf("forward: NewOpener: no envelope identity")
	}
	if len(relayKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("forward: NewOpener: relay key is %d bytes, want %d", len(relayKey), ed25519.PublicKeySize)
	}
	if replayCap < 1 {
		replayCap = DefaultReplayCapacity
	}
	key := append(ed25519.PublicKey(nil), relayKey...)
	return &Opener{
		id:       id,
		relayKey: key,
		relay:    RelayHash(key),
		epoch:    epoch,
		replay:   envelope.NewReplayCache(replayCap),
	}, nil
}

// Open opens a layer and returns the send capability (possibly empty) and
// the envelope inside. It refuses, in this order: a malformed header
// (ErrMalformed), another relay (ErrWrongRelay), another epoch
// (ErrWrongEpoch), a layer that does not decrypt (ErrDecrypt) or whose
// plaintext is not a capability and an envelope (ErrMalformed), and a layer
// opened before (ErrReplay). Only a layer that opens is remembered.
func (o *Opener) Open(layer []byte) (sendCap, env []byte, err error) {
	h, err := parseHeader(layer)
	if err != nil {
		return nil, nil, err
	}
	if h.relay != o.relay {
		return nil, nil, fmt.Errorf("%w: forward it to the relay named by Dest", ErrWrongRelay)
	}
	if h.epoch != o.epoch {
		return nil, nil, fmt.Errorf("%w: epoch %d, this relay is in epoch %d", ErrWrongEpoch, h.epoch, o.epoch)
	}
	plain, err := o.id.OpenFrom(h.suite, layerInfo(o.relayKey, h.epoch), layer[:HeaderSize], h.sealed)
	if err != nil {
		return nil, nil, ErrDecrypt
	}
	sendCap, env, err = parsePlain(plain)
	if err != nil {
		return nil, nil, err
	}
	if err := o.remember(sha256.Sum256(h.sealed[:encSize(h.suite)])); err != nil {
		return nil, nil, err
	}
	return sendCap, env, nil
}

// remember records an encapsulation hash and refuses one recorded before
// and not yet evicted (the oldest goes first once the cache is full).
func (o *Opener) remember(k [32]byte) error {
	if o.replay.Check([envelope.IDSize]byte(k[:envelope.IDSize])) != nil {
		return fmt.Errorf("%w: this layer was already opened; drop it", ErrReplay)
	}
	return nil
}
