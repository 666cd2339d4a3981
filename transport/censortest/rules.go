package censortest

import (
	"math"
	"math/rand/v2"
	"strings"
	"time"
)

// Direction is one way through a middlebox.
type Direction int

const (
	ClientToServer Direction = iota
	ServerToClient
)

// action is a rule's verdict. Verdicts are ordered: when rules are
// combined with [All], the largest wins.
type action int

const (
	actForward    action = iota
	actMuteServer        // forward the client, drop everything from the server
	actHold              // keep the connection (or datagram) silent: drop both ways
	actBlockFlow         // UDP: drop the flow both ways for QUICBlockDuration
	actReset             // close the connection with an RST
)

const unlimited = math.MaxInt64

// A Rule is what a middlebox does to the traffic through it. Rules are
// values made by this package; combine them with [All]. One Rule type
// serves both [Middlebox] (TCP) and [UDPMiddlebox]: each uses the parts
// that concern it, so a TCP-only rule passes UDP and the other way round.
type Rule interface {
	// onConnect decides on a new TCP connection before the target is dialed.
	onConnect() action
	// inspects says whether onFirstFlight wants the client's first flight.
	inspects() bool
	// onFirstFlight decides on the client's first TCP flight.
	onFirstFlight(f *firstFlight) action
	// budget is how many more bytes may pass in dir of a TCP connection
	// once sent have, and other have passed the other way.
	budget(dir Direction, sent, other int64) int64
	// resets says whether a TCP connection whose budget runs out at this
	// point (the arguments are budget's) is reset, both sides getting an
	// RST, rather than left silent.
	resets(dir Direction, sent, other int64) bool
	// rate is the most bytes per second a flow may carry in dir, 0 for
	// no limit.
	rate(dir Direction) int64
	// hostRate is the most bytes per second all of a TCP middlebox's
	// connections together may carry in dir, 0 for no limit.
	hostRate(dir Direction) int64
	// delay is how long a TCP connection's bytes, or a UDP flow's
	// datagrams, take through the middlebox in each direction, on top of
	// the rest.
	delay() time.Duration
	// inspectsQUIC says whether onDatagram wants the flow's ClientHello
	// taken from its first QUIC Initial packets.
	inspectsQUIC() bool
	// onDatagram decides on one UDP datagram: actForward, actHold (drop
	// it) or actBlockFlow.
	onDatagram(d *datagram) action
	// stalls says whether TCP connections carry nothing until another
	// rule is set (Stall).
	stalls() bool
}

// passRule lets everything through; the other rules embed it.
type passRule struct{}

func (passRule) onConnect() action                    { return actForward }
func (passRule) inspects() bool                       { return false }
func (passRule) onFirstFlight(*firstFlight) action    { return actForward }
func (passRule) budget(Direction, int64, int64) int64 { return unlimited }
func (passRule) resets(Direction, int64, int64) bool  { return false }
func (passRule) rate(Direction) int64                 { return 0 }
func (passRule) hostRate(Direction) int64             { return 0 }
func (passRule) delay() time.Duration                 { return 0 }
func (passRule) inspectsQUIC() bool                   { return false }
func (passRule) onDatagram(*datagram) action          { return actForward }
func (passRule) stalls() bool                         { return false }

type blackholeRule struct{ passRule }

func (blackholeRule) onConnect() action                    { return actHold }
func (blackholeRule) budget(Direction, int64, int64) int64 { return 0 }
func (blackholeRule) onDatagram(*datagram) action          { return actHold }

type stallRule struct{ passRule }

func (stallRule) onDatagram(*datagram) action { return actHold }
func (stallRule) stalls() bool                { return true }

type resetRule struct{ passRule }

func (resetRule) onConnect() action { return actReset }

type dropUDPRule struct{ passRule }

func (dropUDPRule) onDatagram(*datagram) action { return actHold }

var (
	// Pass forwards everything: an uncensored network.
	Pass Rule = passRule{}

	// Blackhole accepts and then drops every packet both ways, like the
	// GFW's null routing of an address found by active probing. On UDP it
	// drops every datagram.
	Blackhole Rule = blackholeRule{}

	// Stall holds the bytes of every TCP connection, both ways, until
	// another rule is set, and then lets them go on under it, none lost:
	// a path that stops carrying for a while (a handover, a link down
	// and up) and keeps its connections. A pump stalled does not read
	// on, so the sender's buffers fill as they would. What was already
	// on its way out when it was set still goes (a piece a throttle was
	// sleeping on, chunks in a Latency's line), and a connection's end,
	// read as it was set, is passed on. With [All], any rule that
	// stalls stalls the lot. On UDP it drops every datagram, as such a
	// path loses them.
	Stall Rule = stallRule{}

	// ResetOnConnect closes every new connection with an RST at once, like
	// the RST injection the GFW and Iran's filter use on blocked IP:ports.
	ResetOnConnect Rule = resetRule{}

	// DropUDP drops every datagram both ways and leaves TCP alone: the
	// blanket UDP blocking (or QUIC blocking by port) of Iran, Russia's
	// TSPU and many corporate networks.
	DropUDP Rule = dropUDPRule{}

	// DropServerHello forwards a connection whose first flight is a
	// ClientHello, but never delivers anything the server sends on it:
	// Iran's 2025 filtering of TLS to foreign addresses, where the
	// ClientHello passes and the ServerHello is dropped. Other connections
	// pass.
	DropServerHello Rule = dropServerHelloRule{}
)

// isBlocked reports whether h names blocked, compared case-insensitively.
func isBlocked(h *ClientHello, blocked string) bool {
	return h != nil && h.HasServerName && strings.EqualFold(h.ServerName, blocked)
}

type sniRule struct {
	passRule
	name    string
	verdict action
}

// ResetOnSNI resets a connection whose first TLS flight is a ClientHello for
// name (compared case-insensitively), like the GFW's SNI filtering of TLS;
// anything else, TLS or not, is forwarded intact.
func ResetOnSNI(name string) Rule { return sniRule{name: name, verdict: actReset} }

// DropOnSNI silently drops everything, both ways, after a ClientHello for
// name (compared case-insensitively); the connection stays open and no RST
// is sent. This is the GFW's drop-based SNI blocking (of ESNI in 2020 and
// of many names since) and Russia's TSPU on blocked names. Anything else is
// forwarded intact.
func DropOnSNI(name string) Rule { return sniRule{name: name, verdict: actHold} }

func (sniRule) inspects() bool { return true }

func (r sniRule) onFirstFlight(f *firstFlight) action {
	if isBlocked(f.hello, r.name) {
		return r.verdict
	}
	return actForward
}

type dropServerHelloRule struct{ passRule }

func (dropServerHelloRule) inspects() bool { return true }

func (dropServerHelloRule) onFirstFlight(f *firstFlight) action {
	if f.hello != nil {
		return actMuteServer
	}
	return actForward
}

type freezeRule struct {
	passRule
	limit int64
}

// FreezeAfter forwards n bytes in each direction, counted separately from
// the start of the connection (n <= 0 means [DefaultFreezeLimit]), then
// silently drops the rest while the connection stays open: Russia's TSPU
// freeze of TLS connections to foreign hosting after 15-20 KB
// (XTLS/Xray-core#4846, net4people/bbs#490). It does not act on UDP.
func FreezeAfter(n int) Rule {
	if n <= 0 {
		n = DefaultFreezeLimit
	}
	return freezeRule{limit: int64(n)}
}

func (r freezeRule) budget(_ Direction, sent, _ int64) int64 { return max(r.limit-sent, 0) }

type resetAfterRule struct{ freezeRule }

// ResetAfter forwards n bytes in each direction, counted separately from
// the start of the connection (n <= 0 means [DefaultFreezeLimit]), then
// resets the connection both ways: a censor that injects RSTs into a flow
// once it has seen enough of it to judge it, as the GFW does to flows it
// classifies as circumvention. It does not act on UDP.
func ResetAfter(n int) Rule {
	if n <= 0 {
		n = DefaultFreezeLimit
	}
	return resetAfterRule{freezeRule{limit: int64(n)}}
}

func (resetAfterRule) resets(Direction, int64, int64) bool { return true }

type dropAnswersRule struct {
	passRule
	after int64
}

// DropAnswersAfter forwards everything a client sends, and drops
// everything the server sends on a TCP connection once the client has
// sent n bytes on it (n <= 0 means at once), while the connection stays
// open: the server got the request, its answer never comes back. It
// stands for any loss of an answer after its request went through (a
// censor dropping a flow's downstream once it has judged the upstream, a
// link that dies at that moment), which a sender must not take for a
// request that was lost. It does not act on UDP.
func DropAnswersAfter(n int) Rule { return dropAnswersRule{after: int64(max(n, 0))} }

func (r dropAnswersRule) budget(dir Direction, _, other int64) int64 {
	if dir == ServerToClient && other >= r.after {
		return 0
	}
	return unlimited
}

// throttleRule is Throttle (each flow) or, with host, ThrottleHost (all
// of them together); with down, ThrottleDown.
// throttleRule is Throttle, ThrottleDown, ThrottleHost and
// ThrottleHostDown.
type throttleRule struct {
	passRule
	bytesPerSecond int64
	host, down     bool
}

// Throttle limits every flow to bytesPerSecond in each direction with a
// token bucket holding one second's worth (at least [MinThrottleBurst]):
// the per-flow throttling of Russia's TSPU (Twitter in 2021, YouTube in
// 2024) and Iran's. On TCP the middlebox delays bytes, as a shaper's queue
// does; on UDP it drops the datagrams over the rate, as a policer does.
// bytesPerSecond <= 0 means no limit.
func Throttle(bytesPerSecond int) Rule {
	return throttleRule{bytesPerSecond: int64(max(bytesPerSecond, 0))}
}

// ThrottleDown is Throttle of what the server sends alone: every flow's
// downstream is limited to bytesPerSecond, and what a client sends
// passes. It stands for a recipient behind a per-flow throttle and a
// sender on a fast line (abroad, or on another network) through one
// middlebox: what the sender puts on a relay is there at once, and
// comes to the recipient at the throttle's rate.
func ThrottleDown(bytesPerSecond int) Rule {
	return throttleRule{bytesPerSecond: int64(max(bytesPerSecond, 0)), down: true}
}

// ThrottleHost limits all the TCP connections through the middlebox
// together to bytesPerSecond in each direction, with one token bucket per
// direction holding one second's worth (at least [MinThrottleBurst]): a
// subscriber's line shaped as a whole, as Iran's throttling of
// international traffic is, rather than each flow (Throttle), so that
// more connections in parallel carry no more. The middlebox delays bytes
// over the rate, as a shaper's queue does. UDP passes. bytesPerSecond <= 0
// means no limit.
func ThrottleHost(bytesPerSecond int) Rule {
	return throttleRule{bytesPerSecond: int64(max(bytesPerSecond, 0)), host: true}
}

// ThrottleHostDown is ThrottleHost of what servers send alone: all the
// flows' downstream together is limited to bytesPerSecond, and what
// clients send passes. It stands for a recipient whose line is shaped as
// a whole and a sender on a fast line through one middlebox, as
// ThrottleDown does for a throttle of each flow.
func ThrottleHostDown(bytesPerSecond int) Rule {
	return throttleRule{bytesPerSecond: int64(max(bytesPerSecond, 0)), host: true, down: true}
}

func (r throttleRule) rate(dir Direction) int64 {
	if r.host || (r.down && dir == ClientToServer) {
		return 0
	}
	return r.bytesPerSecond
}

func (r throttleRule) hostRate(dir Direction) int64 {
	if !r.host || (r.down && dir == ClientToServer) {
		return 0
	}
	return r.bytesPerSecond
}

type latencyRule struct {
	passRule
	rtt time.Duration
}

// Latency delays every byte of a TCP connection, and every datagram of a
// UDP flow, by rtt/2 in each direction, so that a request and its answer
// cost rtt more: a distant relay, or a censor's detour. The bytes keep
// flowing meanwhile (a path with rtt of latency, not a link that carries
// one chunk per rtt).
func Latency(rtt time.Duration) Rule { return latencyRule{rtt: max(rtt, 0)} }

func (r latencyRule) delay() time.Duration { return r.rtt / 2 }

// GFWBlockProbability is the share of non-exempt connections the GFW
// blocked in Wu et al.'s measurements (about 26%).
const GFWBlockProbability = 0.26

type fetRule struct {
	passRule
	p float64
}

// GFWFullyEncrypted drops a connection whose first client payload the GFW
// would take for fully encrypted traffic (see [FullyEncryptedExemption]):
// everything both ways is discarded from then on and the connection stays
// open, as the GFW's blocking of Shadowsocks-like traffic (2021-2023) did.
// blockProbability is the chance that a connection found non-exempt is
// blocked (the GFW's was [GFWBlockProbability]); outside (0, 1) it means 1,
// which tests want. Exempt connections always pass.
func GFWFullyEncrypted(blockProbability float64) Rule {
	if !(blockProbability > 0 && blockProbability < 1) {
		blockProbability = 1
	}
	return fetRule{p: blockProbability}
}

func (fetRule) inspects() bool { return true }

func (r fetRule) onFirstFlight(f *firstFlight) action {
	if len(f.packet) == 0 || FullyEncryptedExemption(f.packet) != NotExempt {
		return actForward
	}
	if r.p < 1 && rand.Float64() >= r.p {
		return actForward
	}
	return actHold
}

// QUICBlockDuration is how long [GFWQUIC] drops a flow it blocked: the
// GFW's residual block of a QUIC flow lasts a few minutes.
const QUICBlockDuration = 180 * time.Second

type quicRule struct {
	passRule
	name string
}

// GFWQUIC is the GFW's SNI filtering of QUIC (Zohaib et al., USENIX
// Security '25): it decrypts a UDP flow's first client Initial packets,
// reads the SNI of the ClientHello they carry, and if it is name (compared
// case-insensitively) and the client's source port is at least the
// destination port, drops the flow both ways for [QUICBlockDuration]. The
// datagram that completed the ClientHello still passes: the GFW judges a
// copy. Unlike the GFW, which looks at the first datagram only, the
// middlebox reassembles CRYPTO frames across the first few datagrams, so a
// ClientHello split over two (a post-quantum key share does that) is judged
// too. It does not act on TCP.
func GFWQUIC(name string) Rule { return quicRule{name: name} }

func (quicRule) inspectsQUIC() bool { return true }

func (r quicRule) onDatagram(d *datagram) action {
	if d.dir == ClientToServer && d.newHello && isBlocked(d.hello, r.name) && d.srcPort >= d.dstPort {
		return actBlockFlow
	}
	return actForward
}

type allRules []Rule

// All applies every rule: the harshest verdict wins (reset over drop over
// forward), the smallest budget and the lowest rate apply.
func All(rules ...Rule) Rule { return allRules(rules) }

func (a allRules) onConnect() action {
	v := actForward
	for _, r := range a {
		v = max(v, r.onConnect())
	}
	return v
}

func (a allRules) inspects() bool {
	for _, r := range a {
		if r.inspects() {
			return true
		}
	}
	return false
}

func (a allRules) onFirstFlight(f *firstFlight) action {
	v := actForward
	for _, r := range a {
		v = max(v, r.onFirstFlight(f))
	}
	return v
}

// resets is that of the rule whose budget is the smallest (the first of
// them): All(FreezeAfter(1024), ResetAfter(1<<20)) freezes at 1024.
func (a allRules) resets(dir Direction, sent, other int64) bool {
	b, resets := int64(unlimited), false
	for _, r := range a {
		if rb := r.budget(dir, sent, other); rb < b {
			b, resets = rb, r.resets(dir, sent, other)
		}
	}
	return resets
}

func (a allRules) budget(dir Direction, sent, other int64) int64 {
	b := int64(unlimited)
	for _, r := range a {
		b = min(b, r.budget(dir, sent, other))
	}
	return b
}

func (a allRules) delay() time.Duration {
	var d time.Duration
	for _, r := range a {
		d = max(d, r.delay())
	}
	return d
}

func (a allRules) rate(dir Direction) int64 {
	return a.lowest(func(r Rule) int64 { return r.rate(dir) })
}
func (a allRules) hostRate(dir Direction) int64 {
	return a.lowest(func(r Rule) int64 { return r.hostRate(dir) })
}

// lowest is the lowest limit of's rules set (> 0), 0 if none does.
func (a allRules) lowest(of func(Rule) int64) int64 {
	var lowest int64
	for _, r := range a {
		if v := of(r); v > 0 && (lowest == 0 || v < lowest) {
			lowest = v
		}
	}
	return lowest
}

func (a allRules) stalls() bool {
	for _, r := range a {
		if r.stalls() {
			return true
		}
	}
	return false
}

func (a allRules) inspectsQUIC() bool {
	for _, r := range a {
		if r.inspectsQUIC() {
			return true
		}
	}
	return false
}

func (a allRules) onDatagram(d *datagram) action {
	v := actForward
	for _, r := range a {
		v = max(v, r.onDatagram(d))
	}
	return v
}
