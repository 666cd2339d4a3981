package envelope

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync"
)

// Fragments. A message longer than one envelope holds is split by
// SealMessage into envelopes with the fragment flag set, whose payload is
//
//	msgid  16 bytes  random, the same in every fragment of a message
//	index   2 bytes  big endian, 0-based
//	count   2 bytes  big endian, number of fragments, 2..MaxFragments
//	data    rest
//
// and put back together by a Joiner.
//
// The message id on the wire is the message's id (Options.MessageID, else
// random) XOR a mask of the bucket: zero for Bucket64K, the first 16 bytes
// of SHA-256("postern message id mask v1" || bucket, 4 bytes big endian)
// for the smaller buckets. One message sealed again into another bucket
// (a sender does it when a censor stalls its large envelopes) thus carries
// another id on the wire in each bucket, and a reader that groups fragments
// by that id alone, as Joiner does and every reader before the mask did,
// keeps the sealings apart instead of mixing their fragments; Open unmasks
// it into Opened.MessageID, the same for every sealing.
const (
	fragmentHeader = 16 + 2 + 2
	// MaxFragments bounds how many envelopes one message may span. It is
	// below the relay's push window (relay.MaxUnacked), so a recipient that
	// holds a message's fragments unacked until it is complete can always
	// receive all of them.
	MaxFragments = 128
	// MaxMessageSize is the largest message SealMessage splits: 7.75 MiB,
	// which MaxFragments fragments of the 64 KiB bucket hold in either suite.
	MaxMessageSize = 8<<20 - 256<<10
)

// SealMessage seals msg as one envelope if it fits the largest bucket (or
// opts.Bucket), and otherwise as several fragment envelopes that a Joiner on
// the recipient's side reassembles. The envelopes may be sent in any order.
func SealMessage(to *Card, from *Identity, msg []byte, opts *Options) ([][]byte, error) {
	if len(msg) > MaxMessageSize {
		return nil, &TooLargeError{Size: len(msg), Max: MaxMessageSize}
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	s, _, err := pickSuiteBucket(to, 0, &o)
	if err != nil {
		return nil, err
	}
	bucket := o.Bucket
	if bucket == 0 {
		bucket = Bucket64K
	}
	if len(msg) <= MaxPayload(s, bucket) {
		env, err := Seal(to, from, msg, opts)
		if err != nil {
			return nil, err
		}
		return [][]byte{env}, nil
	}
	chunk := MaxPayload(s, bucket) - fragmentHeader
	count := (len(msg) + chunk - 1) / chunk
	if count > MaxFragments {
		return nil, &TooLargeError{Size: len(msg), Max: MaxFragments * chunk}
	}
	msgID := o.MessageID
	if msgID == ([IDSize]byte{}) {
		rand.Read(msgID[:])
	}
	msgID = maskMessageID(msgID, bucket)
	// Each fragment is an envelope of its own, with a random envelope id.
	o.Suite, o.Bucket, o.MessageID = s, bucket, [IDSize]byte{}
	out := make([][]byte, 0, count)
	for i := 0; i < count; i++ {
		part := msg[i*chunk : min(len(msg), (i+1)*chunk)]
		p := make([]byte, 0, fragmentHeader+len(part))
		p = append(p, msgID[:]...)
		p = binary.BigEndian.AppendUint16(p, uint16(i))
		p = binary.BigEndian.AppendUint16(p, uint16(count))
		p = append(p, part...)
		env, err := seal(to, from, p, flagFragment, &o)
		if err != nil {
			return nil, err
		}
		out = append(out, env)
	}
	return out, nil
}

// messageIDMasks are the masks of the fragment message ids by bucket
// (see above); the 64 KiB bucket's is zero.
var messageIDMasks = func() map[int][IDSize]byte {
	m := map[int][IDSize]byte{Bucket64K: {}}
	for _, b := range []int{Bucket4K, Bucket16K} {
		h := sha256.Sum256(binary.BigEndian.AppendUint32([]byte("postern message id mask v1"), uint32(b)))
		m[b] = [IDSize]byte(h[:IDSize])
	}
	return m
}()

// maskMessageID masks a message id for fragments of bucket, or unmasks
// one taken from them (the mask is its own inverse).
func maskMessageID(id [IDSize]byte, bucket int) [IDSize]byte {
	mask := messageIDMasks[bucket]
	for i := range id {
		id[i] ^= mask[i]
	}
	return id
}

// Joiner reassembles messages from opened envelopes. It keeps at most
// MaxPending incomplete messages, dropping the oldest beyond that. The zero
// value is ready to use; it is safe for concurrent use.
type Joiner struct {
	// MaxPending bounds incomplete messages kept; 0 means 64.
	MaxPending int

	mu      sync.Mutex
	pending map[string]*partial
	order   []string
}

type partial struct {
	count int
	parts map[int][]byte
	size  int
}

// Add takes an opened envelope. For a whole (non-fragment) envelope it
// returns its payload at once. For a fragment it returns done=false until
// the last fragment of its message arrives, then the whole message.
// Fragments are grouped per sender (anonymous ones together) and message id.
func (j *Joiner) Add(o *Opened) (msg []byte, done bool, err error) {
	if !o.Fragment {
		return o.Payload, true, nil
	}
	p := o.Payload
	if len(p) < fragmentHeader {
		return nil, false, fmt.Errorf("%w: short fragment", ErrFragment)
	}
	idx := int(binary.BigEndian.Uint16(p[16:18]))
	count := int(binary.BigEndian.Uint16(p[18:20]))
	if count < 2 || count > MaxFragments || idx >= count {
		return nil, false, fmt.Errorf("%w: fragment %d of %d", ErrFragment, idx, count)
	}
	key := fragmentKey(o)
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.pending == nil {
		j.pending = make(map[string]*partial)
	}
	pt := j.pending[key]
	if pt == nil {
		max := j.MaxPending
		if max <= 0 {
			max = 64
		}
		for len(j.order) >= max {
			delete(j.pending, j.order[0])
			j.order = j.order[1:]
		}
		pt = &partial{count: count, parts: make(map[int][]byte)}
		j.pending[key] = pt
		j.order = append(j.order, key)
	}
	if pt.count != count {
		return nil, false, fmt.Errorf("%w: fragment count changed from %d to %d", ErrFragment, pt.count, count)
	}
	data := p[fragmentHeader:]
	if _, dup := pt.parts[idx]; dup {
		return nil, false, nil
	}
	if pt.size+len(data) > MaxMessageSize {
		j.dropLocked(key)
		return nil, false, fmt.Errorf("%w: message larger than %d bytes", ErrFragment, MaxMessageSize)
	}
	pt.parts[idx] = append([]byte(nil), data...)
	pt.size += len(data)
	if len(pt.parts) < pt.count {
		return nil, false, nil
	}
	var b bytes.Buffer
	b.Grow(pt.size)
	for i := 0; i < pt.count; i++ {
		b.Write(pt.parts[i])
	}
	j.dropLocked(key)
	return b.Bytes(), true, nil
}

// Forget drops what is kept of the incomplete message that fragment o
// belongs to (its sender and message id; the payload needs only the
// message id), if anything is: its message was had another way.
func (j *Joiner) Forget(o *Opened) {
	if !o.Fragment || len(o.Payload) < 16 {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.dropLocked(fragmentKey(o))
}

// fragmentKey names the message of fragment o among those kept: its
// sender (anonymous ones together) and message id.
func fragmentKey(o *Opened) string { return string(o.Sender) + "|" + string(o.Payload[:16]) }

func (j *Joiner) dropLocked(key string) {
	delete(j.pending, key)
	for i, k := range j.order {
		if k == key {
			j.order = append(j.order[:i], j.order[i+1:]...)
			break
		}
	}
}
