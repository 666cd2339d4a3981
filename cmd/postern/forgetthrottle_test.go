package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
)

// TestFlowsFast: lanes show flows not throttled one by one when two or
// more each carried 2*throttleFloor a second and as many bytes, on
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
		{"four, too few bytes each", client.LanesStats{Sessions: 4, Bytes: 3 * fastFlowBytes, Span: 10 * time.Millisecond}, false},
		{"four, a little slow each", client.LanesStats{Sessions: 4, Bytes: 4 * fastFlow, Span: 1010 * time.Millisecond}, false},
		// Four flows throttled at 15 KiB/s, each with a second's burst:
		// 2 s carry 45 KiB each, 22.5 KiB/s each.
		{"throttled flows, bursts and all", client.LanesStats{Sessions: 4, Bytes: 4 * 45 << 10, Span: 2 * time.Second}, false},
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

// TestFollowJudgedForgets: a follower without --network forgets the
// throttle of each flow its trial found once its lanes are fast, and
// keeps it after slow ones.
func TestFollowJudgedForgets(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   client.LanesStats
		kept bool
	}{
		{"fast", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}, false},
		{"slow", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 10 * time.Second}, true},
	} {
		f := &partsFollow{e: &env{}, t: recvTarget{}}
		f.ft.found = 8000
		f.judged(f.facts(), tc.st)
		if (f.ft.found == 8000) != tc.kept || f.facts().Throttled != tc.kept {
			t.Errorf("%s: found %d, facts %+v; want kept %v", tc.name, f.ft.found, f.facts(), tc.kept)
		}
	}
}

// TestSendForgetsThrottle: a send's one connection on a network known
// throttled that carried 2*throttleFloor a second or more past its first
// ack (its burst), over throttleWindow or more, forgets the throttle;
// one whose speed came of its first ack, or slower, or with lanes
// beside it, or too short, does not; nor is anything said on a network
// not known throttled.
func TestSendForgetsThrottle(t *testing.T) {
	t0 := time.Now()
	for _, tc := range []struct {
		name      string
		lanes     int
		firstAck  int           // bytes of the first ack, 1 s in
		total     int           // by the last ack
		lastAfter time.Duration // from the first ack
		forgets   bool
		unknown   bool // the network not known throttled: nothing to say
	}{
		{"fast", 1, 16 << 10, 16<<10 + 10*fastFlow, 10 * time.Second, true, false},
		{"fast only as its first ack came", 1, 200 << 10, 200<<10 + 10*throttleFloor, 10 * time.Second, false, false},
		{"over the floor, under twice it", 1, 16 << 10, 16<<10 + 15*throttleFloor, 10 * time.Second, false, false},
		{"lanes beside it", 2, 16 << 10, 16<<10 + 10*fastFlow, 10 * time.Second, false, false},
		{"too short", 1, 16 << 10, 16<<10 + 3*fastFlow, throttleWindow - time.Millisecond, false, false},
		{"fast, not known throttled", 1, 16 << 10, 16<<10 + 10*fastFlow, 10 * time.Second, false, true},
	} {
		var stderr bytes.Buffer
		s := &sender{e: &env{stderr: &stderr}, bucket: 16 << 10, known: netFacts{Throttled: !tc.unknown, Rate: 8000}}
		st := &connStats{start: t0, first: ackMark{t0.Add(time.Second), tc.firstAck}, last: t0.Add(time.Second + tc.lastAfter),
			total: tc.total, lanes: tc.lanes, alone: fastFlow, firstOwn: fastFlow}
		s.noteThroughput(st)
		if !tc.unknown && (s.known.Throttled == tc.forgets || (s.known.Rate == 0) != tc.forgets) {
			t.Errorf("%s: known %+v, want forgotten %v", tc.name, s.known, tc.forgets)
		}
		if said := strings.Contains(stderr.String(), "does not throttle each flow"); said != tc.forgets {
			t.Errorf("%s: said %q", tc.name, stderr.String())
		}
	}
}
