package netns

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Rule is one nftables rule (statement text) for the output hook of the
// namespace, where every loopback packet passes once, in either direction.
// Build rules with the functions below; Apply loads them.
type Rule string

// Direction is the direction of a flow a byte count applies to.
type Direction int

const (
	// Upstream is the direction of the flow's first packet: from the
	// client to the server (conntrack's "original").
	Upstream Direction = iota
	// Downstream is from the server back to the client (conntrack's
	// "reply"). Russia's TSPU counts this direction.
	Downstream
)

// tableName is the one nftables table this package manages.
const tableName = "postern_censor"

// match builds the conntrack match for flows of proto from src (a
// loopback IP, or "" for any) to dst (a loopback "IP:port", or "IP" for
// any port). Matching the conntrack tuple rather than the packet's
// addresses catches both directions of the flow.
func match(proto, src, dst string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "meta l4proto %s", mustProto(proto))
	if src != "" {
		fmt.Fprintf(&b, " ct original ip saddr %s", mustLoopback(src))
	}
	ip, port := splitDst(dst)
	fmt.Fprintf(&b, " ct original ip daddr %s", ip)
	if port != "" {
		fmt.Fprintf(&b, " ct original proto-dst %s", port)
	}
	return b.String()
}

// Blackhole silently drops every packet of proto ("tcp" or "udp") flows
// from src to dst: a connect times out.
func Blackhole(proto, src, dst string) Rule {
	return Rule(match(proto, src, dst) + " drop")
}

// DropUDP drops UDP from src to dst (QUIC blocked).
func DropUDP(src, dst string) Rule { return Blackhole("udp", src, dst) }

// ResetOnConnect answers a TCP connect from src to dst with a RST.
func ResetOnConnect(src, dst string) Rule {
	return Rule(packetMatch("tcp", src, dst) + " reject with tcp reset")
}

// packetMatch matches packets (not flows) from src to dst: what reject
// needs, since it answers the packet it sees.
func packetMatch(proto, src, dst string) string {
	var b strings.Builder
	if src != "" {
		fmt.Fprintf(&b, "ip saddr %s ", mustLoopback(src))
	}
	ip, port := splitDst(dst)
	fmt.Fprintf(&b, "ip daddr %s", ip)
	if port != "" {
		fmt.Fprintf(&b, " %s dport %s", mustProto(proto), port)
	} else {
		fmt.Fprintf(&b, " meta l4proto %s", mustProto(proto))
	}
	return b.String()
}

// FreezeAfter lets each TCP flow from src to dst carry n bytes in dir
// (IP bytes as conntrack counts them, headers included) and then drops
// every further packet of the flow in both directions: the connection
// stays open and silent, like a TSPU freeze.
func FreezeAfter(src, dst string, dir Direction, n int) Rule {
	ct := "original"
	if dir == Downstream {
		ct = "reply"
	}
	return Rule(fmt.Sprintf("%s ct %s bytes > %d drop", match("tcp", src, dst), ct, n))
}

// Ruleset is the nft script Apply loads for rules: one table with an
// output chain, replacing any earlier one.
func Ruleset(rules ...Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", tableName, tableName)
	fmt.Fprintf(&b, "table inet %s {\n\tchain out {\n\t\ttype filter hook output priority 0; policy accept;\n", tableName)
	for _, r := range rules {
		fmt.Fprintf(&b, "\t\t%s\n", r)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// Apply replaces the censor's nftables rules in t's namespace with rules
// (none: no censor). It fails t outside a namespace Run created.
func Apply(t testing.TB, rules ...Rule) {
	t.Helper()
	requireInside(t)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(Ruleset(rules...))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\nruleset:\n%s", err, out, Ruleset(rules...))
	}
}

// Throttle limits every packet to or from ip (a loopback address: the
// client) to bitsPerSecond in total, with a token bucket filter on the
// loopback device (htb; queued packets wait, none is dropped);
// bitsPerSecond 0 removes the limit. Loopback's MTU is lowered to 1500 so
// that TCP's segments, and the bursts the bucket lets through, are
// Internet-sized.
func Throttle(t testing.TB, ip string, bitsPerSecond int) {
	t.Helper()
	requireInside(t)
	mustLoopback(ip)
	tc(t, "qdisc", "del", "dev", "lo", "root")
	if bitsPerSecond == 0 {
		return
	}
	ipCmd(t, "link", "set", "lo", "mtu", "1500")
	rate := fmt.Sprintf("%dbit", bitsPerSecond)
	must := func(args ...string) {
		if out, err := exec.Command("tc", args...).CombinedOutput(); err != nil {
			t.Fatalf("tc %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// htb, not prio or a policer: that is what minimal kernels carry.
	must("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1", "r2q", "1000")
	must("class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit")
	must("class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb", "rate", rate, "ceil", rate,
		"burst", "4k", "cburst", "4k", "quantum", "1514")
	for _, dir := range []string{"src", "dst"} {
		must("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
			"match", "ip", dir, ip+"/32", "flowid", "1:2")
	}
}

// tc runs tc and ignores failure (removing what may not exist).
func tc(t testing.TB, args ...string) { exec.Command("tc", args...).Run() }

func ipCmd(t testing.TB, args ...string) {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// requireInside stops t unless it runs in a namespace Run made for it.
func requireInside(t testing.TB) {
	t.Helper()
	if !Inside(t) || !strings.HasPrefix(currentNS(), nsPrefix) {
		t.Fatalf("netns: refusing to change the firewall outside a test namespace; call netns.Run(t) first")
	}
}

// currentNS is the name `ip netns identify` gives this process's namespace.
func currentNS() string {
	out, _ := exec.Command("ip", "netns", "identify", fmt.Sprint(os.Getpid())).Output()
	return strings.TrimSpace(string(out))
}

func mustProto(p string) string {
	if p != "tcp" && p != "udp" {
		panic("netns: protocol must be tcp or udp, not " + p)
	}
	return p
}

func mustLoopback(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() || !a.IsLoopback() {
		panic("netns: only 127.0.0.0/8 addresses may be named, not " + ip)
	}
	return ip
}

// splitDst splits "IP:port" or "IP" and checks both.
func splitDst(dst string) (ip, port string) {
	if ap, err := netip.ParseAddrPort(dst); err == nil {
		return mustLoopback(ap.Addr().String()), fmt.Sprint(ap.Port())
	}
	return mustLoopback(dst), ""
}
