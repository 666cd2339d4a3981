package h3

import (
	"crypto/tls"
	mrand "math/rand/v2"
	"net"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport/browser"
)

// The client's QUIC and HTTP/3 parameters are Chromium's wherever quic-go
// lets a client choose them: its Initial is decrypted by anyone on the
// path (RFC 9001, section 5.2), so these are visible to a censor. The
// values are those of the Chromium 156 captures in testdata (see
// testdata/README.md), where the package documentation also lists what
// still differs. The relay side keeps quic-go's defaults: it must look like
// a stock quic-go HTTP/3 server, not like a browser.
const (
	// chromeStreamWindow is Chromium's initial_max_stream_data_bidi_local,
	// _bidi_remote and _uni (6 MiB). It is also the most a stream's window
	// grows to, as quic-go's default.
	chromeStreamWindow = 6 << 20
	// chromeConnWindow is Chromium's initial_max_data (15 MiB), also the
	// most the connection's window grows to, as quic-go's default.
	chromeConnWindow = 15 << 20
	// chromeMaxBidiStreams and chromeMaxUniStreams are Chromium's
	// initial_max_streams_bidi and _uni.
	chromeMaxBidiStreams = 100
	chromeMaxUniStreams  = 103
	// chromeInitialPacketSize is the UDP payload of Chromium's Initial
	// datagrams over IPv4; over IPv6 they are 20 bytes shorter, so that
	// both fill the same IP packet size.
	chromeInitialPacketSize   = 1250
	chromeInitialPacketSizeV6 = chromeInitialPacketSize - 20
)

// Chromium's HTTP/3 SETTINGS (RFC 9114, section 7.2.4; RFC 9204, section 5;
// RFC 9297): QPACK_MAX_TABLE_CAPACITY 65536, MAX_FIELD_SECTION_SIZE
// 262144, QPACK_BLOCKED_STREAMS 100, H3_DATAGRAM 1 and one reserved
// (GREASE) setting with a random id and value. quic-go writes them in
// another order (MAX_FIELD_SECTION_SIZE and H3_DATAGRAM first, the rest in
// map order); SETTINGS travel encrypted, so only the relay sees them.
//
// Announcing a QPACK dynamic table is safe because the peer is always a
// relay, whose quic-go QPACK encoder never uses one; a server that did would
// make the connection fail, not decode wrongly.
const (
	settingQPACKMaxTableCapacity = 0x01
	settingQPACKBlockedStreams   = 0x07
	chromeQPACKMaxTableCapacity  = 65536
	chromeQPACKBlockedStreams    = 100
	chromeMaxFieldSectionSize    = 256 << 10
)

// clientQUICConfig is the QUIC configuration of a client connection to
// raddr.
func clientQUICConfig(raddr *net.UDPAddr) *quic.Config {
	size := uint16(chromeInitialPacketSize)
	if raddr.IP.To4() == nil {
		size = chromeInitialPacketSizeV6
	}
	return &quic.Config{
		HandshakeIdleTimeout:           HandshakeIdleTimeout,
		MaxIdleTimeout:                 MaxIdleTimeout,
		KeepAlivePeriod:                KeepAlivePeriod,
		InitialStreamReceiveWindow:     chromeStreamWindow,
		MaxStreamReceiveWindow:         chromeStreamWindow,
		InitialConnectionReceiveWindow: chromeConnWindow,
		MaxConnectionReceiveWindow:     chromeConnWindow,
		MaxIncomingStreams:             chromeMaxBidiStreams,
		MaxIncomingUniStreams:          chromeMaxUniStreams,
		InitialPacketSize:              size,
		EnableDatagrams:                true, // max_datagram_frame_size, as Chromium sends (quic-go: 16383, Chromium: 65536)
	}
}

// clientHTTP3 is the HTTP/3 client of one connection: Chromium's SETTINGS,
// with a fresh GREASE setting.
func clientHTTP3() *http3.Transport {
	return &http3.Transport{
		DisableCompression:     true,
		Logger:                 discardLogger,
		EnableDatagrams:        true,
		MaxResponseHeaderBytes: chromeMaxFieldSectionSize,
		AdditionalSettings: map[uint64]uint64{
			settingQPACKMaxTableCapacity: chromeQPACKMaxTableCapacity,
			settingQPACKBlockedStreams:   chromeQPACKBlockedStreams,
			greaseSettingID():            uint64(mrand.Uint32()),
		},
	}
}

// greaseSettingID returns a reserved setting id 0x1f*N + 0x21 (RFC 9114,
// section 7.2.4.1) with a random 32-bit N, as Chromium draws it.
func greaseSettingID() uint64 { return 0x1f*uint64(mrand.Uint32()) + 0x21 }

// clientCurves returns the browser profile's supported_groups that crypto/tls
// implements, in order (X25519MLKEM768, X25519, P-256, P-384 for Chromium
// 156): the first one and its X25519 fallback get key shares, as in Chromium.
func clientCurves() []tls.CurveID {
	var out []tls.CurveID
	for _, g := range browser.Current.Hello.SupportedGroups {
		switch id := tls.CurveID(g); id {
		case tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521:
			out = append(out, id)
		}
	}
	return out
}

// emptyConnIDs makes the client's source connection ID empty, as
// Chromium's: every session has a UDP socket of its own, so packets from
// the relay find their connection without one (RFC 9000, section 5.1).
type emptyConnIDs struct{}

func (emptyConnIDs) GenerateConnectionID() (quic.ConnectionID, error) {
	return quic.ConnectionIDFromBytes(nil), nil
}

func (emptyConnIDs) ConnectionIDLen() int { return 0 }
