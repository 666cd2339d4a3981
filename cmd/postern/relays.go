package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/postern/postern/transport/descriptor"
)

// The known-relays list is POSTERN_HOME/relays (mode 0600): one relay
// descriptor line (postern-relay1:...) per line, nothing else. send and
// recv use these relays as entry relays when the home relay cannot be
// reached by any transport; --via adds the relays it names. It holds no
// address beyond those the descriptors themselves publish.

// relaysFile is where the known-relays list lives.
func relaysFile(e *env) string { return filepath.Join(homeDir(e), "relays") }

// knownRelays reads the list; a missing file is an empty list, and lines
// that are not descriptors are ignored with a warning.
func knownRelays(e *env) []string {
	data, err := os.ReadFile(relaysFile(e))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(e.stderr, "warning: known relays: %v\n", err)
		}
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if _, _, err := descriptor.ParseStale(l, time.Now()); err != nil {
			fmt.Fprintf(e.stderr, "warning: %s holds a line that is not a relay descriptor (%v); ignoring it\n", relaysFile(e), err)
			continue
		}
		out = append(out, l)
	}
	return out
}

// addKnownRelays adds lines to the list. A relay already listed keeps one
// line: the descriptor that expires last.
func addKnownRelays(e *env, lines ...string) error {
	list := knownRelays(e)
	for _, l := range lines {
		d, _, err := descriptor.ParseStale(l, time.Now())
		if err != nil {
			return err
		}
		i := indexRelay(list, d)
		switch {
		case i < 0:
			list = append(list, l)
		case d.Expires.After(parsedOrZero(list[i]).Expires):
			list[i] = l
		}
	}
	if err := os.MkdirAll(homeDir(e), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(relaysFile(e), []byte(strings.Join(list, "\n")+"\n"), 0o600)
}

// indexRelay is the index of d's relay in list, or -1.
func indexRelay(list []string, d *descriptor.Descriptor) int {
	for i, l := range list {
		if o := parsedOrZero(l); o.RelayKey != nil && descriptor.SameRelay(o, d) {
			return i
		}
	}
	return -1
}

func parsedOrZero(line string) *descriptor.Descriptor {
	d, _, err := descriptor.ParseStale(line, time.Now())
	if err != nil {
		return &descriptor.Descriptor{}
	}
	return d
}

// entryRelays are the known relays other than the home relays in homes.
func entryRelays(e *env, homes []string) []string {
	var out []string
	for _, l := range knownRelays(e) {
		if indexRelay(homes, parsedOrZero(l)) < 0 {
			out = append(out, l)
		}
	}
	return out
}

// learnRelays adds the entry relays given with --via to the list, so
// later sends and receives can fall back to them unasked.
func learnRelays(e *env, lines []string) {
	if err := addKnownRelays(e, lines...); err != nil {
		fmt.Fprintf(e.stderr, "warning: could not remember the --via relays in %s: %v\n", relaysFile(e), err)
	}
}

// relaysCmds are `postern relays add|list|remove`.
func relaysCmds() []command {
	return []command{
		{name: "relays add", args: "DESCRIPTOR|FILE...",
			summary: "Add relays to the known-relays list (POSTERN_HOME/relays). send and recv go\n" +
				"through one of them when the home relay cannot be reached by any transport.",
			setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
				return func(_ context.Context, args []string) error { return relaysAdd(e, args) }
			}},
		{name: "relays list", summary: "Print the known relays: relay id, then the descriptor line.",
			setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
				return func(context.Context, []string) error { return relaysList(e) }
			}},
		{name: "relays remove", args: "RELAY_ID...", summary: "Remove relays from the known-relays list.",
			setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
				return func(_ context.Context, args []string) error { return relaysRemove(e, args) }
			}},
	}
}

func relaysAdd(e *env, args []string) error {
	if len(args) == 0 {
		return usageErr("give at least one descriptor (postern-relay1:...) or a file holding one")
	}
	lines := make([]string, len(args))
	for i, a := range args {
		l, err := lineArg(a, descriptor.Prefix)
		if err != nil {
			return err
		}
		if _, _, err := descriptor.ParseStale(l, time.Now()); err != nil {
			return fmt.Errorf("relay descriptor %s: %w", truncate(a, 24), err)
		}
		lines[i] = l
	}
	return addKnownRelays(e, lines...)
}

func relaysList(e *env) error {
	for _, l := range knownRelays(e) {
		fmt.Fprintf(e.stdout, "%s %s\n", parsedOrZero(l).RelayID(), l)
	}
	return nil
}

func relaysRemove(e *env, ids []string) error {
	if len(ids) == 0 {
		return usageErr("give the relay id of each relay to remove (see `postern relays list`)")
	}
	drop := map[string]bool{}
	for _, id := range ids {
		drop[id] = true
	}
	var keep []string
	for _, l := range knownRelays(e) {
		if id := parsedOrZero(l).RelayID(); drop[id] {
			delete(drop, id)
			continue
		}
		keep = append(keep, l)
	}
	for id := range drop {
		return fmt.Errorf("no relay %s in %s; `postern relays list` shows the ids", truncate(id, 16), relaysFile(e))
	}
	return writeFileAtomic(relaysFile(e), []byte(strings.Join(keep, "\n")+"\n"), 0o600)
}
