package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
)

// TestFlowsFast: lanes show flows not throttled one by one when two or
// more each carried 3*throttleFloor a second and as many bytes, on
// average; not on fewer bytes (a throttle's bursts could do that), nor at
// a lower rate, nor with one session, nor with no span measured.
func TestFlowsFast(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   client.LanesStats
		fast bool
	}{
		{"four fast lanes", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}, true},
		{"two, just enough", client.LanesStats{Sessions: 2, Bytes: 2 * fastFlowBytes, Span: time.Second}, true},
		{"two, a byte short", client.LanesStats{Sessions: 2, Bytes: 2*fastFlowBytes - 1, Span: 10 * time.Millisecond}, false},
		{"two of 40 KiB each, fast", client.LanesStats{Sessions: 2, Bytes: 2 * 40 << 10, Span: 10 * time.Millisecond}, false},
		{"four, too few bytes each", client.LanesStats{Sessions: 4, Bytes: 3 * fastFlowBytes, Span: 10 * time.Millisecond}, false},
		{"four at 40 KiB/s each", client.LanesStats{Sessions: 4, Bytes: 4 * 80 << 10, Span: 2 * time.Second}, false},
		{"four, a little slow each", client.LanesStats{Sessions: 4, Bytes: 4 * fastFlow, Span: 1010 * time.Millisecond}, false},
		// Four flows throttled at 15 KiB/s, each with a second's burst:
		// 3 s carry 60 KiB each, 20 KiB/s each.
		{"throttled flows, bursts and all", client.LanesStats{Sessions: 4, Bytes: 4 * 60 << 10, Span: 3 * time.Second}, false},
		// At 128 kbit/s a flow, a second carries 32 KB and its burst,
		// and the first session's part in flight counts too: 36 KB/s
		// each (a reviewer's find: over twice throttleFloor).
		{"128 kbit/s flows over a second", client.LanesStats{Sessions: 4, Bytes: 4*32_000 + 16<<10, Span: time.Second}, false},
		{"one session", client.LanesStats{Sessions: 1, Bytes: 400 << 10, Span: 10 * time.Millisecond}, false},
		{"no span", client.LanesStats{Sessions: 3, Bytes: 400 << 10}, false},
	} {
		each, fast := flowsFast(tc.st)
		if fast != tc.fast {
			t.Errorf("%s: fast %v (%.0f B/s each), want %v", tc.name, fast, each, tc.fast)
		}
	}
}

// TestJudgeRecvLanesForgets: recv's lanes that were fast forget the
// network's throttle of each flow (and say so); slow ones, or too few
// bytes to judge by, keep it.
func TestJudgeRecvLanesForgets(t *testing.T) {
	fast := client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}
	slow := client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 10 * time.Second}
	few := client.LanesStats{Sessions: 4, Bytes: 64 << 10, Span: 10 * time.Millisecond}
	for _, tc := range []struct {
		name string
		st   client.LanesStats
		kept bool
		says string
	}{
		{"fast", fast, false, "this network does not throttle each flow (a stall was taken for a throttle, or it was lifted); forgotten\n"},
		{"slow", slow, true, "this network throttles each flow\n"},
		{"too few bytes", few, true, "this network throttles each flow\n"},
	} {
		home := t.TempDir()
		var stderr bytes.Buffer
		e := &env{stderr: &stderr, network: "cafe", getenv: func(k string) string {
			if k == "POSTERN_HOME" {
				return home
			}
			return ""
		}}
		fs := openFacts(e, "relay")
		known := netFacts{Throttled: true, Rate: 8000}
		fs.update(e, func(f *netFacts) { *f = known })
		judgeRecvLanes(e, recvTarget{facts: fs}, known, tc.st)
		if got := fs.get(); got.Throttled != tc.kept || (got.Rate == 8000) != tc.kept {
			t.Errorf("%s: facts %+v, want throttled kept %v", tc.name, got, tc.kept)
		}
		if !strings.HasSuffix(stderr.String(), tc.says) {
			t.Errorf("%s: said %q, want it to end %q", tc.name, stderr.String(), tc.says)
		}
	}
}

// TestFollowJudgedForgets: a follower forgets the throttle of each flow
// its trial found once its lanes are fast, with --network (where the
// facts forget it: judgeRecvLanes) or without, and keeps it after slow
// ones.
func TestFollowJudgedForgets(t *testing.T) {
	for _, tc := range []struct {
		name    string
		st      client.LanesStats
		network bool
		kept    bool
	}{
		{"fast", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}, false, false},
		{"slow", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 10 * time.Second}, false, true},
		{"fast, with --network", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}, true, false},
		{"slow, with --network", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 10 * time.Second}, true, true},
	} {
		f := &partsFollow{e: &env{}, t: recvTarget{}}
		if tc.network {
			home := t.TempDir()
			f.e = &env{network: "cafe", getenv: func(k string) string { return map[string]string{"POSTERN_HOME": home}[k] }}
			f.t.facts = openFacts(f.e, "relay")
		}
		f.ft.found = 8000
		f.judged(f.facts(), tc.st)
		if (f.ft.found == 8000) != tc.kept || !tc.network && f.facts().Throttled != tc.kept {
			t.Errorf("%s: found %d, facts %+v; want kept %v", tc.name, f.ft.found, f.facts(), tc.kept)
		}
	}
}
