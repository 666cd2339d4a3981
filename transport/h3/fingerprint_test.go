package h3_test

import (
	"fmt"
	"slices"
	"strings"

	"github.com/quic-go/quic-go/quicvarint"

	"github.com/postern/postern/transport/censortest"
)

// fingerprint is what a censor, and for SETTINGS the server, learns from a
// client's first QUIC flight.
type fingerprint struct {
	JA4        string // QUIC JA4: "q" instead of "t"
	Datagrams  []int  // UDP payload sizes of the first flight
	Packets    int    // Initial packets in it
	DCIDLen    int
	SCIDLen    int
	FirstPN    uint64 // packet number of the first Initial
	ALPN       []string
	ServerName string
	Groups     []uint16 // supported_groups, GREASE dropped
	KeyShares  []uint16 // key_share groups, GREASE dropped
	Extensions []uint16 // extension types in wire order, GREASE dropped
	Params     []param  // transport parameters in wire order
	Settings   []param  // HTTP/3 SETTINGS in wire order
	ExtBytes   int      // bytes of all extensions, headers included
}

// param is a transport parameter or a SETTINGS entry. Num is its value as
// a varint when the whole value is one (or the value itself for SETTINGS).
type param struct {
	ID    uint64
	Raw   []byte
	Num   uint64
	IsNum bool
}

// extQUICTransportParams is the quic_transport_parameters extension (RFC 9001).
const extQUICTransportParams = 0x39

// decodeFlight decodes a recorded flight: its first datagrams, as many as
// hold the whole ClientHello.
func decodeFlight(f flight) (*fingerprint, error) {
	first, err := firstFlight(f.Initial)
	if err != nil {
		return nil, err
	}
	fp := &fingerprint{}
	for i, d := range first {
		fp.Datagrams = append(fp.Datagrams, len(d))
		ps, err := censortest.ParseQUICInitials(d)
		if err != nil {
			return nil, fmt.Errorf("datagram %d: %w", i, err)
		}
		if i == 0 {
			fp.DCIDLen, fp.SCIDLen, fp.FirstPN = len(ps[0].DCID), len(ps[0].SCID), ps[0].PacketNumber
		}
		fp.Packets += len(ps)
	}
	h, err := censortest.QUICClientHello(first...)
	if err != nil {
		return nil, err
	}
	fp.JA4 = "q" + censortest.JA4(h)[1:]
	fp.ALPN, fp.ServerName = h.ALPN, h.ServerName
	fp.Groups = withoutGREASE(h.SupportedGroups)
	for _, ks := range h.KeyShares {
		fp.KeyShares = append(fp.KeyShares, ks.Group)
	}
	fp.KeyShares = withoutGREASE(fp.KeyShares)
	fp.Extensions = h.ExtensionTypes(false)
	for _, e := range h.Extensions {
		fp.ExtBytes += 4 + len(e.Data)
	}
	tp, ok := h.Extension(extQUICTransportParams)
	if !ok {
		return nil, fmt.Errorf("no quic_transport_parameters in the ClientHello")
	}
	if fp.Params, err = decodeParams(tp, false); err != nil {
		return nil, fmt.Errorf("transport parameters: %w", err)
	}
	if fp.Settings, err = decodeParams(f.Settings, true); err != nil {
		return nil, fmt.Errorf("SETTINGS: %w", err)
	}
	return fp, nil
}

// firstFlight is the shortest prefix of ds that holds a whole ClientHello.
func firstFlight(ds [][]byte) ([][]byte, error) {
	var err error
	for n := 1; n <= len(ds); n++ {
		if _, err = censortest.QUICClientHello(ds[:n]...); err == nil {
			return ds[:n], nil
		}
	}
	return nil, fmt.Errorf("no ClientHello in %d datagrams: %v", len(ds), err)
}

func withoutGREASE(v []uint16) []uint16 {
	return slices.DeleteFunc(slices.Clone(v), censortest.IsGREASE)
}

// decodeParams reads transport parameters (RFC 9000, section 18: id,
// length, value) or, with settings, SETTINGS entries (RFC 9114, section
// 7.2.4: id, value).
func decodeParams(b []byte, settings bool) ([]param, error) {
	var out []param
	for len(b) > 0 {
		id, n, err := quicvarint.Parse(b)
		if err != nil {
			return nil, err
		}
		b = b[n:]
		v, n, err := quicvarint.Parse(b)
		if err != nil {
			return nil, err
		}
		b = b[n:]
		if settings {
			out = append(out, param{ID: id, Num: v, IsNum: true})
			continue
		}
		if v > uint64(len(b)) {
			return nil, fmt.Errorf("parameter %#x: %d bytes, %d left", id, v, len(b))
		}
		p := param{ID: id, Raw: b[:v]}
		if x, n, err := quicvarint.Parse(p.Raw); err == nil && n == len(p.Raw) && numericParams[id] {
			p.Num, p.IsNum = x, true
		}
		out = append(out, p)
		b = b[v:]
	}
	return out, nil
}

// Transport parameter names (RFC 9000 section 18.2, RFC 9221, RFC 9368,
// and Chromium's own).
var paramNames = map[uint64]string{
	0x01: "max_idle_timeout", 0x03: "max_udp_payload_size", 0x04: "initial_max_data",
	0x05: "initial_max_stream_data_bidi_local", 0x06: "initial_max_stream_data_bidi_remote",
	0x07: "initial_max_stream_data_uni", 0x08: "initial_max_streams_bidi",
	0x09: "initial_max_streams_uni", 0x0a: "ack_delay_exponent", 0x0b: "max_ack_delay",
	0x0c: "disable_active_migration", 0x0e: "active_connection_id_limit",
	0x0f: "initial_source_connection_id", 0x11: "version_information",
	0x20: "max_datagram_frame_size", 0x2ab2: "grease_quic_bit", 0x17f7586d2cb571: "reset_stream_at",
	0x3128: "google_connection_options", 0x4752: "google_version",
}

// numericParams are the transport parameters whose value is one varint.
var numericParams = map[uint64]bool{0x01: true, 0x03: true, 0x04: true, 0x05: true, 0x06: true,
	0x07: true, 0x08: true, 0x09: true, 0x0a: true, 0x0b: true, 0x0e: true, 0x20: true}

// SETTINGS names (RFC 9114 section 7.2.4.1, RFC 9204, RFC 9297, RFC 9220).
var settingNames = map[uint64]string{
	0x01: "QPACK_MAX_TABLE_CAPACITY", 0x06: "MAX_FIELD_SECTION_SIZE",
	0x07: "QPACK_BLOCKED_STREAMS", 0x08: "ENABLE_CONNECT_PROTOCOL", 0x33: "H3_DATAGRAM",
}

// isReservedParam reports a GREASE transport parameter or SETTINGS id:
// 31*N + 27 (RFC 9000 section 18.1) and 0x1f*N + 0x21 (RFC 9114 section 7.2.4.1).
func isReservedParam(id uint64, settings bool) bool {
	if settings {
		return id >= 0x21 && (id-0x21)%0x1f == 0
	}
	return id >= 27 && (id-27)%31 == 0
}

// String shows a parameter list as "name=value" entries in wire order.
func paramString(ps []param, settings bool) string {
	names := paramNames
	if settings {
		names = settingNames
	}
	var parts []string
	for _, p := range ps {
		name, ok := names[p.ID]
		switch {
		case isReservedParam(p.ID, settings):
			name = "GREASE"
		case !ok:
			name = fmt.Sprintf("%#x", p.ID)
		}
		switch {
		case p.IsNum:
			parts = append(parts, fmt.Sprintf("%s=%d", name, p.Num))
		case len(p.Raw) == 0:
			parts = append(parts, name)
		default:
			parts = append(parts, fmt.Sprintf("%s=%x", name, p.Raw))
		}
	}
	return strings.Join(parts, " ")
}

// byID returns the parameters that are no GREASE, by id.
func byID(ps []param, settings bool) map[uint64]param {
	m := make(map[uint64]param)
	for _, p := range ps {
		if !isReservedParam(p.ID, settings) {
			m[p.ID] = p
		}
	}
	return m
}
