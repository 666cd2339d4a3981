package forward

import "errors"

// Errors returned by this package; every failure wraps one of them, so
// callers test with errors.Is. Messages never contain a mailbox id, a
// capability or a key.
var (
	// ErrMalformed: the bytes are not a forward layer (magic, suite, length
	// or plaintext layout wrong), or Seal was given something that is not a
	// send capability and an envelope.
	ErrMalformed = errors.New("forward: malformed layer")
	// ErrWrongRelay: the layer names another relay; forward it to the relay
	// Dest returns instead of opening it.
	ErrWrongRelay = errors.New("forward: layer is for another relay")
	// ErrWrongEpoch: the layer was sealed for another epoch of this relay;
	// the sender must fetch the relay's current descriptor and seal again.
	ErrWrongEpoch = errors.New("forward: layer sealed for another epoch")
	// ErrReplay: this layer's envelope was stored before; drop it.
	ErrReplay = errors.New("forward: replayed layer")
	// ErrInFlight: a copy of this layer is being stored meanwhile; send
	// it again later (the store may yet fail or refuse it).
	ErrInFlight = errors.New("forward: layer being stored")
	// ErrDecrypt: the layer names this relay and epoch but does not open:
	// it was modified, or sealed to a different envelope key.
	ErrDecrypt = errors.New("forward: cannot open layer (modified, or sealed to another key)")
	// ErrDescriptor: the home relay's descriptor cannot be sealed to.
	ErrDescriptor = errors.New("forward: unusable home relay descriptor")
)
