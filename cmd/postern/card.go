package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
)

func cardShowCmd() command {
	return command{
		name: "card show",
		args: "CARD",
		summary: "Show what a contact card holds: the fingerprint of its owner, its home relays\n" +
			"with their transports and expiry, the suites it accepts, and whether sending needs\n" +
			"its capability. CARD is a postern-card1: line or a file holding one.\n\n" +
			"example:\n  postern card show bob.card",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			return func(ctx context.Context, args []string) error {
				if len(args) != 1 {
					return usageErr("want one CARD")
				}
				line, err := lineArg(args[0], envelope.CardPrefix)
				if err != nil {
					return err
				}
				card, err := envelope.ParseCard(line)
				if err != nil {
					return err
				}
				printCard(e.stdout, card, time.Now())
				return nil
			}
		},
	}
}

// printCard writes what card holds, for a person to read.
func printCard(w io.Writer, card *envelope.Card, now time.Time) {
	fmt.Fprintf(w, "fingerprint: %s\n", cardFingerprint(card))
	var suites []string
	for _, s := range card.Suites {
		suites = append(suites, suiteName(s))
	}
	fmt.Fprintf(w, "suites:      %s\n", strings.Join(suites, ", "))
	if len(card.SendCap) > 0 {
		fmt.Fprintln(w, "capability:  yes (only senders holding this card can deliver)")
	} else {
		fmt.Fprintln(w, "capability:  no (anyone with the mailbox's card can send)")
	}
	fmt.Fprintf(w, "relays:      %d\n", len(card.Relays))
	for i, line := range card.Relays {
		fmt.Fprintf(w, "  %d. %s\n", i+1, describeRelay(line, now))
	}
}

func suiteName(s envelope.Suite) string {
	switch s {
	case envelope.SuiteXWing:
		return "X-Wing (post-quantum hybrid)"
	case envelope.SuiteX25519:
		return "X25519"
	}
	return fmt.Sprintf("unknown suite %d", s)
}

// describeRelay is one line about a descriptor: its relay id, transports
// and expiry, or why it is unusable.
func describeRelay(line string, now time.Time) string {
	d, stale, err := descriptor.ParseStale(line, now)
	if err != nil {
		return "unusable descriptor: " + err.Error()
	}
	var trs []string
	for _, ep := range d.Endpoints {
		trs = append(trs, ep.Transport)
	}
	state := "expires " + d.Expires.UTC().Format("2006-01-02")
	if stale {
		state = "EXPIRED " + d.Expires.UTC().Format("2006-01-02") + " (the relay re-signs it; ask the owner for a fresh card if sending fails)"
	}
	return fmt.Sprintf("relay %s, %s, %s", d.RelayID(), strings.Join(trs, "+"), state)
}
