package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/postern/postern/transport/route"
)

// Network facts are what send and recv learned about a censor on a named
// network (--network NAME), in POSTERN_HOME/networks (mode 0600): a JSON
// object whose keys are truncated SHA-256 hashes of the network name and
// the home relay's id, and whose values say
//
//	budget     envelope bytes one connection carried before the censor froze
//	           it (the smallest seen); later connections are cycled before
//	           half of it and messages use the smallest envelope bucket
//	throttled  the flow's throughput fell under throttleFloor: 16 KiB
//	           envelopes, and a stall window long enough for one at that rate
//	throttled_up, throttled_down
//	           who found it: a send, from its acks (what goes up), and a recv
//	           or a follower, from what it read (what comes down); neither
//	           (facts from before 2026-12-07) counts as down. recv's lanes that
//	           carry three times throttleFloor a connection (flowsFast) forget
//	           both; a send whose connection does (upFast) forgets only a
//	           send's find: throttled goes with the last of them
//	throttled_rate
//	           that throughput, in bytes a second (recv's lanes judge by it
//	           whether the line is throttled as a whole)
//	line_throttled, line_throttled_day
//	           connections at once (lanes.go) carried together less than 1.5
//	           times what one alone did, or none beside the first could be
//	           dialed in time (a shaper's queue holds their handshakes): the
//	           line is throttled as a whole, not each flow; sends use one
//	           connection at a time that day (unless POSTERN_LANES is set),
//	           and try lanes again on a later one
//	trial_line_day
//	           the day (Unix days) a trial (a second connection's part timed
//	           beside a page or push found slow, recvswitch.go) found the line
//	           throttled as a whole: recv and recv --follow try no more there
//	           that day (POSTERN_LANES does not change it); nothing else
//	           changes (one part is too little to keep sends to one
//	           connection, as line_throttled does)
//	via_entry  the home relay could not be reached and an entry relay could:
//	           try the entry relays first next time
//	recv_budget bytes of envelope parts one connection from the relay carried
//	           before the censor froze it: recv asks for envelopes in parts
//	           and opens a new connection before half of it
//	budget_day, recv_budget_day
//	           the day (Unix days) each budget was learnt or last seen to hold
//	day        the day (Unix days) of the last update; facts older than
//	           factsTTL are forgotten
//
// No address, port, relay id or mailbox id is stored.
//
// A budget from an earlier day is checked again: the first send (or recv)
// of a later day goes as on a network not known to cut flows, with 64 KiB
// envelopes (or whole sessions). A connection that carries more than the
// budget and does not stall shows it is gone, and it is forgotten; one
// that stalls first shows it still holds, and the send (or recv) goes on
// under it at once, for one stall window; one that stalls after carrying
// more teaches the larger budget it carried. A reset teaches nothing (a
// relay restarting resets too), nor does a throttled connection's stall. Until 2026-12-06 a budget only
// ever shrank: one freeze of a flaky network for a stall window (a train
// in a tunnel) taught one of a few kilobytes, and every send and recv on
// that network then went through the smallest envelopes or parts for as
// long as the facts were kept.

// factsTTL is how long a fact about a network is kept.
const factsTTL = 7 * 24 * time.Hour

// throttleFloor is the throughput under which a flow counts as throttled.
const throttleFloor = 16 << 10 // bytes per second

// netFacts are the facts about one (network, home relay).
type netFacts struct {
	Budget    int  `json:"budget,omitempty"`
	Throttled bool `json:"throttled,omitempty"`
	// Up and Down: see throttled_up above.
	Up   bool `json:"throttled_up,omitempty"`
	Down bool `json:"throttled_down,omitempty"`
	// Rate: see throttled_rate above.
	Rate int `json:"throttled_rate,omitempty"`
	// LineThrottled and LineDay: see line_throttled above.
	LineThrottled bool  `json:"line_throttled,omitempty"`
	LineDay       int64 `json:"line_throttled_day,omitempty"`
	// TrialLineDay: see trial_line_day above.
	TrialLineDay int64 `json:"trial_line_day,omitempty"`
	ViaEntry     bool  `json:"via_entry,omitempty"`
	// RecvBudget: see recv_budget above.
	RecvBudget int `json:"recv_budget,omitempty"`
	// BudgetDay and RecvBudgetDay: see budget_day above.
	BudgetDay     int64 `json:"budget_day,omitempty"`
	RecvBudgetDay int64 `json:"recv_budget_day,omitempty"`
	Day           int64 `json:"day"`
}

// stale reports whether a budget learnt or last seen to hold on day is to
// be checked again (see budget_day).
func stale(day int64) bool { return day != today() }

// factsStore reads and writes POSTERN_HOME/networks for one key.
type factsStore struct {
	path, key string
}

// openFacts returns the store for network and the relay id, or nil
// without --network.
func openFacts(e *env, relayID string) *factsStore {
	if e.network == "" {
		return nil
	}
	sum := sha256.Sum256([]byte("postern network facts v1\x00" + e.network + "\x00" + relayID))
	return &factsStore{path: filepath.Join(homeDir(e), "networks"), key: hex.EncodeToString(sum[:16])}
}

func (s *factsStore) readAll() map[string]netFacts {
	all := map[string]netFacts{}
	if data, err := os.ReadFile(s.path); err == nil {
		json.Unmarshal(data, &all)
	}
	return all
}

// get returns the facts, or the zero value if none are fresh.
func (s *factsStore) get() netFacts {
	if s == nil {
		return netFacts{}
	}
	f := s.readAll()[s.key]
	if today()-f.Day > int64(factsTTL/(24*time.Hour)) {
		return netFacts{}
	}
	return f
}

// update applies change to the facts and writes the file.
func (s *factsStore) update(e *env, change func(*netFacts)) {
	if s == nil {
		return
	}
	dirErr := os.MkdirAll(filepath.Dir(s.path), 0o700)
	if dirErr == nil {
		// Read, changed and written under the file's lock: a recv
		// --follow learning a budget beside a send confirming one lost
		// one of the two (a reviewer's find).
		defer route.LockFile(s.path + ".lock")()
	}
	all := s.readAll()
	f := all[s.key]
	if today()-f.Day > int64(factsTTL/(24*time.Hour)) {
		f = netFacts{}
	}
	change(&f)
	f.Day = today()
	all[s.key] = f
	for k, v := range all {
		if today()-v.Day > int64(factsTTL/(24*time.Hour)) {
			delete(all, k)
		}
	}
	out, _ := json.MarshalIndent(all, "", "  ")
	err := dirErr
	if err == nil {
		err = writeFileAtomic(s.path, append(out, '\n'), 0o600)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "warning: could not remember what this network does in %s: %v\n", s.path, err)
	}
}

func today() int64 { return time.Now().Unix() / 86400 }

// throttledBy marks the network throttled at rate, found by a send (up:
// what goes up) or by a recv or a follower (what comes down).
func (f *netFacts) throttledBy(up bool, rate int) {
	f.Throttled, f.Rate = true, rate
	if up {
		f.Up = true
	} else {
		f.Down = true
	}
}

// sides says who found the network throttled: a send (up), a recv or a
// follower (down). Facts from before throttled_up and throttled_down
// (throttled alone) count as down: until 2026-12-07 only recv forgot.
func (f netFacts) sides() (up, down bool) {
	return f.Throttled && f.Up, f.Throttled && (f.Down || !f.Up)
}

// forgetThrottle forgets what one side found (up: a send's; else a recv's
// or a follower's); the network stays throttled while the other side's
// find stands.
func (f *netFacts) forgetThrottle(up bool) {
	u, d := f.sides()
	if up {
		u = false
	} else {
		d = false
	}
	f.Up, f.Down = u, d
	if !u && !d {
		f.Throttled, f.Rate = false, 0
	}
}
