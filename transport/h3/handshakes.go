package h3

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
)

// handshakeKey is the context key, on a QUIC connection's context, of the
// function that gives its handshake slot back.
type handshakeKey struct{}

var errTooManyHandshakes = errors.New("too many QUIC handshakes in flight")

// handshakes counts QUIC connections from their first Initial packet until
// their handshake completes or they die, and decides when a new one must
// prove its source address first.
//
// Every Initial that parses makes quic-go create a connection (two
// goroutines and its buffers) before it can know whether the packet is more
// than random bytes from a spoofed address; such a connection lives until
// HandshakeIdleTimeout. So:
//
//   - above retryAbove connections in flight, quic-go answers an Initial
//     without a valid token with a Retry (RFC 9000, section 8.1.2), which
//     costs the server one stateless packet and no state; only a client
//     that receives packets at its source address comes back with the
//     token;
//   - at max connections in flight, even a client with a valid token is
//     refused (CONNECTION_REFUSED) until slots free up;
//   - one source whose address a Retry (or a token) proved holds at most
//     perSource slots: such a client could otherwise start handshakes and
//     let them time out until it held all max, and every new client were
//     refused. (An unproved address may be spoofed, so it is not counted
//     per source; such connections get slots only below retryAbove.)
type handshakes struct {
	inFlight   atomic.Int64
	retryAbove int64
	max        int64
	perSource  int // 0: no per-source cap

	key      [32]byte // for sourceKey, drawn at start
	mu       sync.Mutex
	verified map[[16]byte]int // slots per proved source, while it holds some
}

// newHandshakes returns the handshake limits of one listener.
func newHandshakes(max, retryAbove, perSource int) *handshakes {
	h := &handshakes{max: int64(max), retryAbove: int64(retryAbove), perSource: perSource, verified: make(map[[16]byte]int)}
	rand.Read(h.key[:])
	return h
}

// verify is quic.Transport.VerifySourceAddress: true means "send a Retry".
func (h *handshakes) verify(net.Addr) bool {
	return h.inFlight.Load() >= h.retryAbove
}

// connContext is quic.Transport.ConnContext: it takes a slot for a new
// connection or refuses it. The slot is given back when the connection's
// handshake completes (see handshakeDone) or when the connection dies.
// (Until 2026-12-05 it was given back when the HTTP/3 server accepted the
// connection, which on an early listener is as soon as the ClientHello is
// read: a client that sent ClientHellos and never completed a handshake
// was counted by no limit, a reviewer found, so Retry and the cap on
// handshakes never applied to real ClientHellos.)
func (h *handshakes) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	s := &slot{h: h}
	if info != nil && info.AddrVerified && h.perSource > 0 {
		k := sourceKey(h.key[:], info.RemoteAddr)
		h.mu.Lock()
		if h.verified[k] >= h.perSource {
			h.mu.Unlock()
			return nil, errTooManyHandshakes
		}
		h.verified[k]++
		h.mu.Unlock()
		s.src = &k
	}
	if h.inFlight.Add(1) > h.max {
		h.inFlight.Add(-1)
		s.releaseSource()
		return nil, errTooManyHandshakes
	}
	s.stop = context.AfterFunc(ctx, s.release) // the connection closed or its handshake failed
	return context.WithValue(ctx, handshakeKey{}, s), nil
}

// slot is the handshake slot of one connection.
type slot struct {
	h    *handshakes
	src  *[16]byte // its proved source, if counted per source
	once sync.Once
	stop func() bool // unregisters release from the connection's context
}

func (s *slot) release() {
	s.once.Do(func() {
		s.h.inFlight.Add(-1)
		s.releaseSource()
	})
}

// releaseSource gives the slot's per-source count back, if it has one.
func (s *slot) releaseSource() {
	if s.src == nil {
		return
	}
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.verified[*s.src]--; h.verified[*s.src] <= 0 {
		delete(h.verified, *s.src)
	}
}

// handshakeDone gives the handshake slot of c, whose handshake completed,
// back, and drops the watch on its context that would have given it back,
// so that an established connection holds nothing of it.
func handshakeDone(c *quic.Conn) { releaseSlot(c.Context()) }

// releaseSlot is handshakeDone for the connection context ctx.
func releaseSlot(ctx context.Context) {
	if s, ok := ctx.Value(handshakeKey{}).(*slot); ok {
		s.stop()
		s.release()
	}
}

// Labels of the keys derived from ListenConfig.Key.
const (
	labelStatelessReset = "postern h3 stateless reset key v1"
	labelTokenGenerator = "postern h3 address token key v1"
)

// deriveKey returns HMAC-SHA256(key, label): a 32-byte key for one use
// that reveals nothing about key and nothing about keys for other labels.
func deriveKey(key []byte, label string) [32]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}
