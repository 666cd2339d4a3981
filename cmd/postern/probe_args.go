package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// probeSpec is what the arguments of `postern probe` name: the
// relay/transport pairs to probe, and the targets /probe accepts: the
// relay ids, never contact names (a scrape that could tell a known name
// from an unknown one would learn whom the operator talks to).
type probeSpec struct {
	pairs   []probeTarget
	targets map[string][]string // relay id → itself
}

// pairsOf returns the pairs of target, only those over transportName if
// it is not "".
func (s *probeSpec) pairsOf(target, transportName string) []probeTarget {
	var out []probeTarget
	for _, id := range s.targets[target] {
		for _, p := range s.pairs {
			if p.relay == id && (transportName == "" || p.transport == transportName) {
				out = append(out, p)
			}
		}
	}
	return out
}

// probeArg is one argument resolved: what it was, the contact name it
// used if any, and the relay descriptor lines it stands for.
type probeArg struct {
	kind    string // "relay descriptor", "contact card" or "contact"
	contact string
	lines   []string
}

// resolveProbeArgs reads every argument: a relay descriptor or contact
// card (a line, or a file holding one) or a contact's name in the contacts
// of the identity at idPath. Errors name the argument by its position and
// never repeat a line, which holds keys. A descriptor that has expired is
// probed anyway, with a warning on warn: a relay keeps its keys when it
// re-signs.
func resolveProbeArgs(warn io.Writer, idPath string, args []string) (*probeSpec, error) {
	s := &probeSpec{targets: map[string][]string{}}
	index := map[[2]string]int{}
	var book *contactBook
	for i, a := range args {
		arg, err := readProbeArg(a, idPath, &book)
		if err != nil {
			return nil, fmt.Errorf("argument %d: %w", i+1, err)
		}
		for j, line := range arg.lines {
			d, stale, err := descriptor.ParseStale(line, time.Now())
			if err != nil {
				if arg.kind == "relay descriptor" {
					return nil, fmt.Errorf("argument %d (%s): %w", i+1, arg.kind, err)
				}
				return nil, fmt.Errorf("argument %d (%s), relay %d: %w", i+1, arg.kind, j+1, err)
			}
			id := d.RelayID()
			if stale {
				fmt.Fprintf(warn, "warning: the descriptor of relay %s expired on %s; probing it anyway (a relay keeps its keys when it renews)\n",
					id, d.Expires.UTC().Format("2006-01-02"))
			}
			if _, ok := s.targets[id]; ok {
				continue // a relay given twice is probed once
			}
			s.targets[id] = []string{id}
			s.addPairs(d, index)
		}
	}
	return s, nil
}

// addPairs groups d's endpoints by transport, in the descriptor's order.
func (s *probeSpec) addPairs(d *descriptor.Descriptor, index map[[2]string]int) {
	id := d.RelayID()
	for _, c := range route.FromDescriptor(d, route.Filter{}) {
		k := [2]string{id, c.Endpoint.Transport}
		i, ok := index[k]
		if !ok {
			i = len(s.pairs)
			index[k] = i
			s.pairs = append(s.pairs, probeTarget{relay: id, transport: c.Endpoint.Transport})
		}
		s.pairs[i].cands = append(s.pairs[i].cands, c)
	}
}

// readProbeArg tells what a is: a descriptor or card line, a contact's
// name (the contacts are loaded into *book the first time one is needed),
// or a file holding a descriptor or a card.
func readProbeArg(a, idPath string, book **contactBook) (probeArg, error) {
	v := strings.TrimSpace(a)
	switch {
	case strings.HasPrefix(v, descriptor.Prefix):
		return descriptorArg(a)
	case strings.HasPrefix(v, envelope.CardPrefix):
		return cardArg(a, "contact card", "")
	}
	if *book == nil {
		b, err := loadContacts(idPath)
		if err != nil {
			return probeArg{}, err
		}
		*book = b
	}
	if line, ok := (*book).Cards[v]; ok {
		return cardArg(line, "contact", v)
	}
	data, err := os.ReadFile(v)
	if err != nil {
		return probeArg{}, notProbeArg(v, err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		switch l = strings.TrimSpace(l); {
		case strings.HasPrefix(l, descriptor.Prefix):
			return descriptorArg(v)
		case strings.HasPrefix(l, envelope.CardPrefix):
			return cardArg(v, "contact card", "")
		}
	}
	return probeArg{}, fmt.Errorf("%s holds no line starting with %s or %s", v, descriptor.Prefix, envelope.CardPrefix)
}

func descriptorArg(a string) (probeArg, error) {
	line, err := lineArg(a, descriptor.Prefix)
	if err != nil {
		return probeArg{}, err
	}
	return probeArg{kind: "relay descriptor", lines: []string{line}}, nil
}

// cardArg reads a card (a line or a file) and returns its home relays.
func cardArg(a, kind, contact string) (probeArg, error) {
	line, err := lineArg(a, envelope.CardPrefix)
	if err != nil {
		return probeArg{}, err
	}
	card, err := envelope.ParseCard(line)
	if err != nil {
		if contact != "" {
			return probeArg{}, fmt.Errorf("contact %q: %w: `postern contact add --replace %s CARD` gives it a new card", contact, err, contact)
		}
		return probeArg{}, err // it says "contact card: ..."
	}
	if len(card.Relays) == 0 {
		return probeArg{}, fmt.Errorf("%s: the card names no relay: ask its owner for a card made by `postern mailbox create`", kind)
	}
	return probeArg{kind: kind, contact: contact, lines: card.Relays}, nil
}

// notProbeArg explains an argument that is no line, no contact and no
// readable file. It repeats the argument only when it could be a contact
// name or is a path: anything else may be a damaged line holding keys.
func notProbeArg(v string, err error) error {
	name := checkContactName(v) == nil
	path := strings.ContainsAny(v, `/\`) && len(v) <= 256 // base64url lines hold no slashes
	switch {
	case errors.Is(err, os.ErrNotExist) && name:
		return fmt.Errorf("no contact named %q and no such file: `postern contact add %s CARD` adds a contact (with --id if it is not your default identity), `postern contact list` shows yours",
			v, v)
	case name || path:
		return err
	}
	return fmt.Errorf("not a relay descriptor (%s...), a contact card (%s...), a contact's name or a readable file: copy the whole line again",
		descriptor.Prefix, envelope.CardPrefix)
}
