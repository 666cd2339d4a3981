package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
)

// mailboxArgs are the flags the mailbox commands share.
type mailboxArgs struct {
	idPath, name *string
	timeout      *time.Duration
}

func mailboxFlags(fs *flag.FlagSet, nameHelp string) mailboxArgs {
	return mailboxArgs{idPath: identityFlag(fs), name: fs.String("name", "", nameHelp),
		timeout: fs.Duration("timeout", 0, "give up after this long, e.g. 30s (default: no limit)")}
}

// open loads the identity and its mailboxes.
func (a mailboxArgs) open(e *env) (*envelope.Identity, *mailboxes, error) {
	path := resolveID(e, *a.idPath)
	id, err := envelope.LoadIdentity(path)
	if err != nil {
		return nil, nil, err
	}
	ms, err := loadMailboxes(path)
	return id, ms, err
}

func mailboxCreateCmd() command {
	return command{
		name: "mailbox create",
		summary: "Create a mailbox on one or more home relays and print its contact card.\n" +
			"With several --relay flags the same mailbox id and owner key are made on each\n" +
			"relay, and the card lists them all: senders reach whichever relay answers, and\n" +
			"recv empties every one. An identity may have several mailboxes (--name tells\n" +
			"them apart); they are kept next to the identity in FILE.mailbox (mode 0600).\n" +
			"--again makes an existing mailbox again on relays that lost it (same card).\n\n" +
			"examples:\n  postern mailbox create --id demo/bob.id --relay relay-a/descriptor --relay relay-b/descriptor > bob.card\n" +
			"  postern mailbox create --id demo/bob.id --again",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			a := mailboxFlags(fs, "local `name` of the mailbox (default \"main\" for the first, then mailbox2, ...)")
			var relays listFlag
			fs.Var(&relays, "relay", "home relay `descriptor` (postern-relay1:...) or a file holding it; repeat for several\n"+
				"relays (at most 8), each holding the same mailbox")
			withCap := fs.Bool("cap", false, "require a send capability: only holders of your card can send")
			again := fs.Bool("again", false, "make the existing mailbox (--name) again on the relays that lost it")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				ctx, cancel := withTimeout(ctx, *a.timeout)
				defer cancel()
				if *again {
					if len(relays) > 0 || *withCap {
						return usageErr("--again takes the relays and capability from the mailbox file; drop --relay and --cap")
					}
					return timedOut(ctx, *a.timeout, createAgain(ctx, e, a))
				}
				if len(relays) == 0 {
					return usageErr("--relay is required")
				}
				return timedOut(ctx, *a.timeout, createMailbox(ctx, e, a, relays, *withCap))
			}
		},
	}
}

// createMailbox makes a new mailbox on every relay, or on none.
func createMailbox(ctx context.Context, e *env, a mailboxArgs, relayArgs []string, withCap bool) error {
	lines, err := descriptorLines(relayArgs)
	if err != nil {
		return err
	}
	path := resolveID(e, *a.idPath)
	id, err := envelope.LoadIdentity(path)
	if err != nil {
		return err
	}
	ms, err := loadMailboxes(path)
	if err != nil {
		if _, statErr := os.Stat(mailboxPath(path)); !errors.Is(statErr, os.ErrNotExist) {
			return err
		}
		ms = &mailboxes{idPath: path}
	}
	name := *a.name
	if name == "" {
		name = defaultName(len(ms.list))
	}
	if _, err := ms.find(name); err == nil {
		return fmt.Errorf("%s already has a mailbox named %q: pick another --name, or `postern mailbox rotate --name %s` for a fresh id", path, name, name)
	}
	m := newMailbox(name, lines, withCap)
	errs := ms.onEachRelay(ctx, e, id, m, func(c *client.Client) error {
		return c.CreateMailbox(ctx, m.owner(), m.id(), m.capVerifier())
	})
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("relay %d of %d: %w%s; %s", i+1, len(lines), err, busyHint(err), undoCreate(ctx, e, m, errs))
		}
	}
	err = ms.update(id, func(disk *mailboxes) error {
		if *a.name == "" {
			m.Name = freeName(disk) // another may have taken the default meanwhile
		} else if _, err := disk.find(m.Name); err == nil {
			return fmt.Errorf("%s got a mailbox named %q meanwhile", path, m.Name)
		}
		disk.list = append(disk.list, m)
		return nil
	})
	switch {
	case errors.Is(err, errNotSynced):
		// The file names the mailbox: it must stay on the relays.
		fmt.Fprintln(e.stdout, m.Card)
		return fmt.Errorf("mailbox %q was made and %s written, but %w", m.Name, mailboxPath(path), err)
	case err != nil:
		return fmt.Errorf("%w; %s", err, undoCreate(ctx, e, m, errs))
	}
	fmt.Fprintln(e.stdout, m.Card)
	return nil
}

// freeName returns the first default mailbox name, from the list's
// length on, that no mailbox of ms has.
func freeName(ms *mailboxes) string {
	for i := len(ms.list); ; i++ {
		if _, err := ms.find(defaultName(i)); err != nil {
			return defaultName(i)
		}
	}
}

// busyHint says why a relay answered a mailbox create or rotation busy:
// it limits how many one address makes a day (relay/server, oplimit.go).
func busyHint(err error) string {
	if !errors.Is(err, relay.ErrBusy) {
		return ""
	}
	return " (it limits how many mailboxes one address creates or rotates a day: try again in a few minutes, or from another network)"
}

// rotateBusyHint is busyHint for a rotation, which a relay also answers
// busy when the mailbox's last rotations, 8 within the relay's ttl, all
// still forward to it (relay/store, MaxForwardChain).
func rotateBusyHint(err error) string {
	if !errors.Is(err, relay.ErrBusy) {
		return ""
	}
	return " (it limits how many mailboxes one address creates or rotates a day, and how often one mailbox is rotated: 8 times within its ttl, a week by default; try again in a few minutes, or from another network, or once a week has passed since the rotations)"
}

// undoCreate deletes the mailbox from the relays that made it, after
// another refused it or the file could not be written, so a half-made
// mailbox is not left behind. It returns what became of it, for the
// error.
func undoCreate(ctx context.Context, e *env, m *mailboxState, errs []error) string {
	left := 0
	for i, err := range errs {
		if err != nil {
			continue
		}
		c, err := dialRelay(ctx, e, m.relays()[i])
		if err == nil {
			err = c.Delete(ctx, m.owner(), m.id())
			c.Close()
		}
		if err != nil {
			left++
		}
	}
	if left > 0 {
		return fmt.Sprintf("%d relay(s) that made the mailbox could not delete it again: they keep an empty mailbox nobody can use", left)
	}
	return "the mailbox was made on no relay"
}

// createAgain makes an existing mailbox on the relays that lost it.
func createAgain(ctx context.Context, e *env, a mailboxArgs) error {
	id, ms, err := a.open(e)
	if err != nil {
		return err
	}
	m, err := ms.find(*a.name)
	if err != nil {
		return err
	}
	made, failed := 0, 0
	errs := ms.onEachRelay(ctx, e, id, m, func(c *client.Client) error {
		err := c.CreateMailbox(ctx, m.owner(), m.id(), m.capVerifier())
		if errors.Is(err, relay.ErrMailboxExists) {
			// Still there, or retired after a delete: a fetch tells.
			if _, ferr := c.Fetch(ctx, m.owner(), m.id(), 1); ferr == nil {
				return nil
			}
			return errors.New("the relay keeps this mailbox id retired (deleted or rotated away recently): make a new mailbox with `postern mailbox create` and give your contacts its card")
		}
		if err == nil {
			made++
		}
		return err
	})
	for i, err := range errs {
		if err != nil {
			failed++
			fmt.Fprintf(e.stderr, "relay %d of %d: %v\n", i+1, len(errs), err)
		}
	}
	fmt.Fprintf(e.stderr, "mailbox %q: made again on %d relay(s), %d already had it, %d failed; the card is unchanged\n",
		m.Name, made, len(errs)-made-failed, failed)
	if failed > 0 {
		return fmt.Errorf("%d of %d relays failed; run the command again when they are reachable", failed, len(errs))
	}
	fmt.Fprintln(e.stdout, m.Card)
	return nil
}

func mailboxShowCmd() command {
	return command{
		name: "mailbox show",
		summary: "Print a mailbox's contact card on stdout, and on stderr its name, relays and\n" +
			"whether it needs a send capability. Give the card to the people who may write to you.\n\n" +
			"example:\n  postern mailbox show --id demo/bob.id > bob.card",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			name := fs.String("name", "", "which mailbox (`name`; needed when there are several)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				ms, err := loadMailboxes(resolveID(e, *idPath))
				if err != nil {
					return err
				}
				m, err := ms.find(*name)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "mailbox %q\n", m.Name)
				if card, err := envelope.ParseCard(m.Card); err == nil {
					printCard(e.stderr, card, time.Now())
				}
				fmt.Fprintln(e.stdout, m.Card)
				return nil
			}
		},
	}
}

func mailboxListCmd() command {
	return command{
		name: "mailbox list",
		summary: "List an identity's mailboxes: name, number of relays, whether sending needs\n" +
			"a capability.\n\nexample:\n  postern mailbox list --id demo/bob.id",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				ms, err := loadMailboxes(resolveID(e, *idPath))
				if err != nil {
					return err
				}
				for _, m := range ms.list {
					capText := "open"
					if len(m.SendCap) > 0 {
						capText = "capability"
					}
					fmt.Fprintf(e.stdout, "%-16s %d relay(s)  %s\n", m.Name, len(m.relays()), capText)
				}
				return nil
			}
		},
	}
}

func mailboxDeleteCmd() command {
	return command{
		name: "mailbox delete",
		summary: "Delete a mailbox and everything waiting in it from every relay that holds it,\n" +
			"and forget it here. Senders holding its card get \"no such mailbox\".\n\n" +
			"example:\n  postern mailbox delete --id demo/bob.id --name mailbox2",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			a := mailboxFlags(fs, "which mailbox (`name`; needed when there are several)")
			forget := fs.Bool("forget", false, "forget the mailbox here even if some relay cannot be reached")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				ctx, cancel := withTimeout(ctx, *a.timeout)
				defer cancel()
				return timedOut(ctx, *a.timeout, deleteMailbox(ctx, e, a, *forget))
			}
		},
	}
}

func deleteMailbox(ctx context.Context, e *env, a mailboxArgs, forget bool) error {
	id, ms, err := a.open(e)
	if err != nil {
		return err
	}
	m, err := ms.find(*a.name)
	if err != nil {
		return err
	}
	failed := 0
	for i, err := range ms.onEachRelay(ctx, e, id, m, func(c *client.Client) error {
		err := c.Delete(ctx, m.owner(), m.id())
		if n := m.Next; errors.Is(err, relay.ErrNoMailbox) && n != nil {
			// A rotation was interrupted: the relay may hold the
			// mailbox under its new keys.
			err = c.Delete(ctx, n.owner(), n.id())
		}
		if err != nil && !errors.Is(err, relay.ErrNoMailbox) {
			return err
		}
		return nil
	}) {
		if err != nil {
			failed++
			fmt.Fprintf(e.stderr, "relay %d of %d: %v\n", i+1, len(m.relays()), err)
		}
	}
	if failed > 0 && !forget {
		return fmt.Errorf("%d of %d relays could not delete the mailbox; it is kept here: run the command again, or add --forget to drop it anyway", failed, len(m.relays()))
	}
	left := 0
	if err := ms.update(id, func(disk *mailboxes) error {
		// As this command found it, or it may live on under keys only
		// the file has: a rotation began, or finished, meanwhile.
		dm := disk.byID(m)
		switch {
		case dm == nil:
			return fmt.Errorf("mailbox %q changed in %s meanwhile (rotated or deleted by another postern); it is left as it is there: `postern mailbox list` shows it", m.Name, mailboxPath(ms.idPath))
		case dm.Next != nil && (m.Next == nil || !bytes.Equal(dm.Next.ID, m.Next.ID)):
			return fmt.Errorf("a rotation of mailbox %q began meanwhile; it is kept in %s: run the command again once the rotation is done", m.Name, mailboxPath(ms.idPath))
		}
		disk.remove(dm)
		left = len(disk.list)
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "mailbox %q deleted; %d mailbox(es) left\n", m.Name, left)
	return nil
}

// withTimeout bounds ctx by d when d > 0.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// timedOut rewrites err when ctx ran out of --timeout.
func timedOut(ctx context.Context, d time.Duration, err error) error {
	if err != nil && d > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("gave up after %s (--timeout): the relay did not answer in time; try again, or give a longer --timeout", d)
	}
	return err
}
