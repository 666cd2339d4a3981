package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// recvArgs are recv's flags.
type recvArgs struct {
	idPath, name string
	follow       bool
	via          listFlag
	timeout      time.Duration
}

func recvCmd() command {
	return command{
		name: "recv",
		summary: "Receive messages from your mailboxes (every relay of each), print each with its\n" +
			"sender and delete it from the relay. Without --follow, exits when the mailboxes\n" +
			"are empty. Output per message: a line `== from SENDER (N bytes)`, then exactly N\n" +
			"bytes of message, then a newline. SENDER is the contact's name, else the sender key\n" +
			"(stderr then says \"unknown sender\"), else \"anonymous\". A card update a contact sent\n" +
			"with `mailbox rotate` is applied to your contacts, not printed.\n\n" +
			"examples:\n  postern recv --id demo/bob.id\n  postern recv --id demo/bob.id --follow\n\n" + dialEnvHelp,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			var a recvArgs
			fs.StringVar(&a.idPath, "id", "", "identity `file` (default $POSTERN_HOME/identity or ~/.config/postern/identity)")
			fs.StringVar(&a.name, "name", "", "receive from this mailbox only (`name`, see `postern mailbox list`)")
			fs.BoolVar(&a.follow, "follow", false, "keep waiting for new messages (reconnects with backoff)")
			fs.DurationVar(&a.timeout, "timeout", 0, "give up after this long, e.g. 30s; with --follow, stop following then (default: no limit)")
			networkFlag(fs, e)
			fs.Var(&a.via, "via", "entry relay `descriptor` (or a file holding it) to receive through, when the home relay\n"+
				"cannot be reached directly: the entry relay splices an end-to-end encrypted session\n"+
				"to the home relay and sees neither the mailbox nor the requests (repeatable)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				return runRecv(ctx, e, &a)
			}
		},
	}
}

// recvTarget is one relay of one mailbox.
type recvTarget struct {
	m    *mailboxState
	i, n int // relay i of the mailbox's n
	dial dialFunc
	// laneDial dials sessions beside one that came by a transport (see
	// recvLaneDial); nil: none.
	laneDial func(transport string) dialFunc
	facts    *factsStore // what --network NAME taught about that relay (nil without)
	held     client.HeldFile
}

// heldFile is where recv keeps, between runs, the fragments of unfinished
// messages it took in parts from mailbox m on its relay i: ID_FILE.held/
// and a hash of the mailbox id and the relay's (its descriptor line, if
// that does not parse) (client.PartsConfig.Keep).
func heldFile(ms *mailboxes, m *mailboxState, i int) client.HeldFile {
	relay := parsedOrZero(ms.line(m, i)).RelayID()
	if relay == "" {
		relay = "line\x00" + ms.line(m, i)
	}
	id := m.id()
	sum := sha256.Sum256(append([]byte("postern held fragments v1\x00"+relay+"\x00"), id[:]...))
	return client.HeldFile(filepath.Join(ms.idPath+".held", hex.EncodeToString(sum[:16])))
}

// saveHeld keeps in t's file the fragments of unfinished messages the
// inbox holds (a failure is only warned of: they are fetched again).
func saveHeld(e *env, t recvTarget, in *client.Inbox) {
	if t.held == "" {
		return
	}
	if err := in.SaveHeld(t.held); err != nil {
		fmt.Fprintf(e.stderr, "warning: %v\n", err)
	}
}

// pruneHeld removes from ID_FILE.held/ the files of mailboxes and relays
// no longer in the mailbox file (a mailbox rotated, deleted, or moved to
// other relays), and temporary files a crash left more than an hour ago:
// each could hold up to client.MaxKeptBytes of envelopes for good.
func pruneHeld(ms *mailboxes) {
	dir := ms.idPath + ".held"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	keep := map[string]bool{}
	for _, m := range ms.list {
		for i := range m.relays() {
			keep[filepath.Base(string(heldFile(ms, m, i)))] = true
		}
	}
	for _, en := range entries {
		name := en.Name()
		if keep[name] {
			continue
		}
		if strings.HasPrefix(name, ".held-") {
			if fi, err := en.Info(); err != nil || time.Since(fi.ModTime()) < time.Hour {
				continue // another recv may be writing it
			}
		}
		os.Remove(filepath.Join(dir, name))
	}
}

func runRecv(ctx context.Context, e *env, a *recvArgs) error {
	// On a terminal the count of messages stays on the last line, and
	// everything recv writes to stderr goes above it.
	var line *progressLine
	if isTerminal(e.stderr) {
		line = &progressLine{w: e.stderr}
		ec := *e
		ec.stderr = line
		e = &ec
	}
	path := resolveID(e, a.idPath)
	id, err := envelope.LoadIdentity(path)
	if err != nil {
		return err
	}
	ms, err := loadMailboxes(path)
	if err != nil {
		return err
	}
	// Renewed descriptors are saved before recv ends; every session is
	// closed by then (deferred calls run last first).
	defer ms.settle()
	if f, ok := e.stdout.(*os.File); ok && stdoutClosed(f) {
		return errors.New("standard output is closed: the messages would be deleted from the relay unseen; redirect it to a file, or to /dev/null to discard them on purpose")
	}
	book, err := loadContacts(path)
	if err != nil {
		return err
	}
	targets, err := recvTargets(e, ms, id, a)
	if err != nil {
		return err
	}
	pruneHeld(ms)
	p := newPrinter(e, book, line, len(targets))
	defer p.done()
	ctx, cancel := withTimeout(ctx, a.timeout)
	defer cancel()
	mr := startMetrics(e)
	defer mr.stop()
	if a.follow {
		mr.every(ctx, metricsEvery)
		return followAll(ctx, e, id, path, targets, p)
	}
	err = drainAll(ctx, e, id, path, targets, p)
	if err != nil && a.timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("gave up after %s (--timeout) with %d message(s) received; run recv again for the rest, or give a longer --timeout", a.timeout, p.count)
	}
	return err
}

// recvTargets are the relays of the chosen mailboxes (all without --name).
func recvTargets(e *env, ms *mailboxes, id *envelope.Identity, a *recvArgs) ([]recvTarget, error) {
	list := ms.list
	if a.name != "" {
		m, err := ms.find(a.name)
		if err != nil {
			return nil, err
		}
		list = []*mailboxState{m}
	}
	var out []recvTarget
	for _, m := range list {
		if len(m.relays()) == 0 {
			return nil, fmt.Errorf("mailbox %q in %s names no relay: delete it with `postern mailbox delete --forget --name %s`", m.Name, mailboxPath(ms.idPath), m.Name)
		}
		for i := range m.relays() {
			d, err := recvDial(e, ms, m, i, id, a.via)
			if err != nil {
				return nil, err
			}
			out = append(out, recvTarget{m: m, i: i, n: len(m.relays()), dial: d, facts: openFacts(e, parsedOrZero(ms.line(m, i)).RelayID()),
				held: heldFile(ms, m, i), laneDial: recvLaneDial(e, ms, m, i, id, a.via)})
		}
	}
	return out, nil
}

// drainAll empties every target once. A mailbox counts as received when
// one of its relays was emptied; the others are warned about.
func drainAll(ctx context.Context, e *env, id *envelope.Identity, path string, ts []recvTarget, p *printer) error {
	in, err := newReceiver(e, id, client.ReplayFile(path+".replay"), p)
	if err != nil {
		return err
	}
	ok := map[*mailboxState]bool{}
	var failed []error
	for _, t := range ts {
		in.Reset() // what it holds is another relay's
		err := drainOne(ctx, e, t, in)
		if err == nil {
			ok[t.m] = true
			continue
		}
		err = recvError(path, t, err)
		if ctx.Err() != nil || errors.Is(err, errTake) {
			return err
		}
		failed = append(failed, err)
		if t.n > 1 {
			fmt.Fprintf(e.stderr, "relay %d of %d of mailbox %q: %v\n", t.i+1, t.n, t.m.Name, err)
		}
	}
	for _, t := range ts {
		if !ok[t.m] {
			return errors.Join(failed...)
		}
	}
	return nil
}

// drainOne empties one target: in one session, or part by part over many
// on a network that cuts flows (see drainParts).
//
// A stall goes to parts at once; a reset first gets one more whole
// session, as a relay that restarted or a passing fault resets too (a
// reviewer's find: one reset sent the rest of a large backlog through
// 4 KiB parts, a round trip each). A remembered budget from an earlier day
// is checked again (netfacts.go): a whole session first, and the budget
// forgotten if it carries more, or confirmed if it stalls first.
func drainOne(ctx context.Context, e *env, t recvTarget, in *client.Inbox) error {
	f := t.facts.get()
	b, recheck := f.RecvBudget, 0
	if b > 0 && stale(f.RecvBudgetDay) {
		recheck = b
	} else if b > 0 {
		// A relay that does not know parts may still deliver what is
		// small enough whole.
		if _, err := drainParts(ctx, e, t, in, b); !errors.Is(err, relay.ErrUnknownFrame) {
			return err
		}
	}
	for resets := 0; ; resets++ {
		c, err := t.dial(ctx)
		if err != nil {
			return err
		}
		lanes, err := drainWhole(ctx, e, t, in, c, &f, recheck == 0)
		c.Close()
		if err == nil {
			// A whole pass: what the inbox holds is what waits
			// unfinished on the relay.
			saveHeld(e, t, in)
		}
		// What the session read, in TLS records read whole: a page of
		// envelopes cut short counts for what of it came (until
		// 2026-12-06 only envelopes handed over counted, and a relay
		// sending five in one page behind a freeze at 150 KiB was taken
		// to have carried nothing past a budget of 12 KiB).
		carried := int(c.Received())
		if lanes {
			// The first connection's share, and the error another's
			// (a reviewer's find): a budget is learnt from a whole
			// session on one connection, or from parts.
			carried = 0
		}
		grew := recheck > 0 && carried > recheck
		if grew && err == nil {
			fmt.Fprintf(e.stderr, "a connection carried %d KB here without being cut; this network no longer limits connections to %d KB\n", carried>>10, recheck>>10)
			t.facts.update(e, func(f *netFacts) { f.RecvBudget, f.RecvBudgetDay = 0, 0 })
		}
		if !cutByCensor(err) || ctx.Err() != nil {
			return err
		}
		stalled := errors.Is(err, transport.ErrStalled)
		if stalled || resets > 0 {
			fmt.Fprintf(e.stderr, "the connection was cut while receiving (%v: a censor's per-flow limit?); receiving in parts\n", scrubAddrs(err))
			b = budgetAfterCut(e, t, b, recheck, carried, stalled)
			_, err = drainParts(ctx, e, t, in, b)
			return err
		}
	}
}

// drainWhole empties t in one pass beginning on c: over up to laneLimit
// connections at once (client.Inbox.DrainLanes, each carrying other
// parts of the envelopes) on a network known to throttle each flow (f,
// from a send's or an earlier recv's measure), else on c alone
// (client.Inbox.Drain), whose throughput, if it is a throttled flow's,
// is remembered for the network (with --network). Until 2026-12-06 recv
// used one connection at a time whatever the network: 300 KB behind a
// per-flow throttle at 48 KiB/s took 7.1 s where four lanes take 1.1 s
// (relay/client's TestDrainLanesUnderFlowThrottle).
//
// Where lanes may be used and the network is not known throttled, the
// page coming over c alone is watched if watch, and left for lanes if
// its flow is found throttled one by one (drainWatched). Not while a
// per-connection budget from an earlier day is checked again: a pass on
// c alone is what checks it (a reviewer's find); nor on a day a trial
// found the line throttled as a whole (trial_line_day).
func drainWhole(ctx context.Context, e *env, t recvTarget, in *client.Inbox, c *client.Client, f *netFacts, watch bool) (lanes bool, err error) {
	n := laneLimit(e, *f)
	if f.Throttled && n > 1 && t.laneDial != nil {
		if _, err := drainLanes(ctx, e, t, in, c, *f, nil); !errors.Is(err, relay.ErrUnknownFrame) {
			return true, err
		}
		// A relay from before parts: on c alone.
	}
	if !pageWatched(e, t, *f, watch) {
		err = in.Drain(ctx, c, t.m.owner(), t.m.id())
		noteRecvRate(e, t, *f, in)
		return false, err
	}
	return drainWatched(ctx, e, t, in, c, f)
}

// pageWatched says whether drainWhole's pass on c alone over a network
// of facts f is watched (drainWatched), as watch asks: where lanes may be
// used, and the network is not known throttled, nor found by a trial
// today to throttle the line as a whole (trial_line_day).
func pageWatched(e *env, t recvTarget, f netFacts, watch bool) bool {
	return watch && !f.Throttled && laneLimit(e, f) > 1 && t.laneDial != nil && f.TrialLineDay != today()
}

// drainLanes is drainWhole's pass over lanes beginning on c, judged,
// asking only for the rest of what came already of envelopes (have). It
// returns what the lanes carried.
func drainLanes(ctx context.Context, e *env, t recvTarget, in *client.Inbox, c *client.Client, f netFacts, have []client.Begun) (client.LanesStats, error) {
	var st client.LanesStats
	cfg := client.LanesConfig{Lanes: laneLimit(e, f), Stats: &st, Have: have}
	_, err := in.DrainLanes(ctx, c, t.laneDial(c.Transport()), t.m.owner(), t.m.id(), cfg)
	if st.Kept > 0 {
		fmt.Fprintf(e.stderr, "%.1f KB had come before the lanes began, and were not asked for again\n", float64(st.Kept)/1000)
	}
	judgeRecvLanes(e, t, f, st)
	return st, err
}

// judgeRecvLanes says how many connections a lanes recv used and judges
// the line from what they carried together, as a send's lanes do: under
// lineGain times what one flow carried alone when the network was found
// throttled (netFacts.Rate) is a line throttled as a whole, remembered
// for the day (line_throttled: sends and recvs there use one connection
// that day); more is flows throttled one by one (a line throttle
// remembered from an earlier day is forgotten). Judged only with
// minJudged sessions at once and minJudgedBytes carried by them, and a
// rate known. Until 2026-12-06 recv's lanes judged nothing, and behind a
// line throttle cost 5 % on every recv of the network until a send
// judged it.
//
// Lanes that each carried fastFlow a second or more (flowsFast) show the
// flows not throttled: the network's throttle, however it was found, is
// forgotten (a stall taken for one, or a throttle lifted). What a send
// found of what goes up goes too, though these lanes see only what comes
// down: kept, a false find of a send's stayed for good where sends were
// short (a reviewer's find; upFast needs 48 KiB past a first ack), and
// a true one is found again by the next send of 32 KiB or more that
// runs two seconds. A send forgets only what a send found (upFast).
// Until 2026-12-07 nothing forgot it while the network was used: a first
// connection that stalled two seconds after a TLS record (a handover)
// marked a fast network throttled, and its sends went in 16 KiB
// envelopes and its recvs over lanes for as long (a reviewer's find).
func judgeRecvLanes(e *env, t recvTarget, f netFacts, st client.LanesStats) {
	if st.Sessions < 2 {
		return
	}
	if each, fast := flowsFast(st); fast && f.Throttled {
		later := "" // nothing is remembered without --network
		if t.facts != nil {
			later = "; forgotten"
		}
		fmt.Fprintf(e.stderr, "received over %d connections at once, %.1f KB/s each: this network does not throttle each flow (a stall was taken for a throttle, or it was lifted)%s\n",
			st.Sessions, each/1000, later)
		t.facts.update(e, func(f *netFacts) { f.forgetThrottle(true); f.forgetThrottle(false) })
		return
	}
	together, judged, line := lineVerdict(f, st)
	if !judged {
		fmt.Fprintf(e.stderr, "received over %d connections at once: this network throttles each flow\n", st.Sessions)
		return
	}
	if line {
		fmt.Fprintf(e.stderr, "%d connections at once carried %.1f KB/s together, where one alone carried %.1f KB/s: this network throttles the whole line; one connection at a time here today\n",
			st.Sessions, together/1000, float64(f.Rate)/1000)
		t.facts.update(e, func(f *netFacts) { f.LineThrottled, f.LineDay = true, today() })
		return
	}
	fmt.Fprintf(e.stderr, "received over %d connections at once (%.1f KB/s together, one alone %.1f KB/s): this network throttles each flow\n",
		st.Sessions, together/1000, float64(f.Rate)/1000)
	if f.LineThrottled {
		t.facts.update(e, func(f *netFacts) { f.LineThrottled, f.LineDay = false, 0 })
	}
}

// lineVerdict is judgeRecvLanes' verdict on lanes that carried st on a
// network of facts f: what they carried together, in bytes a second,
// whether that judges the line, and whether it is throttled as a whole.
func lineVerdict(f netFacts, st client.LanesStats) (together float64, judged, line bool) {
	if st.Span > 0 {
		together = float64(st.Bytes) / st.Span.Seconds()
	}
	if st.Sessions < minJudged || st.Bytes < minJudgedBytes || f.Rate <= 0 || together <= 0 {
		return together, false, false
	}
	return together, true, together < lineGain*float64(f.Rate)
}

// flowsFast says whether lanes that carried st show flows not throttled
// one by one, and what each carried on average, in bytes a second: two
// sessions at once or more, each carrying fastFlow a second or more and
// fastFlowBytes or more on average. A throttle of each flow at r, under
// throttleFloor, whose bucket holds a second's worth (censortest.Throttle's;
// a real one's may hold more), lets a flow carry r(1+t) in t seconds at most: with
// 3*throttleFloor carried, t is 2 s or more, and the rate 1.5r at most,
// under 24 KiB/s. The first session's parts in flight as the second
// joined, 32 KiB at most (two requests of relay.MaxPart), count in Bytes
// too: 8 KiB/s more a session at most over 2 s with two. So lanes at
// 48 KiB/s were not throttled so, bursts and all (with a margin: at
// 2*throttleFloor each, a reviewer's find, 128 kbit/s a flow over a
// second could pass). Not counted: a session that ended before another
// joined brought a burst that Sessions, the most at once, leaves out.
func flowsFast(st client.LanesStats) (each float64, fast bool) {
	if st.Sessions < 2 || st.Span <= 0 {
		return 0, false
	}
	each = float64(st.Bytes) / st.Span.Seconds() / float64(st.Sessions)
	return each, each >= fastFlow && st.Bytes >= st.Sessions*fastFlowBytes
}

// fastFlow and fastFlowBytes: see flowsFast.
const (
	fastFlow      = 3 * throttleFloor
	fastFlowBytes = 3 * throttleFloor
)

// What judgeRecvLanes needs to judge a line: three sessions at once or
// more (two flows throttled one by one, a slow handshake and a tail
// where one lane ends first carry near lineGain times one), 64 KiB or
// more carried by them.
const (
	minJudged      = 3
	minJudgedBytes = 64 << 10
)

// noteRecvRate marks the network throttled (netFacts.Throttled, as a
// send does from its acks) when the pages of the last Drain carried
// 32 KiB or more at under throttleFloor over throttleWindow or more,
// from request to answer less a round trip each (client.Inbox.DrainRate):
// the next recv there uses lanes, and sends 16 KiB envelopes.
func noteRecvRate(e *env, t recvTarget, f netFacts, in *client.Inbox) {
	n, took := in.DrainRate()
	if t.facts == nil || f.Throttled || n < 2*throttleFloor || took < throttleWindow {
		return
	}
	rate := float64(n) / took.Seconds()
	if rate >= throttleFloor {
		return
	}
	fmt.Fprintf(e.stderr, "the connection carried %.1f KB/s: this network throttles it; later receives here use up to %d connections at once\n",
		rate/1000, laneLimit(e, f))
	t.facts.update(e, func(f *netFacts) { f.throttledBy(false, int(rate)) })
}

// budgetAfterCut is the per-session budget the parts go by after recv's
// whole session was cut having read carried bytes (stalled, else reset
// twice), with b the budget remembered (recheck, if it is from an
// earlier day and being checked again); it says, and remembers, what the
// session taught.
func budgetAfterCut(e *env, t recvTarget, b, recheck, carried int, stalled bool) int {
	grew := recheck > 0 && carried > recheck
	switch {
	case grew && stalled && carried >= minTaught:
		b = carried // cut past the old budget: what it carried is the new one
		learnRecvBudget(e, t, b, today())
	case grew:
		b = 0 // reset past the old budget: the parts learn the new one
	case recheck > 0 && stalled && carried >= minTaught && carried < recheck:
		// Cut before the old budget: what it carried is the new
		// one (planned under the old, the first parts session
		// would stall to learn it; a reviewer's find). Kept as
		// yesterday's, as below: one stall short of it may be a
		// passing fault, and a budget too small is never raised
		// within the day.
		b = carried
		learnRecvBudget(e, t, b, today()-1)
	case recheck > 0 && stalled:
		t.facts.update(e, func(f *netFacts) { f.RecvBudgetDay = today() }) // it holds
	case stalled && carried >= minTaught:
		// What the frozen session carried is what a session
		// carries here, as a parts session that froze would
		// have taught, a stall window later. With nothing known
		// of the network before, one stall may be a passing
		// fault (a handover, a relay slow for a window): the
		// budget is kept as yesterday's, and the next recv
		// checks it again with a whole session (a reviewer's
		// find: kept as today's, one fault sent every recv of
		// the day through parts).
		b = carried
		learnRecvBudget(e, t, b, today()-1)
	}
	return b
}

// cutByCensor reports whether err ended a session the way a censor's
// per-flow limit does: a stall or a reset, and not a message the inbox
// could not take, which a lanes drain's error joins with that of an Ack
// cut meanwhile (a second reviewer's find: recv went on in parts after
// the refusal, and offered the message again).
func cutByCensor(err error) bool {
	if inboxFailed(err) {
		return false
	}
	return errors.Is(err, transport.ErrStalled) || transport.ClassOf(err) == transport.ClassReset
}

// inboxFailed reports whether err is recv's own: a message it could not
// show (errTake), or the inbox's (client.ErrInbox: a refusal, a replay
// file that cannot be written). Nothing more can be taken: recv ends.
func inboxFailed(err error) bool {
	return errors.Is(err, errTake) || errors.Is(err, client.ErrInbox)
}

// drainParts empties one target asking for its envelopes part by part
// (client.Inbox.DrainParts), over as many sessions as the censor makes
// necessary, each carrying at most half of perSession bytes once that is
// known (0: learnt from the first session that stalls, and remembered
// for the network with --network). Until 2026-12-06 a recipient behind a
// censor freezing flows at 16 KiB never got a message sealed in 64 KiB
// envelopes: every session stalled inside the first of them.
func drainParts(ctx context.Context, e *env, t recvTarget, in *client.Inbox, perSession int) (int, error) {
	cfg := client.PartsConfig{PerSession: perSession, Learned: func(n int) { learnRecvBudget(e, t, n, today()) }}
	if t.held != "" {
		cfg.Keep = t.held
	}
	n, err := in.DrainParts(ctx, t.dial, t.m.owner(), t.m.id(), cfg)
	if errors.Is(err, relay.ErrUnknownFrame) {
		return n, fmt.Errorf("this relay cannot send envelopes in parts (it runs a postern from before 2026-12-06), and this network cuts connections before a whole one gets through: %w", err)
	}
	return n, err
}

// learnRecvBudget says, and remembers for the network as of day, that a
// session carries about n bytes on t's (a day before today: to be checked
// again by the next recv).
func learnRecvBudget(e *env, t recvTarget, n int, day int64) {
	fmt.Fprintf(e.stderr, "a connection carries about %d KB here; receiving over as many connections as it takes\n", n>>10)
	t.facts.update(e, func(f *netFacts) { f.RecvBudget, f.RecvBudgetDay = n, day })
}

// minTaught is the least a whole session that stalled must have carried
// for recv to take it for what a session carries there; one that stalled
// on less leaves it to the parts sessions to learn, a stall window later.
// A session counts only the TLS records it read whole, and a relay sends
// a large envelope in records of up to 16 KiB: behind a freeze at 16 KiB
// a session carried 1,994 bytes (the rest of the limit went to the
// handshake and to the record cut in two), where one of parts carries
// 12 KiB; behind freezes at 40 and 150 KiB it carried 34,740 and 149,599
// bytes (2026-12-06, loopback). A passing fault right after the hello
// teaches nothing either.
const minTaught = 8 << 10

// errTake marks a message recv could not show: nothing more is taken.
var errTake = errors.New("write message")

// recvError says what to do when a relay lost the mailbox.
func recvError(path string, t recvTarget, err error) error {
	if !errors.Is(err, relay.ErrNoMailbox) {
		return err
	}
	if t.m.Next != nil {
		return &explained{err: err, text: fmt.Sprintf("relay %d of %d no longer has mailbox %q under its old id: a rotation of it was interrupted; "+
			"finish it with `postern mailbox rotate --name %s --id %s` (the new keys are in the mailbox file)", t.i+1, t.n, t.m.Name, t.m.Name, path)}
	}
	return &explained{err: err, text: fmt.Sprintf("relay %d of %d no longer has mailbox %q (the relay lost it, or it was deleted): make it again there with "+
		"`postern mailbox create --again --name %s --id %s`; your card stays the same", t.i+1, t.n, t.m.Name, t.m.Name, path)}
}

// followAll keeps a subscription on every target until ctx ends, each
// with its own inbox; their replay ids share ID_FILE.replay.
func followAll(ctx context.Context, e *env, id *envelope.Identity, path string, ts []recvTarget, p *printer) error {
	shared := &sharedReplay{file: client.ReplayFile(path + ".replay"), parts: make([][][envelope.IDSize]byte, len(ts))}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(ts))
	for k, t := range ts {
		in, err := newReceiver(e, id, replayPart{shared, k}, p)
		if err != nil {
			return err
		}
		f := &partsFollow{e: e, path: path, t: t, in: in, p: p, cancel: cancel, due: t.facts.get().RecvBudget > 0}
		go func() {
			err := client.Follow(ctx, f.followConfig())
			f.endTrial()
			f.dropLane()
			if f.fatal != nil {
				err = f.fatal
			}
			if t.held != "" {
				// Added to, not replaced: the follower may not have
				// seen the whole mailbox (never connected, or stopped
				// midway through a push from the start).
				if err := in.AddHeld(t.held); err != nil {
					fmt.Fprintf(e.stderr, "warning: %v\n", err)
				}
			}
			errs <- err
		}()
	}
	var first error
	for range ts {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// partsFollow is what `recv --follow` does for one target on a network
// that cuts flows: after a session that stalled or was reset (at once, on
// a network known to cut), what waits is taken in parts (drainParts)
// before the next subscription, whose push of a 64 KiB envelope would
// stall again. The inbox keeps the fragments of unfinished messages the
// drain found, and the next subscription starts past them
// (client.FollowConfig.After). A relay from before that pushes them
// first again, and the censor cuts every such subscription: while drains
// fetch envelopes and show nothing new (those fragments, again), or
// fail, each waits longer after the last, doubling from minPartsWait to
// maxPartsWait, so that they are not fetched again every few seconds (a
// reviewer's find); a drain that found nothing waiting, or showed a
// message, lets the next run at once.
// On a network known to throttle each flow, what waits is taken over
// lanes before each subscription instead (lanesDue, drainLanes), and a
// large envelope pushed while it follows is left to lanes too (leave).
// A relay that does not know parts is not asked again, and an error of
// the inbox's ends recv. Its methods run in turn on the follower's
// goroutine.
type partsFollow struct {
	e      *env
	path   string // the identity file
	t      recvTarget
	in     *client.Inbox
	p      *printer
	cancel context.CancelFunc
	due    bool          // a drain in parts comes before the next subscription
	wait   time.Duration // after the last drain, before the next
	last   time.Time     // when the last drain ended
	fatal  error         // a message that could not be shown: recv stops
	off    bool          // the relay does not know parts
	// drain takes what waits in parts and says how many envelopes it
	// fetched; nil: drainParts (tests set it).
	drain func(context.Context) (int, error)
	// leftSeq is the envelope whose push the follower last left; have
	// and unacked what that session left (client.PageLeft), for the
	// next lanes.
	leftSeq uint64
	have    []client.Begun
	unacked []client.Ref
	// awaitedID and awaited are what the inbox awaited as the
	// subscription began (client.Inbox.Awaited).
	awaitedID [envelope.IDSize]byte
	awaited   int
	// watching says the subscription began after lanes, so leave may
	// leave it (client.FollowConfig.Watch); leaving that it was left,
	// and the next lanes are judged for it: lanes that found under
	// leaveBytes the inbox did not have (client.LanesStats.New) double
	// leaveWait, the least time from one leave to the next (from
	// minPartsWait to maxPartsWait), and more set it to 0. So fragments
	// that claim many more to come and are never followed by them
	// (anyone with the card can send them, 4 KiB each) cost a few lanes
	// drains, not one each (a reviewer's find). A dial that takes
	// another way forgets the leave (have, unacked, leaving): a later
	// drain is not judged for it.
	watching, leaving bool
	leftAt            time.Time
	leaveWait         time.Duration
	// What a follower on a network not known to throttle each flow
	// does to find it out (followtrial.go): cur is the session Follow
	// dialed last, ctx Follow's; look wakes Follow for a look when a
	// trial ends (client.FollowConfig.Look).
	cur  *client.Client
	ctx  context.Context
	ft   followTrial
	look chan struct{}
}

// followConfig is the follower's client.FollowConfig.
func (f *partsFollow) followConfig() client.FollowConfig {
	dial := func(ctx context.Context) (*client.Client, error) {
		f.endTrial()
		c, err := f.dial(ctx)
		f.ctx, f.cur = ctx, c
		// What the inbox awaits as the subscription begins, whichever way
		// the dial went (a third reviewer's find: only lanes took it, and
		// a subscription that began otherwise and was watched later took
		// any message awaited for one that was coming).
		f.awaitedID, f.awaited = f.in.Awaited()
		return c, err
	}
	cfg := f.in.FollowConfig(dial, f.t.m.owner(), f.t.m.id())
	cfg.Lost, cfg.Leave, cfg.Left = f.lost, f.leave, f.left
	cfg.Watch = func() bool { return f.watching || f.trialWorth() }
	f.look = make(chan struct{}, 1)
	cfg.Look = f.look
	return cfg
}

// Waits between drains in parts that show nothing new.
const (
	minPartsWait = 10 * time.Second
	maxPartsWait = 5 * time.Minute
)

func (f *partsFollow) dial(ctx context.Context) (*client.Client, error) {
	f.watching = false
	if f.due {
		t := time.NewTimer(f.wait - time.Since(f.last))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		before := f.p.shown()
		drain := f.drain
		if drain == nil {
			drain = func(ctx context.Context) (int, error) {
				return drainParts(ctx, f.e, f.t, f.in, f.facts().RecvBudget)
			}
		}
		n, err := drain(ctx)
		f.last, f.due = time.Now(), err != nil
		switch {
		case inboxFailed(err):
			f.fatal = err
			f.cancel()
			return nil, err
		case errors.Is(err, relay.ErrUnknownFrame):
			f.off, f.due = true, false
			return nil, err
		case err == nil && (n == 0 || f.p.shown() > before):
			f.wait = 0
		default:
			f.wait = min(max(2*f.wait, minPartsWait), maxPartsWait)
		}
		if err != nil {
			return nil, err
		}
		// It paged through the mailbox: lanes would page through it
		// again, and take again what it holds (a reviewer's find).
		f.forgetLeave()
		return f.t.dial(ctx)
	}
	if f.lanesDue() {
		return f.drainLanes(ctx)
	}
	f.forgetLeave()
	return f.t.dial(ctx)
}

// forgetLeave drops what a leave left for the next lanes, on a dial that
// takes another way: the refs not acked come again, and are acked as
// replays.
func (f *partsFollow) forgetLeave() {
	f.have, f.unacked, f.leaving = nil, nil, false
	f.dropLane()
}

// lanesDue says whether the backlog goes over lanes before the next
// subscription: on a network known to throttle each flow (or found so by
// the follower's trial: facts), and not to cut flows (drains in parts
// are for that), whose line is not known throttled as a whole today,
// with lanes allowed (POSTERN_LANES), as a plain recv there takes it
// (drainWhole).
func (f *partsFollow) lanesDue() bool {
	facts := f.facts()
	return !f.off && f.t.laneDial != nil && facts.Throttled && facts.RecvBudget == 0 && laneLimit(f.e, facts) > 1
}

// drainLanes takes what waits over lanes beginning on a new connection
// (drainLanes, as a plain recv on the network does), and returns that
// connection for the subscription, which pushes what comes past the
// last envelope the lanes handed over (DrainLanes leaves the cursor);
// a new one if that one was cut while the others took its parts. Until
// 2026-12-07 a follower took its backlog over the subscription's one
// connection whatever the network: 120 KB behind 10 KiB/s a flow took
// 12.7 s (TestRecvFollowLanes). A relay that does not know parts is
// subscribed to on that connection, and not asked again; an error of
// the inbox's (a message refused, the replay file: client.ErrInbox)
// ends recv; any other error is the connection's, and Follow dials
// again after its backoff.
func (f *partsFollow) drainLanes(ctx context.Context) (*client.Client, error) {
	c := f.takeLane()
	if c == nil {
		var err error
		if c, err = f.t.dial(ctx); err != nil {
			return nil, err
		}
	}
	if len(f.unacked) > 0 {
		// If this fails too, they come again and are acked as replays.
		c.Ack(ctx, f.t.m.owner(), f.t.m.id(), f.unacked...)
	}
	facts := f.facts()
	st, err := drainLanes(ctx, f.e, f.t, f.in, c, facts, f.have)
	f.judged(facts, st)
	f.have, f.unacked = nil, nil
	if f.leaving {
		f.leaving = false
		if st.New >= leaveBytes {
			f.leaveWait = 0
		} else {
			f.leaveWait = min(max(2*f.leaveWait, minPartsWait), maxPartsWait)
		}
	}
	switch {
	case err == nil && c.Err() != nil:
		// The others took its parts, and it was cut (a reviewer's
		// find: the subscription failed on it at once, and the cut
		// sent the next connection through a drain in parts). If the
		// network cuts flows, the subscription on the new one finds
		// it, and that cut does. One frozen and not yet found so
		// (its last question was past the mailbox's end, which the
		// lanes do not wait for) is still handed over: a second
		// reviewer's find, as the cut before.
		c.Close()
		c, err = f.t.dial(ctx)
		f.watching = err == nil && f.lanesDue()
		return c, err
	case err == nil:
		// Not if the lanes forgot the throttle (flowsFast), or found
		// the line throttled: the subscription is then one on a
		// network not known throttled (a reviewer's find: it was
		// watched as begun after lanes, and never left nor tried).
		f.watching = f.lanesDue()
		return c, nil
	case errors.Is(err, relay.ErrUnknownFrame):
		f.off = true
		return c, nil
	case inboxFailed(err):
		f.fatal = err
		f.cancel()
	}
	c.Close()
	return nil, err
}

// leave says whether the follower leaves its subscription, pushing p,
// for lanes (client.FollowConfig.Leave); on a subscription that did not
// begin after lanes (watching), trialLeave says. Else, when lanes are
// due (lanesDue): when leaveBytes or more of p are still to come, once
// per envelope; or when the subscription brought a fragment of a message
// of which as much is still to come (client.Inbox.Awaited, which changed
// since the subscription began: on a network known throttled a sender
// seals 16 KiB envelopes, and a message of many came one by one, however
// large). So each leave for a message follows a fragment of it pushed:
// the lanes take what the relay has of it by then, and one whose other
// fragments never come costs no more. Until 2026-12-07 a large message
// sent while a follower was subscribed came over that one connection
// whatever the network: 200 KB behind 64 kbit/s a flow took 28.9 s,
// 10.5–10.7 s since (TestFollowLiveMeasure).
func (f *partsFollow) leave(p client.Pushing) bool {
	if !f.watching {
		return f.trialLeave(p)
	}
	if time.Since(f.leftAt) < f.leaveWait {
		return false
	}
	id, awaited := f.in.Awaited()
	big := p.Total-p.Got >= leaveBytes && p.Seq != f.leftSeq
	// What came of the push is the awaited message's, likely: it is
	// not to come.
	if !big && (awaited-p.Got < leaveBytes || (id == f.awaitedID && awaited >= f.awaited)) {
		return false
	}
	if !f.lanesDue() { // last: it reads the network's facts
		return false
	}
	if big {
		f.leftSeq = p.Seq
	}
	return true
}

// leaveBytes is what must still be coming of a pushed envelope for the
// follower to leave it for lanes: two full parts, what makes a drain
// over lanes open the connections beside the first.
const leaveBytes = 2 * relay.MaxPart

// left keeps what came of a push left for the next lanes, and says so.
func (f *partsFollow) left(pl *client.PageLeft) {
	f.have, f.unacked = append(f.ft.parts, pl.Came...), pl.Unacked
	f.ft.parts = nil
	f.leaving, f.leftAt = true, time.Now()
	fmt.Fprintf(f.e.stderr, "a large message is coming over one connection on a network that throttles each flow: receiving it over up to %d connections at once\n",
		laneLimit(f.e, f.facts()))
}

func (f *partsFollow) lost(err error, wait time.Duration) {
	f.due = !f.off && (f.due || cutByCensor(err))
	fmt.Fprintf(f.e.stderr, "connection lost (%v); retrying in %s\n", recvError(f.path, f.t, err), wait)
}

// recvLaneDial dials lanes (drainWhole) beside a session that came by a
// transport: the way the first went (through the --via relays; else
// through the entry relays when the network's facts say only that
// works; else home), over that transport and without route memory
// (laneEnvOf), racing nothing and learning nothing.
func recvLaneDial(e *env, ms *mailboxes, m *mailboxState, i int, id *envelope.Identity, via []string) func(string) dialFunc {
	homeLine := func() string { return ms.line(m, i) }
	return func(tr string) dialFunc {
		le := laneEnvOf(e, tr)
		lines := make([]string, 0, len(via))
		for _, v := range via {
			if l, err := lineArg(v, descriptor.Prefix); err == nil {
				lines = append(lines, l)
			}
		}
		if len(lines) == 0 && openFacts(e, parsedOrZero(homeLine()).RelayID()).get().ViaEntry {
			lines = entryRelays(e, m.relays())
		}
		if len(lines) > 0 {
			return func(ctx context.Context) (*client.Client, error) { return dialTunnel(ctx, le, homeLine(), lines) }
		}
		return func(ctx context.Context) (*client.Client, error) { return ms.dialAt(ctx, le, id, m, i) }
	}
}

// recvDial is how recv opens sessions to the mailbox's relay i: through a
// tunnel via the --via relays (which join the known-relays list), or to
// that relay with a tunnel via a known relay as fallback when it cannot
// be reached. On a network where only the tunnel worked, it goes first.
func recvDial(e *env, ms *mailboxes, m *mailboxState, i int, id *envelope.Identity, via []string) (dialFunc, error) {
	lines := make([]string, len(via))
	for k, v := range via {
		var err error
		if lines[k], err = lineArg(v, descriptor.Prefix); err != nil {
			return nil, err
		}
	}
	// A session's renewal (mailboxes.renew) may replace the line while
	// another session runs: it is read under the mailboxes' lock.
	homeLine := func() string { return ms.line(m, i) }
	if len(lines) > 0 {
		learnRelays(e, lines)
		return func(ctx context.Context) (*client.Client, error) { return dialTunnel(ctx, e, homeLine(), lines) }, nil
	}
	entries := entryRelays(e, m.relays())
	home := func(ctx context.Context) (*client.Client, error) { return ms.dialAt(ctx, e, id, m, i) }
	if len(entries) == 0 {
		return home, nil
	}
	tunnel := func(ctx context.Context) (*client.Client, error) { return dialTunnel(ctx, e, homeLine(), entries) }
	facts := openFacts(e, parsedOrZero(homeLine()).RelayID())
	return func(ctx context.Context) (*client.Client, error) {
		viaEntry := facts.get().ViaEntry
		first, other := dialFunc(home), dialFunc(tunnel)
		if viaEntry {
			first, other = other, first
		}
		c, swapped, err := raceDial(ctx, first, other)
		err = scrubAddrs(err)
		if via := swapped != viaEntry; err == nil && via != viaEntry {
			facts.update(e, func(f *netFacts) { f.ViaEntry = via })
		}
		if err == nil && swapped != viaEntry {
			fmt.Fprintln(e.stderr, "the home relay is out of reach; receiving through a tunnel via an entry relay")
		}
		return c, err
	}, nil
}

// dialTunnel opens a session to the home relay through one of the entry
// relays (descriptor lines).
func dialTunnel(ctx context.Context, e *env, home string, lines []string) (*client.Client, error) {
	if err := checkDialEnv(e); err != nil {
		return nil, err
	}
	entries := make([]*descriptor.Descriptor, len(lines))
	for i, line := range lines {
		var err error
		if entries[i], _, err = descriptor.ParseStale(line, time.Now()); err != nil {
			return nil, fmt.Errorf("entry relay descriptor: %w", err)
		}
	}
	c, err := client.DialTunnel(ctx, newRegistry(), dialOptions(e), home, entries...)
	if err != nil {
		return nil, explainDial(e, err)
	}
	return c, nil
}

// newReceiver is an inbox behind recv: p shows each complete message and
// it counts as taken only once stdout has it.
func newReceiver(e *env, id *envelope.Identity, replay client.ReplayStore, p *printer) (*client.Inbox, error) {
	return client.NewInbox(client.InboxConfig{
		Identity: id,
		Replay:   replay,
		Warn:     func(w string) { fmt.Fprintln(e.stderr, w) },
		Take:     p.take,
		Sync:     p.sync,
		Taken:    p.seen,
		Wake:     p.wake(),
		// Copies of held fragments, for ID_FILE.held: whatever session
		// brought them, a drain in parts keeps them for the next run.
		KeepHeld: client.MaxKeptBytes,
	})
}

// shown is how many messages the printer has shown.
func (p *printer) shown() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// printer shows messages (one at a time, for several inboxes), names
// their senders from the contacts and applies card updates.
type printer struct {
	e     *env
	book  *contactBook
	line  *progressLine // stderr is a terminal: count messages there
	mu    sync.Mutex
	count int
	// taken holds the envelope ids and the message ids of the messages
	// shown in this run (the newest, as many as the inboxes remember
	// together): inboxes of one mailbox on several relays, followed at
	// once, each hand over a message its sender put on two relays, in
	// the same envelopes or sealed again (client.Message.ID).
	taken *envelope.ReplayCache
	// wakes tell each inbox that a message was taken, whose fragments it
	// may hold (client.InboxConfig.Wake).
	wakes []chan struct{}
	// syncErr is a sync of stdout that failed. It stays: the kernel
	// reports a failed write-back to one sync only, so with several
	// inboxes sharing stdout the next one's sync would pass over data
	// that was lost.
	syncErr error
}

// noID is the zero id: a message handed over without a message id.
var noID [envelope.IDSize]byte

// newPrinter returns the printer of inboxes inboxes, whose taken
// remembers as many ids as they do together.
func newPrinter(e *env, book *contactBook, line *progressLine, inboxes int) *printer {
	return &printer{e: e, book: book, line: line, taken: envelope.NewReplayCache(max(1, inboxes) * client.DefaultReplayCap)}
}

func (p *printer) take(m client.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.syncErr != nil {
		return p.syncErr
	}
	if (m.ID != noID && p.taken.Contains(m.ID)) || slices.ContainsFunc(m.IDs, p.taken.Contains) {
		// Shown already, from another relay: taken. The inbox acks this
		// copy once it has synced stdout, which holds it.
		return nil
	}
	if isCtl, u, err := parseControl(m.Payload); isCtl {
		note := ""
		if err == nil {
			note, err = applyCardUpdate(p.book, m.Sender, u)
		}
		if errors.Is(err, errCardNotSaved) {
			// Not acked: the relay keeps the update for the next recv.
			return fmt.Errorf("%w; it stays on the relay, and the next recv applies it again", err)
		}
		if err != nil {
			note = "warning: " + err.Error()
		}
		if note != "" {
			fmt.Fprintln(p.e.stderr, note)
		}
		p.remember(m)
		return nil
	}
	from := "anonymous"
	if m.Sender != nil {
		if from = p.book.nameOf(m.Sender); from == "" {
			from = base64.RawURLEncoding.EncodeToString(m.Sender)
			fmt.Fprintf(p.e.stderr, "unknown sender %s: not in your contacts; `postern contact add NAME CARD` names them\n", from)
		}
	}
	out := p.e.stdout
	if p.line != nil && isTerminal(out) { // the message goes above the count
		out = aboveWriter{p.line, out}
	}
	if err := printMessage(out, from, m.Payload); err != nil {
		return err
	}
	p.count++
	p.remember(m)
	if p.line != nil {
		p.line.show(fmt.Sprintf("received %d message(s)", p.count))
	}
	return nil
}

// seen reports whether id is an envelope of a message shown in this run
// (through any inbox). It does not wait for p.mu, which a message being
// written to a slow stdout holds: taken has a lock of its own.
func (p *printer) seen(id [envelope.IDSize]byte) bool { return p.taken.Contains(id) }

// remember records the ids of m, a message taken; p.mu is held. It wakes
// every inbox: another may hold fragments of m, of the same sealing or
// of another, to give up.
func (p *printer) remember(m client.Message) {
	for _, id := range m.IDs {
		p.taken.Check(id)
	}
	if m.ID != noID {
		p.taken.Check(m.ID)
	}
	if len(p.wakes) < 2 {
		return // one inbox: it gave up its own
	}
	for _, w := range p.wakes {
		select {
		case w <- struct{}{}:
		default: // woken already
		}
	}
}

// wake returns a new inbox's wake channel.
func (p *printer) wake() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := make(chan struct{}, 1)
	p.wakes = append(p.wakes, w)
	return w
}

// done ends the progress line.
func (p *printer) done() {
	if p.line != nil {
		p.line.end()
	}
}

// printMessage writes one message to w. An error means the message was
// not shown, and it is not acked.
func printMessage(w io.Writer, from string, payload []byte) error {
	if _, err := fmt.Fprintf(w, "== from %s (%d bytes)\n%s\n", from, len(payload), payload); err != nil {
		return fmt.Errorf("%w: %w", errTake, err)
	}
	return nil
}

// sync makes the messages printed so far durable if stdout is a file
// (client.InboxConfig.Sync: once per batch, before they are acked). A
// terminal or pipe cannot be synced, and need not be.
func (p *printer) sync() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.syncErr != nil {
		return p.syncErr
	}
	if f, ok := p.e.stdout.(interface{ Sync() error }); ok {
		if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
			p.syncErr = fmt.Errorf("%w: %w", errTake, err)
			return p.syncErr
		}
	}
	return nil
}

// sharedReplay keeps the replay ids of several inboxes in one file: each
// inbox appends the ids it adds and saves its own list, and a save
// rewrites the file with the union of the lists.
type sharedReplay struct {
	mu    sync.Mutex
	file  client.ReplayFile
	parts [][][envelope.IDSize]byte
}

// replayPart is inbox k's view of a sharedReplay.
type replayPart struct {
	s *sharedReplay
	k int
}

// Load reads the file, and takes what it holds as inbox k's list until the
// inbox saves its own: another inbox's rewrite keeps these ids, which
// inbox k may not have acked yet.
func (r replayPart) Load() ([][envelope.IDSize]byte, error) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	ids, err := r.s.file.Load()
	if err == nil {
		r.s.parts[r.k] = slices.Clone(ids)
	}
	return ids, err
}

func (r replayPart) Save(ids [][envelope.IDSize]byte) error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.s.parts[r.k] = slices.Clone(ids) // Append adds to it: not the inbox's slice
	seen := map[[envelope.IDSize]byte]bool{}
	var all [][envelope.IDSize]byte
	for _, part := range r.s.parts {
		for _, id := range part {
			if !seen[id] {
				seen[id] = true
				all = append(all, id)
			}
		}
	}
	return r.s.file.Save(all)
}

// Append adds ids to the file and to inbox k's list, so that another
// inbox's save keeps them.
func (r replayPart) Append(ids [][envelope.IDSize]byte) error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.s.parts[r.k] = append(r.s.parts[r.k], ids...)
	return r.s.file.Append(ids)
}
