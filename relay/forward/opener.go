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

	// replay remembers the first 16 bytes of SHA-256 of each stored
	// layer's HPKE encapsulation (fresh per layer; 128 bits is ample);
	// inflight holds those of layers opened whose envelope is not yet
	// stored or refused.
	mu       sync.Mutex
	replay   *envelope.ReplayCache
	inflight map[[envelope.IDSize]byte]struct{}
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
		inflight: map[[envelope.IDSize]byte]struct{}{},
	}, nil
}

// Open opens a layer and returns the send capability (possibly empty),
// the envelope inside, and done, which the caller must call once with
// whether the envelope was stored. It refuses, in this order: a malformed
// header (ErrMalformed), another relay (ErrWrongRelay), another epoch
// (ErrWrongEpoch), a layer that does not decrypt (ErrDecrypt) or whose
// plaintext is not a capability and an envelope (ErrMalformed), a layer
// stored before (ErrReplay), and a copy of a layer whose envelope is being
// stored meanwhile (ErrInFlight: try again later).
//
// A layer is remembered only once done(true) says its envelope was
// stored: an entry relay that sends a layer again after the store failed
// or refused it for now (a full mailbox, a write error, the link lost
// while the store wrote) gets it opened again, not ErrReplay, which it
// would take as delivered.
func (o *Opener) Open(layer []byte) (sendCap, env []byte, done func(stored bool), err error) {
	h, err := parseHeader(layer)
	if err != nil {
		return nil, nil, nil, err
	}
	if h.relay != o.relay {
		return nil, nil, nil, fmt.Errorf("%w: forward it to the relay named by Dest", ErrWrongRelay)
	}
	if h.epoch != o.epoch {
		return nil, nil, nil, fmt.Errorf("%w: epoch %d, this relay is in epoch %d", ErrWrongEpoch, h.epoch, o.epoch)
	}
	plain, err := o.id.OpenFrom(h.suite, layerInfo(o.relayKey, h.epoch), layer[:HeaderSize], h.sealed)
	if err != nil {
		return nil, nil, nil, ErrDecrypt
	}
	sendCap, env, err = parsePlain(plain)
	if err != nil {
		return nil, nil, nil, err
	}
	sum := sha256.Sum256(h.sealed[:encSize(h.suite)])
	k := [envelope.IDSize]byte(sum[:envelope.IDSize])
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.replay.Contains(k) {
		return nil, nil, nil, fmt.Errorf("%w: this layer was stored before; drop it", ErrReplay)
	}
	if _, ok := o.inflight[k]; ok {
		return nil, nil, nil, fmt.Errorf("%w: this layer is being stored; try again later", ErrInFlight)
	}
	o.inflight[k] = struct{}{}
	var once sync.Once
	done = func(stored bool) {
		once.Do(func() {
			o.mu.Lock()
			defer o.mu.Unlock()
			delete(o.inflight, k)
			if stored {
				o.replay.Check(k)
			}
		})
	}
	return sendCap, env, done, nil
}
