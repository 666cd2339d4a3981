package https

import (
	"crypto/sha256"
	"encoding/hex"

	utls "github.com/refraction-networking/utls"
	"golang.org/x/crypto/cryptobyte"

	"github.com/postern/postern/transport"
)

// memorySessions is the client's session cache for endpoints without
// their own (Endpoint.Sessions): process-wide, like a browser's, and keyed
// per relay endpoint.
var memorySessions = transport.NewSessionMemory(0)

// sessionKey names ep's sessions in a cache: a hash of what identifies the
// relay behind it (address, TLS name and pinned key), never the address
// itself.
func sessionKey(ep transport.Endpoint) string {
	h := sha256.New()
	for _, f := range []string{"postern tls session v1", ep.Addr, ep.SNI, string(ep.CertSHA256)} {
		h.Write([]byte{byte(len(f) >> 8), byte(len(f))})
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sessionCache adapts a transport.SessionCache to utls for the one
// endpoint of one connection: utls's own key (the server name) is
// ignored, so relays that share a name do not share sessions. A session
// is taken when the ClientHello is built, so each ticket is offered once,
// as Chromium does with TLS 1.3 tickets.
type sessionCache struct {
	c   transport.SessionCache
	key string
}

// newSessionCache returns the utls cache of ep's connections.
func newSessionCache(ep transport.Endpoint) utls.ClientSessionCache {
	c := ep.Sessions
	if c == nil {
		c = memorySessions
	}
	return sessionCache{c: c, key: sessionKey(ep)}
}

func (s sessionCache) Get(string) (*utls.ClientSessionState, bool) {
	b := s.c.Take(s.key)
	if b == nil {
		return nil, false
	}
	cs, err := decodeSession(b)
	if err != nil {
		return nil, false
	}
	return cs, true
}

func (s sessionCache) Put(_ string, cs *utls.ClientSessionState) {
	if cs == nil {
		s.c.Put(s.key, nil)
		return
	}
	if b, err := encodeSession(cs); err == nil {
		s.c.Put(s.key, b)
	}
}

// encodeSession serialises a client session:
//
//	ticket  uint16 length-prefixed: the server's opaque ticket
//	state   the rest: utls.SessionState.Bytes (secret, suite, times,
//	        certificates)
func encodeSession(cs *utls.ClientSessionState) ([]byte, error) {
	ticket, state, err := cs.ResumptionState()
	if err != nil || state == nil {
		return nil, errNoSession
	}
	sb, err := state.Bytes()
	if err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(ticket) })
	b.AddBytes(sb)
	return b.Bytes()
}

// decodeSession undoes encodeSession.
func decodeSession(b []byte) (*utls.ClientSessionState, error) {
	s := cryptobyte.String(b)
	var ticket cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&ticket) || len(ticket) == 0 {
		return nil, errNoSession
	}
	state, err := utls.ParseSessionState(s)
	if err != nil {
		return nil, err
	}
	return utls.NewResumptionState(append([]byte(nil), ticket...), state)
}
