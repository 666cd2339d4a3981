package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"unicode"

	"github.com/postern/postern/envelope"
)

// Contacts live beside the identity, in ID_FILE.contacts (mode 0600): a
// JSON object from a name the user chose to the contact's card line.
// Nothing else is kept: no addresses, no history.

// contactsPath is where the contacts of the identity at idPath live.
func contactsPath(idPath string) string { return idPath + ".contacts" }

// contactBook is one identity's contacts.
type contactBook struct {
	path  string
	Cards map[string]string `json:"cards"` // name → card line
}

func loadContacts(idPath string) (*contactBook, error) {
	b := &contactBook{path: contactsPath(idPath), Cards: map[string]string{}}
	data, err := os.ReadFile(b.path)
	if errors.Is(err, fs.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("contacts: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(b); err != nil || b.Cards == nil {
		return nil, fmt.Errorf("contacts file %s is damaged (%v): restore it from a backup, or move it away and add your contacts again", b.path, err)
	}
	return b, nil
}

// update applies change to the contacts as they are on disk now, under
// the identity's state lock, writes them, and takes them as b's. A
// command must not write back the copy it loaded when it began: another
// postern (a `contact add`, a `recv --follow` applying a card update) may
// have changed the file meanwhile.
func (b *contactBook) update(change func(disk *contactBook) error) error {
	beforeUpdate()
	defer lockState(b.idPath())()
	disk, err := loadContacts(b.idPath())
	if err != nil {
		return err
	}
	if err := change(disk); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(disk, "", "  ")
	if err := writeFileAtomic(disk.path, append(data, '\n'), 0o600); err != nil {
		return err
	}
	b.Cards = disk.Cards
	return nil
}

// idPath is the identity file the book belongs to.
func (b *contactBook) idPath() string { return strings.TrimSuffix(b.path, ".contacts") }

// card returns the parsed card of contact name.
func (b *contactBook) card(name string) (*envelope.Card, error) {
	line, ok := b.Cards[name]
	if !ok {
		return nil, fmt.Errorf("no contact named %q: `postern contact list` shows yours, `postern contact add` adds one", name)
	}
	return envelope.ParseCard(line)
}

// nameOf returns the contact whose sender key is auth, or "".
func (b *contactBook) nameOf(auth []byte) string {
	for _, name := range b.names() {
		if c, err := envelope.ParseCard(b.Cards[name]); err == nil && bytes.Equal(c.Auth, auth) {
			return name
		}
	}
	return ""
}

func (b *contactBook) names() []string {
	names := make([]string, 0, len(b.Cards))
	for n := range b.Cards {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// checkContactName accepts 1 to 64 printable characters without spaces
// that cannot be mistaken for a card or a path.
func checkContactName(name string) error {
	if name == "anonymous" || name == "unknown" {
		return fmt.Errorf("contact name %q: recv uses that word for senders it cannot name; choose another", name)
	}
	if name == "" || len(name) > 64 || strings.HasPrefix(name, "postern-") || strings.ContainsAny(name, `/\`) {
		return fmt.Errorf("contact name %q: use 1 to 64 letters, digits or punctuation, no spaces or slashes, not starting with \"postern-\"", name)
	}
	for _, r := range name {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("contact name %q: no spaces or control characters", name)
		}
	}
	return nil
}

// cardFingerprint is the fingerprint `id show` prints for the identity
// behind card.
func cardFingerprint(c *envelope.Card) string {
	return fingerprint(envelope.PublicKeys{XWing: c.XWing, X25519: c.X25519, Auth: c.Auth})
}

// safetyNumber is what two people compare aloud: it depends on both
// fingerprints and not on who computes it.
func safetyNumber(a, b string) string {
	pair := []string{a, b}
	sort.Strings(pair)
	sum := sha256.Sum256([]byte("postern safety number v1\x00" + pair[0] + "\x00" + pair[1]))
	var groups []string
	for i := 0; i < 6; i++ {
		v := uint32(sum[3*i])<<16 | uint32(sum[3*i+1])<<8 | uint32(sum[3*i+2])
		groups = append(groups, fmt.Sprintf("%05d", v%100000))
	}
	return strings.Join(groups, " ")
}

func contactAddCmd() command {
	return command{
		name: "contact add",
		args: "NAME CARD",
		summary: "Add a contact: a name of your choosing for a contact card (a postern-card1: line\n" +
			"or a file holding one). Check the fingerprint with `contact show` before you rely on it.\n\n" +
			"example:\n  postern contact add --id demo/alice.id bob bob.card",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			replace := fs.Bool("replace", false, "replace a contact of the same name (a new card after a rotation)")
			return func(ctx context.Context, args []string) error {
				if len(args) != 2 {
					return usageErr("want NAME and CARD, got %d arguments", len(args))
				}
				if err := checkContactName(args[0]); err != nil {
					return usageErr("%v", err)
				}
				line, err := lineArg(args[1], envelope.CardPrefix)
				if err != nil {
					return err
				}
				card, err := envelope.ParseCard(line)
				if err != nil {
					return err
				}
				book, err := loadContacts(resolveID(e, *idPath))
				if err != nil {
					return err
				}
				if err := book.update(func(disk *contactBook) error {
					if _, ok := disk.Cards[args[0]]; ok && !*replace {
						return fmt.Errorf("you already have a contact named %q: pass --replace to give it this card", args[0])
					}
					disk.Cards[args[0]] = line
					return nil
				}); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "added %s, fingerprint %s\n", args[0], cardFingerprint(card))
				return nil
			}
		},
	}
}

func contactListCmd() command {
	return command{
		name:    "contact list",
		summary: "List your contacts with their fingerprints.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				book, err := loadContacts(resolveID(e, *idPath))
				if err != nil {
					return err
				}
				if len(book.Cards) == 0 {
					fmt.Fprintln(e.stderr, "no contacts yet: `postern contact add NAME CARD` adds one")
				}
				for _, name := range book.names() {
					fp := "(card does not parse)"
					if c, err := book.card(name); err == nil {
						fp = cardFingerprint(c)
					}
					fmt.Fprintf(e.stdout, "%-20s %s\n", name, fp)
				}
				return nil
			}
		},
	}
}

func contactShowCmd() command {
	return command{
		name: "contact show",
		args: "NAME",
		summary: "Show a contact's fingerprint, yours, and the safety number you both see.\n" +
			"Compare the safety number aloud, in person or on a call: if it matches on both\n" +
			"sides, the cards were not swapped on the way.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			return func(ctx context.Context, args []string) error {
				if len(args) != 1 {
					return usageErr("want one NAME")
				}
				path := resolveID(e, *idPath)
				id, err := envelope.LoadIdentity(path)
				if err != nil {
					return err
				}
				book, err := loadContacts(path)
				if err != nil {
					return err
				}
				card, err := book.card(args[0])
				if err != nil {
					return err
				}
				theirs, mine := cardFingerprint(card), fingerprint(id.Public())
				fmt.Fprintf(e.stdout, "contact:       %s\n", args[0])
				fmt.Fprintf(e.stdout, "their key:     %s\n", theirs)
				fmt.Fprintf(e.stdout, "your key:      %s\n", mine)
				fmt.Fprintf(e.stdout, "safety number: %s\n", safetyNumber(theirs, mine))
				return nil
			}
		},
	}
}
