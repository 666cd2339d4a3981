package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport/descriptor"
)

// sendArgs are send's flags.
type sendArgs struct {
	idPath, to, file string
	anonymous, again bool
	via              listFlag
	timeout          time.Duration
}

func sendCmd() command {
	return command{
		name: "send",
		summary: "Send a message (stdin, or --file) to a contact or a contact card, sealed so the\n" +
			"relay learns neither sender nor content. Returns once the relay has stored it durably.\n" +
			"With --via, an entry relay takes it for the recipient's home relay and forwards it.\n\n" +
			"examples:\n  echo \"hello bob\" | postern send --id demo/alice.id --to bob\n" +
			"  postern send --id demo/alice.id --to bob.card --file photo.jpg\n\n" + dialEnvHelp,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			var a sendArgs
			fs.StringVar(&a.idPath, "id", "", "identity `file` (default $POSTERN_HOME/identity or ~/.config/postern/identity)")
			fs.StringVar(&a.to, "to", "", "recipient: a contact `name` (see `postern contact list`), a contact card\n"+
				"(postern-card1:...) or a file holding one")
			fs.StringVar(&a.file, "file", "", "read the message from this `file` instead of stdin")
			fs.BoolVar(&a.anonymous, "anonymous", false, "do not authenticate as the sender (no identity needed)")
			fs.DurationVar(&a.timeout, "timeout", 0, "give up after this long, e.g. 1m (default: no limit)")
			fs.BoolVar(&a.again, "again", false, "send again a message an earlier send gave up on (the same bytes to the same\n"+
				"contact, within 7 days): under its message id, so the recipient shows it once")
			networkFlag(fs, e)
			fs.Var(&a.via, "via", "entry relay `descriptor` (or a file holding it) to send through, when the home relay\n"+
				"is out of reach; repeat to give several. The entry relay learns the home relay, never the mailbox")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				if a.to == "" {
					return usageErr("--to is required")
				}
				return runSend(ctx, e, &a)
			}
		},
	}
}

// runSend seals the message and hands its envelopes to the home relay, or
// to an entry relay with --via.
func runSend(ctx context.Context, e *env, a *sendArgs) error {
	path := resolveID(e, a.idPath)
	card, err := recipientCard(a.to, path)
	if err != nil {
		return err
	}
	var from *envelope.Identity
	if !a.anonymous {
		if from, err = envelope.LoadIdentity(path); err != nil {
			return err
		}
	}
	msg, err := readMessage(e, a, maxMessage(card))
	if err != nil {
		return err
	}
	if len(msg) == 0 {
		fmt.Fprintln(e.stderr, "warning: the message is empty (nothing on stdin?); sending it anyway")
	}
	ctx, cancel := withTimeout(ctx, a.timeout)
	defer cancel()
	mr := startMetrics(e)
	defer mr.stop()
	s, err := deliver(ctx, e, card, from, msg, a.via, a.again)
	if err != nil {
		return sendError(ctx, a.timeout, s, err)
	}
	fmt.Fprintf(e.stderr, "sent %d bytes in %d envelope(s)\n", len(msg), len(s.envs))
	return nil
}

// recipientCard resolves --to: a card line, a contact's name, or a file
// holding a card.
func recipientCard(to, idPath string) (*envelope.Card, error) {
	line := strings.TrimSpace(to)
	if !strings.HasPrefix(line, envelope.CardPrefix) {
		book, err := loadContacts(idPath)
		if err != nil {
			return nil, err
		}
		if _, ok := book.Cards[line]; ok {
			return book.card(line)
		}
		if _, statErr := os.Stat(to); statErr != nil {
			return nil, fmt.Errorf("--to %s: no contact of that name and no such file: `postern contact list` shows your contacts; a card starts with %s",
				truncate(to, 24), envelope.CardPrefix)
		}
	}
	line, err := lineArg(to, envelope.CardPrefix)
	if err != nil {
		return nil, err
	}
	card, err := envelope.ParseCard(line)
	if err != nil {
		return nil, err
	}
	if len(card.Relays) == 0 {
		return nil, errors.New("the contact card names no relay: ask its owner for a card made by `postern mailbox create`")
	}
	return card, nil
}

// fragmentHeaderSize is the fragment header inside each envelope of a
// split message (message id 16, index 2, count 2: see envelope).
const fragmentHeaderSize = 16 + 2 + 2

// maxMessage is the largest message postern sends to card: at most
// envelope.MaxFragments envelopes of the largest bucket, each carrying
// its payload less the fragment header, and never more than SealMessage
// splits.
func maxMessage(card *envelope.Card) int {
	suite := envelope.SuiteXWing
	if len(card.Suites) > 0 {
		suite = card.Suites[0]
	}
	chunk := envelope.MaxPayload(suite, envelope.Bucket64K) - fragmentHeaderSize
	return min(envelope.MaxMessageSize, envelope.MaxFragments*chunk)
}

// readMessage reads --file or stdin, refusing more than limit bytes with
// the real size. On a terminal it says how to end the message.
func readMessage(e *env, a *sendArgs, limit int) ([]byte, error) {
	if a.file != "" {
		if st, err := os.Stat(a.file); err == nil && st.Size() > int64(limit) {
			return nil, tooLarge(st.Size(), limit)
		}
		msg, err := os.ReadFile(a.file)
		if err == nil && len(msg) > limit {
			return nil, tooLarge(int64(len(msg)), limit)
		}
		return msg, err
	}
	if isTerminal(e.stdin) {
		fmt.Fprintln(e.stderr, "type the message, end with Ctrl-D on a line of its own")
	}
	msg, err := io.ReadAll(io.LimitReader(e.stdin, int64(limit)+1))
	if err != nil || len(msg) <= limit {
		return msg, err
	}
	rest, _ := io.Copy(io.Discard, e.stdin)
	return nil, tooLarge(int64(len(msg))+rest, limit)
}

func tooLarge(size int64, limit int) error {
	return fmt.Errorf("the message is %s (%d bytes), and one message holds at most %s (%d bytes): split it into parts of at most %s and send each",
		mib(size), size, mib(int64(limit)), limit, mib(int64(limit)))
}

// mib is n bytes in MiB for people.
func mib(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }

// deliver seals msg to card and sends it: to the home relays, or through
// the entry relays in via; again reuses the message id of an earlier send
// of msg that gave up (see unsent.go). The sender is returned even on
// failure, to say how far it got.
func deliver(ctx context.Context, e *env, card *envelope.Card, from *envelope.Identity, msg []byte, via []string, again bool) (*sender, error) {
	s := &sender{e: e, card: card, from: from, msg: msg}
	if err := s.route(via); err != nil {
		return s, err
	}
	rec := beginRecord(s, again)
	if err := s.seal(s.known); err != nil {
		return s, err
	}
	rec.start(s)
	if len(s.envs) > 1 && isTerminal(e.stderr) {
		// The count stays on the last line; what the sender writes to
		// stderr meanwhile goes above it.
		line := &progressLine{w: e.stderr}
		ec := *e
		ec.stderr = line
		s.e = &ec
		s.progress = func(done, total int) { line.show(fmt.Sprintf("sent %d/%d envelopes", done, total)) }
		defer line.end()
	}
	err := s.run(ctx)
	rec.finish(s, err)
	return s, err
}

// sendError says what a failed send means for the user.
func sendError(ctx context.Context, timeout time.Duration, s *sender, err error) error {
	switch {
	case errors.Is(err, relay.ErrNoMailbox):
		return errors.New("the recipient's relay has no such mailbox: they moved it (rotated) or deleted it. `postern recv` applies a new card they sent you; otherwise ask them for their current card")
	}
	if errors.Is(err, relay.ErrRelayFull) { // relay/server, sendlimit.go
		err = fmt.Errorf("%w (a relay half full or more also limits how much one address sends a day: try again later, or from another network)", err)
	}
	again := "send the message again"
	if s.recorded {
		again = "send it again with --again (the same bytes to the same contact: the recipient shows it once)"
	}
	switch {
	case timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) && !s.issued:
		return fmt.Errorf("gave up after %s (--timeout) before any envelope went out: %s, or give a longer --timeout", timeout, again)
	case timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("gave up after %s (--timeout) with %d of %d envelopes acknowledged by the relay (it may hold more: answers can be lost): %s, or give a longer --timeout",
			timeout, s.ackedCount(), len(s.envs), again)
	case s.issued && s.recorded:
		return fmt.Errorf("%w\n(the relay may hold some or all of the message: %s)", err, again)
	case s.recorded:
		return fmt.Errorf("%w\n(an earlier send of this message may have left it on the relay: %s)", err, again)
	}
	return err
}

// route sets where the sender may go: the entry relays of --via only
// (which join the known-relays list), or the home relay with the known
// relays as fallback; and what this network is known to do.
func (s *sender) route(via []string) error {
	for _, v := range via {
		line, err := lineArg(v, descriptor.Prefix)
		if err != nil {
			return err
		}
		s.entries = append(s.entries, line)
	}
	if s.forced = len(s.entries) > 0; s.forced {
		learnRelays(s.e, s.entries)
	} else {
		s.entries = entryRelays(s.e, s.card.Relays)
	}
	home, _, err := descriptor.ParseStale(s.card.Relays[0], time.Now())
	if err != nil {
		return fmt.Errorf("the contact card's home relay: %w", err)
	}
	s.facts = openFacts(s.e, home.RelayID())
	s.known = s.facts.get()
	if s.known.Budget > 0 && stale(s.known.BudgetDay) {
		// Checked again (netfacts.go): this send goes as on a network
		// not known to cut flows until a connection shows which it is.
		s.recheck, s.known.Budget = s.known.Budget, 0
	}
	return nil
}

// forwardEpoch is the key epoch of relays' forward keys; relays do not
// rotate them yet.
const forwardEpoch = 1
