package forward

import (
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"sync"

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

	mu   sync.Mutex
	max  int                   // replay capacity
	seen map[[32]byte]struct{} // SHA-256 of the HPKE encapsulation
	ring [][32]byte            // insertion order, grows up to max
	next int                   // oldest entry once ring is full
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
		max:      replayCap,
		seen:     make(map[[32]byte]struct{}),
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

// remember records k and refuses it if it was recorded before and not yet
// evicted; once full it evicts the oldest entry.
func (o *Opener) remember(k [32]byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.seen[k]; ok {
		return fmt.Errorf("%w: this layer was already opened; drop it", ErrReplay)
	}
	if len(o.ring) < o.max {
		o.ring = append(o.ring, k)
	} else {
		delete(o.seen, o.ring[o.next])
		o.ring[o.next] = k
		o.next = (o.next + 1) % len(o.ring)
	}
	o.seen[k] = struct{}{}
	return nil
}
