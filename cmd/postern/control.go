package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"slices"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
)

// Control messages are ordinary messages, sealed and sent like any other,
// whose payload a receiving postern recognises and applies instead of
// printing. Layout (version 1):
//
//	offset  size  field
//	0       16    magic    "postern-control\x00"
//	16      1     version  = 1 (controlVersion)
//	17      1     type     1: card update
//	18      rest  body     per type
//
// Card update (type 1), sent by `mailbox rotate` to every contact:
//
//	18      32    old      id of the mailbox the new card replaces
//	50      rest  card     the new contact card line (postern-card1:...)
//
// The receiver applies a card update only when the envelope is
// authenticated (not anonymous), its sender key is the sender key of the
// contact whose card names the old mailbox, and the new card carries the
// same public keys as that contact's card: a rotation moves the mailbox,
// never the identity, so the fingerprint both sides compared stays valid.
// Anything else is refused with a warning and never changes a contact.
// A control message of a later version or unknown type is not applied;
// recv says to upgrade.
const (
	controlMagic      = "postern-control\x00"
	controlVersion    = 1
	controlCardUpdate = 1
	controlHeaderSize = len(controlMagic) + 2
)

// cardUpdate is the body of a card update.
type cardUpdate struct {
	old  [32]byte
	card string
}

func (u cardUpdate) encode() []byte {
	b := append([]byte(controlMagic), controlVersion, controlCardUpdate)
	b = append(b, u.old[:]...)
	return append(b, u.card...)
}

// errControl marks a control message this build cannot apply.
var errControl = errors.New("control message")

// parseControl reports whether payload is a control message and, if it is
// a card update this build knows, returns it.
func parseControl(payload []byte) (isControl bool, u cardUpdate, err error) {
	if !bytes.HasPrefix(payload, []byte(controlMagic)) {
		return false, u, nil
	}
	if len(payload) < controlHeaderSize {
		return true, u, fmt.Errorf("%w: truncated", errControl)
	}
	v, typ, body := payload[len(controlMagic)], payload[len(controlMagic)+1], payload[controlHeaderSize:]
	switch {
	case v != controlVersion:
		return true, u, fmt.Errorf("%w of version %d: upgrade postern to apply it", errControl, v)
	case typ != controlCardUpdate:
		return true, u, fmt.Errorf("%w of unknown type %d: upgrade postern to apply it", errControl, typ)
	case len(body) < 32:
		return true, u, fmt.Errorf("%w: truncated card update", errControl)
	}
	copy(u.old[:], body)
	u.card = string(body[32:])
	return true, u, nil
}

// errCardNotSaved marks a card update that was accepted but could not be
// written to the contacts: its envelope must stay on the relay (not acked),
// so that the next recv applies it again.
var errCardNotSaved = errors.New("card update not saved")

// applyCardUpdate checks a card update from sender against the contacts
// as they are on disk now (a long `recv --follow` may have loaded them
// hours ago: a contact added or replaced since must count) and, if it
// holds, gives the contact the new card. It returns what to tell the
// user. An update accepted but not written is errCardNotSaved.
func applyCardUpdate(book *contactBook, sender []byte, u cardUpdate) (string, error) {
	if sender == nil {
		return "", fmt.Errorf("refused an anonymous card update: a card changes only by a message from its own sender key")
	}
	card, err := envelope.ParseCard(u.card)
	if err != nil {
		return "", fmt.Errorf("refused a card update that does not parse: %w", err)
	}
	var note string
	var refused error
	err = book.update(func(disk *contactBook) error {
		note, refused = decideCardUpdate(disk, sender, u, card)
		return refused
	})
	switch {
	case refused != nil:
		return "", refused
	case err != nil:
		name := contactName(book, sender)
		return "", fmt.Errorf("%w: %s's card changed, but the contacts could not be saved: %w", errCardNotSaved, name, err)
	}
	return note, nil
}

// contactName names the contact whose sender key is sender, for an error.
func contactName(book *contactBook, sender []byte) string {
	if name := book.nameOf(sender); name != "" {
		return name
	}
	return "a contact"
}

// decideCardUpdate applies a card update to book if it holds: from the
// sender key of a contact whose card names the update's old mailbox, and
// with the same keys. It returns what to tell the user, or the refusal.
func decideCardUpdate(book *contactBook, sender []byte, u cardUpdate, card *envelope.Card) (string, error) {
	for _, name := range book.names() {
		old, err := book.card(name)
		if err != nil || !bytes.Equal(old.Auth, sender) {
			continue
		}
		if old.Mailbox != u.old {
			continue
		}
		if !sameKeys(old, card) {
			return "", fmt.Errorf("refused a card update for %s: the new card holds other keys than the contact you verified; ask %s in person", name, name)
		}
		if u.card == book.Cards[name] {
			return "", nil
		}
		book.Cards[name] = u.card
		return fmt.Sprintf("%s's card changed: they moved their mailbox (fingerprint unchanged: %s); your contacts now hold the new card", name, cardFingerprint(card)), nil
	}
	if book.nameOf(sender) != "" {
		return "", fmt.Errorf("ignored a card update from %s for a mailbox that is not the one in your contacts", book.nameOf(sender))
	}
	return "", fmt.Errorf("refused a card update from an unknown sender: add them with `postern contact add` first")
}

func mailboxRotateCmd() command {
	return command{
		name: "mailbox rotate",
		summary: "Move a mailbox to a fresh id and owner key on every relay that holds it, with the\n" +
			"envelopes waiting there, and tell every contact the new card in a message their\n" +
			"postern applies on recv. Prints the new card. Rotating bounds what one mailbox id\n" +
			"links together. For the relay's ttl (a week by default) a relay still stores what\n" +
			"is sent to the old id with the old card's capability in the new mailbox (a\n" +
			"message queued at another relay, a contact without the update yet); to cut off a\n" +
			"leaked card at once, delete the mailbox and create a new one. A mailbox rotated\n" +
			"8 times within that week is rotated again only once the first of them is a week old.\n\nexample:\n  postern mailbox rotate --id demo/bob.id > bob.card",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			a := mailboxFlags(fs, "which mailbox (`name`; needed when there are several)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				ctx, cancel := withTimeout(ctx, *a.timeout)
				defer cancel()
				return timedOut(ctx, *a.timeout, rotateMailbox(ctx, e, a))
			}
		},
	}
}

// saveRotated writes the mailbox file once the relays moved a mailbox
// (a variable so that a test can make that write fail).
var saveRotated = (*mailboxes).update

func rotateMailbox(ctx context.Context, e *env, a mailboxArgs) error {
	id, ms, err := a.open(e)
	if err != nil {
		return err
	}
	m, err := ms.find(*a.name)
	if err != nil {
		return err
	}
	nm, err := beginRotation(e, id, ms, m)
	if err != nil {
		return err
	}
	moved := 0
	errs := ms.onEachRelay(ctx, e, id, m, func(c *client.Client) error {
		n, err := c.Rotate(ctx, m.owner(), m.id(), nm.owner(), nm.id(), nm.capVerifier())
		if err != nil {
			// It may have moved already (an earlier try whose reply was
			// lost): the new mailbox answers its owner then.
			if _, ferr := c.FetchAfter(ctx, nm.owner(), nm.id(), math.MaxUint64, 1); ferr == nil {
				return nil
			}
		}
		moved += n
		return err
	})
	for i, err := range errs {
		if errors.Is(err, relay.ErrBusy) {
			// Busy passes: it is no reason to leave the relay out of the
			// new card (a reviewer's find: "retry later" said, the relay
			// dropped for good). m.Next keeps the new keys; rotating
			// again finishes with them.
			return fmt.Errorf("relay %d of %d: %w%s; run `postern mailbox rotate` again then to finish the rotation (its new keys are kept in %s; until then the relays that moved the mailbox hold it under them)",
				i+1, len(errs), err, rotateBusyHint(err), mailboxPath(ms.idPath))
		}
	}
	var confirmed []int // the indexes of the relays that moved it
	for i, err := range errs {
		if err == nil {
			confirmed = append(confirmed, i)
			continue
		}
		fmt.Fprintf(e.stderr, "relay %d of %d: %v; it is left out of the new card\n", i+1, len(errs), err)
	}
	if len(confirmed) == 0 {
		return fmt.Errorf("no relay confirmed the rotation of mailbox %q: try again when the relays are reachable (the new keys are kept in %s, so a relay that did move it is found again)", m.Name, mailboxPath(ms.idPath))
	}
	if err := finishRotation(e, id, ms, m, nm, confirmed); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, nm.Card)
	fmt.Fprintf(e.stderr, "mailbox %q rotated: %d waiting envelope(s) moved\n", m.Name, moved)
	return tellContacts(ctx, e, id, ms.idPath, cardUpdate{old: m.id(), card: nm.Card})
}

// beginRotation returns the new keys of m's rotation, written down
// before any relay moves the mailbox: until the file names the new owner
// key, a relay that moved it holds a mailbox nobody can read. A rotation
// that was interrupted (a crash, a failed write, a reply that never
// came) left them in m.Next, and rotating again finishes it with the
// same keys.
func beginRotation(e *env, id *envelope.Identity, ms *mailboxes, m *mailboxState) (*mailboxState, error) {
	nm := m.Next
	if nm != nil {
		fmt.Fprintf(e.stderr, "finishing the rotation of mailbox %q that was interrupted\n", m.Name)
	} else {
		nm = newMailbox(m.Name, nil, len(m.SendCap) > 0)
		if err := ms.update(id, func(disk *mailboxes) error {
			dm := disk.byID(m)
			switch {
			case dm == nil:
				return errors.New("it was deleted or rotated meanwhile")
			case dm.Next != nil:
				return errors.New("another rotation of it began meanwhile: run `postern mailbox rotate` again to finish that one")
			}
			dm.Next = nm
			return nil
		}); err != nil {
			return nil, fmt.Errorf("mailbox %q not rotated: %s: %w", m.Name, mailboxPath(ms.idPath), err)
		}
		m.Next = nm
	}
	nm.Name, nm.Relays, nm.Relay = m.Name, nil, ""
	return nm, nil
}

// finishRotation writes the rotated mailbox nm in m's place, with the
// relays of m that confirmed (as the file names them now: another
// postern may have renewed a line meanwhile). If m was deleted from the
// file meanwhile (a `mailbox delete` beside this rotation, which may
// have asked the relays with the old keys only), nm is kept: a relay
// may hold it under the new keys, which no other copy has.
func finishRotation(e *env, id *envelope.Identity, ms *mailboxes, m, nm *mailboxState, confirmed []int) error {
	relaysOf := func(rs []string) []string {
		out := make([]string, len(confirmed))
		for j, i := range confirmed {
			out[j] = rs[i]
		}
		return out
	}
	nm.Relays = relaysOf(m.relays())
	if i := slices.Index(ms.list, m); i >= 0 {
		ms.list[i] = nm
	}
	kept := false
	if err := saveRotated(ms, id, func(disk *mailboxes) error {
		dm := disk.byID(m)
		if dm == nil {
			if _, err := disk.find(nm.Name); err == nil {
				nm.Name = freeName(disk)
			}
			disk.list, kept = append(disk.list, nm), true
			return nil
		}
		if drs := dm.relays(); len(drs) == len(m.relays()) {
			nm.Relays = relaysOf(drs)
		}
		disk.list[slices.Index(disk.list, dm)] = nm
		return nil
	}); err != nil {
		return fmt.Errorf("the relays moved mailbox %q, but %s could not be written (%w): run `postern mailbox rotate` again once it can be, which finishes the rotation with the keys kept there", m.Name, mailboxPath(ms.idPath), err)
	}
	if kept {
		fmt.Fprintf(e.stderr, "mailbox %q was deleted from %s while it was being rotated; it is kept there as %q under its new keys, which a relay may hold: `postern mailbox delete --name %s` deletes it\n",
			m.Name, mailboxPath(ms.idPath), nm.Name, nm.Name)
	}
	return nil
}

// tellContacts sends the card update to every contact.
func tellContacts(ctx context.Context, e *env, id *envelope.Identity, idPath string, u cardUpdate) error {
	book, err := loadContacts(idPath)
	if err != nil {
		return err
	}
	told, names := 0, book.names()
	for _, name := range names {
		card, err := book.card(name)
		if err == nil {
			_, err = deliver(ctx, e, card, id, u.encode(), nil, false)
		}
		if err != nil {
			fmt.Fprintf(e.stderr, "could not tell %s (%v): give them the new card yourself\n", name, err)
			continue
		}
		told++
	}
	fmt.Fprintf(e.stderr, "told %d of %d contact(s) the new card\n", told, len(names))
	if told < len(names) {
		return fmt.Errorf("%d contact(s) were not told; `postern mailbox show` prints the new card to give them", len(names)-told)
	}
	return nil
}
