package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// dialRelay connects to one of the relays described by lines through the
// one dial path (package route), racing their endpoints. A descriptor
// that has expired is still tried, with a warning: a relay keeps its keys
// when it re-signs. POSTERN_TRANSPORT restricts the transport and
// POSTERN_BIND sets the local address (both mainly for tests and
// troubleshooting).
func dialRelay(ctx context.Context, e *env, lines ...string) (*client.Client, error) {
	c, _, err := dialFresh(ctx, e, lines...)
	return c, err
}

// dialFresh is dialRelay that also asks the relay for its current
// descriptor. fresh is that descriptor's line when it is valid, names one
// of the relays in lines and expires later than the copy given, else "".
func dialFresh(ctx context.Context, e *env, lines ...string) (c *client.Client, fresh string, err error) {
	ds := make([]*descriptor.Descriptor, 0, len(lines))
	for _, line := range lines {
		d, stale, err := descriptor.ParseStale(line, time.Now())
		if err != nil {
			return nil, "", err
		}
		if stale {
			fmt.Fprintf(e.stderr, "warning: the descriptor of relay %s expired on %s; trying it anyway (a relay keeps its keys when it renews)\n",
				d.RelayID(), d.Expires.UTC().Format("2006-01-02"))
		}
		ds = append(ds, d)
	}
	c, err = client.Dial(ctx, newRegistry(), dialOptions(e), ds...)
	if err != nil {
		return nil, "", err
	}
	return c, newerDescriptor(ctx, c, ds), nil
}

// dialOptions reads the troubleshooting variables: POSTERN_TRANSPORT
// (one transport only), POSTERN_BIND (the local address) and
// POSTERN_STALL (the stall window, a Go duration such as "2s").
//
// With --network NAME, what worked on that network is remembered in
// POSTERN_HOME/routes (recipe hashes, no addresses) and tried first next
// time.
func dialOptions(e *env) client.DialOptions {
	stall, _ := time.ParseDuration(e.getenv("POSTERN_STALL"))
	o := client.DialOptions{Transport: e.getenv("POSTERN_TRANSPORT"), LocalAddr: e.getenv("POSTERN_BIND"),
		StallWindow: stall}
	if e.network == "" {
		return o
	}
	mem, err := route.OpenMemory(filepath.Join(homeDir(e), "routes"), 0)
	if err != nil {
		fmt.Fprintf(e.stderr, "warning: %v\n", err)
		return o
	}
	o.Memory, o.Network = mem, e.network
	return o
}

// networkFlag adds --network to a command that dials relays.
func networkFlag(fs *flag.FlagSet, e *env) {
	fs.StringVar(&e.network, "network", "", "a `name` for the network you are on (home, office, ...): what reached the\n"+
		"relay here is remembered for a day and tried first next time")
}

// newerDescriptor asks the relay on c for its descriptor and returns it
// if it is valid, was signed by one of ds's relays and outlives that
// copy. Any failure just means no newer descriptor.
func newerDescriptor(ctx context.Context, c *client.Client, ds []*descriptor.Descriptor) string {
	line, err := c.Descriptor(ctx)
	if err != nil {
		return ""
	}
	d, err := descriptor.Parse(line, time.Now())
	if err != nil {
		return ""
	}
	for _, old := range ds {
		if descriptor.SameRelay(old, d) && d.Expires.After(old.Expires) {
			return line
		}
	}
	return ""
}

// mailboxState is what `mailbox create` keeps next to the identity, in
// ID_FILE.mailbox (mode 0600): enough to fetch, ack, rotate and delete.
type mailboxState struct {
	Relay   string `json:"relay"`    // home relay descriptor
	ID      []byte `json:"id"`       // 32-byte mailbox id
	Owner   []byte `json:"owner"`    // Ed25519 seed of the owner key
	SendCap []byte `json:"send_cap"` // send capability, if any
	Card    string `json:"card"`     // the contact card printed at creation
}

func mailboxPath(idPath string) string { return idPath + ".mailbox" }

func loadMailbox(idPath string) (*mailboxState, error) {
	p := mailboxPath(idPath)
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no mailbox for %s: create one with `postern mailbox create --id %s --relay DESCRIPTOR`", idPath, idPath)
	}
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("mailbox state %s has mode %04o (it holds the mailbox owner key); run `chmod 600 %s`", p, st.Mode().Perm(), p)
	}
	var m mailboxState
	if err := json.Unmarshal(data, &m); err != nil || len(m.ID) != 32 || len(m.Owner) != ed25519.SeedSize {
		return nil, fmt.Errorf("mailbox state %s is corrupt", p)
	}
	return &m, nil
}

func (m *mailboxState) id() (out [32]byte) { copy(out[:], m.ID); return }

// save makes the contact card for the state's relay and writes the state
// to ID_FILE.mailbox (0600).
func (m *mailboxState) save(id *envelope.Identity, idPath string) error {
	card, err := id.Card(m.id(), []string{m.Relay}, m.SendCap).Encode()
	if err != nil {
		return err
	}
	m.Card = card
	out, _ := json.MarshalIndent(m, "", "  ")
	return writeFileAtomic(mailboxPath(idPath), append(out, '\n'), 0o600)
}

// dial connects to the home relay and, when the relay has renewed its
// descriptor, keeps the new one in the mailbox file and the card.
func (m *mailboxState) dial(ctx context.Context, e *env, id *envelope.Identity, idPath string) (*client.Client, error) {
	c, fresh, err := dialFresh(ctx, e, m.Relay)
	if err != nil || fresh == "" || fresh == m.Relay {
		return c, err
	}
	m.Relay = fresh
	if err := m.save(id, idPath); err != nil {
		fmt.Fprintf(e.stderr, "warning: the relay renewed its descriptor, but %s could not be updated: %v\n", mailboxPath(idPath), err)
		return c, nil
	}
	fmt.Fprintf(e.stderr, "the relay renewed its descriptor: %s is updated, and your contact card changed (its \"card\" field there); give contacts the new card\n", mailboxPath(idPath))
	return c, nil
}

func (m *mailboxState) owner() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(m.Owner) }

func identityFlag(fs *flag.FlagSet) *string {
	return fs.String("id", "", "identity `file` (default $POSTERN_HOME/identity or ~/.config/postern/identity)")
}

func resolveID(e *env, p string) string {
	if p == "" {
		return defaultIdentityPath(e)
	}
	return p
}

func mailboxCreateCmd() command {
	return command{
		name: "mailbox create",
		summary: "Create a mailbox on a home relay and print your contact card.\n" +
			"The mailbox's owner key and id are kept next to the identity in FILE.mailbox.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			relayLine := fs.String("relay", "", "home relay `descriptor` (postern-relay1:...) or a file holding it")
			withCap := fs.Bool("cap", false, "require a send capability: only holders of your card can send")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				if *relayLine == "" {
					return usageErr("--relay is required")
				}
				line, err := lineArg(*relayLine, descriptor.Prefix)
				if err != nil {
					return err
				}
				path := resolveID(e, *idPath)
				id, err := envelope.LoadIdentity(path)
				if err != nil {
					return err
				}
				if _, err := os.Stat(mailboxPath(path)); err == nil {
					return fmt.Errorf("%s already exists: this identity has a mailbox (move the file away to make a new one)", mailboxPath(path))
				}
				st := &mailboxState{Relay: line, ID: make([]byte, 32), Owner: make([]byte, ed25519.SeedSize)}
				rand.Read(st.ID)
				rand.Read(st.Owner)
				var capv []byte
				if *withCap {
					st.SendCap = make([]byte, 32)
					rand.Read(st.SendCap)
					sum := sha256.Sum256(st.SendCap)
					capv = sum[:]
				}
				c, fresh, err := dialFresh(ctx, e, line)
				if err != nil {
					return err
				}
				defer c.Close()
				if err := c.CreateMailbox(ctx, st.owner(), st.id(), capv); err != nil {
					return err
				}
				if fresh != "" {
					st.Relay = fresh // the card gets the relay's current descriptor
				}
				if err := st.save(id, path); err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, st.Card)
				return nil
			}
		},
	}
}

// lineArg returns v if it starts with prefix, else the first line of the
// file named v that does.
func lineArg(v, prefix string) (string, error) {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, prefix) {
		return v, nil
	}
	data, err := os.ReadFile(v)
	if err != nil {
		return "", fmt.Errorf("%q is neither a %s... line nor a readable file: %w", truncate(v, 24), prefix, err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, prefix) {
			return l, nil
		}
	}
	return "", fmt.Errorf("%s holds no line starting with %s", v, prefix)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// sendArgs are send's flags.
type sendArgs struct {
	idPath, to, file string
	anonymous        bool
	via              listFlag
}

func sendCmd() command {
	return command{
		name: "send",
		summary: "Send a message (stdin, or --file) to a contact card, sealed so the relay learns\n" +
			"neither sender nor content. Returns once the relay has stored it durably. With\n" +
			"--via, an entry relay takes it for the recipient's home relay and forwards it.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			var a sendArgs
			fs.StringVar(&a.idPath, "id", "", "identity `file` (default $POSTERN_HOME/identity or ~/.config/postern/identity)")
			fs.StringVar(&a.to, "to", "", "recipient contact `card` (postern-card1:...) or a file holding it")
			fs.StringVar(&a.file, "file", "", "read the message from this `file` instead of stdin")
			fs.BoolVar(&a.anonymous, "anonymous", false, "do not authenticate as the sender (no identity needed)")
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
	line, err := lineArg(a.to, envelope.CardPrefix)
	if err != nil {
		return err
	}
	card, err := envelope.ParseCard(line)
	if err != nil {
		return err
	}
	if len(card.Relays) == 0 {
		return fmt.Errorf("the contact card names no relay")
	}
	var from *envelope.Identity
	if !a.anonymous {
		if from, err = envelope.LoadIdentity(resolveID(e, a.idPath)); err != nil {
			return err
		}
	}
	var msg []byte
	if a.file != "" {
		msg, err = os.ReadFile(a.file)
	} else {
		msg, err = io.ReadAll(io.LimitReader(e.stdin, envelope.MaxMessageSize+1))
	}
	if err != nil {
		return err
	}
	s := &sender{e: e, card: card, from: from, msg: msg}
	if err := s.route(a.via); err != nil {
		return err
	}
	if err := s.seal(s.known); err != nil {
		return err
	}
	if err := s.run(ctx); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "sent %d bytes in %d envelope(s)\n", len(msg), len(s.envs))
	return nil
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
	return nil
}

// forwardEpoch is the key epoch of relays' forward keys; relays do not
// rotate them yet.
const forwardEpoch = 1

func recvCmd() command {
	return command{
		name: "recv",
		summary: "Receive messages from your mailbox, print each with its sender key (or\n" +
			"\"anonymous\") and delete it from the relay. Without --follow, exits when the\n" +
			"mailbox is empty. Output per message: a line `== from SENDER (N bytes)`, then\n" +
			"exactly N bytes of message, then a newline.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			follow := fs.Bool("follow", false, "keep waiting for new messages (reconnects with backoff)")
			networkFlag(fs, e)
			var via listFlag
			fs.Var(&via, "via", "entry relay `descriptor` (or a file holding it) to receive through, when the home relay\n"+
				"cannot be reached directly: the entry relay splices an end-to-end encrypted session\n"+
				"to the home relay and sees neither the mailbox nor the requests (repeatable)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				path := resolveID(e, *idPath)
				id, err := envelope.LoadIdentity(path)
				if err != nil {
					return err
				}
				mb, err := loadMailbox(path)
				if err != nil {
					return err
				}
				if f, ok := e.stdout.(*os.File); ok && stdoutClosed(f) {
					return errors.New("standard output is closed: the messages would be deleted from the relay unseen; redirect it to a file, or to /dev/null to discard them on purpose")
				}
				r, err := newReceiver(e, id, path)
				if err != nil {
					return err
				}
				dial, err := recvDial(e, mb, id, path, via)
				if err != nil {
					return err
				}
				if *follow {
					return r.Follow(ctx, dial, mb.owner(), mb.id(), func(err error, wait time.Duration) {
						fmt.Fprintf(e.stderr, "connection lost (%v); retrying in %s\n", err, wait)
					})
				}
				c, err := dial(ctx)
				if err != nil {
					return err
				}
				defer c.Close()
				return r.Drain(ctx, c, mb.owner(), mb.id())
			}
		},
	}
}

// recvDial is how recv opens sessions: through a tunnel via the --via
// relays (which join the known-relays list), or to the home relay with a
// tunnel via a known relay as fallback when the home relay cannot be
// reached. On a network where only the tunnel worked, it goes first.
func recvDial(e *env, mb *mailboxState, id *envelope.Identity, path string, via []string) (func(context.Context) (*client.Client, error), error) {
	lines := make([]string, len(via))
	for i, v := range via {
		var err error
		if lines[i], err = lineArg(v, descriptor.Prefix); err != nil {
			return nil, err
		}
	}
	if len(lines) > 0 {
		learnRelays(e, lines)
		return func(ctx context.Context) (*client.Client, error) { return dialTunnel(ctx, e, mb.Relay, lines) }, nil
	}
	entries := entryRelays(e, []string{mb.Relay})
	home := func(ctx context.Context) (*client.Client, error) { return mb.dial(ctx, e, id, path) }
	if len(entries) == 0 {
		return home, nil
	}
	tunnel := func(ctx context.Context) (*client.Client, error) { return dialTunnel(ctx, e, mb.Relay, entries) }
	facts := openFacts(e, parsedOrZero(mb.Relay).RelayID())
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
	entries := make([]*descriptor.Descriptor, len(lines))
	for i, line := range lines {
		var err error
		if entries[i], _, err = descriptor.ParseStale(line, time.Now()); err != nil {
			return nil, fmt.Errorf("entry relay descriptor: %w", err)
		}
	}
	return client.DialTunnel(ctx, newRegistry(), dialOptions(e), home, entries...)
}

// newReceiver is the inbox behind recv: it prints each complete message
// (`== from SENDER (N bytes)`, the bytes, a newline) and counts it taken
// only once stdout has it, keeping the replay cache in ID_FILE.replay.
func newReceiver(e *env, id *envelope.Identity, idPath string) (*client.Inbox, error) {
	return client.NewInbox(client.InboxConfig{
		Identity: id,
		Replay:   client.ReplayFile(idPath + ".replay"),
		Warn:     func(w string) { fmt.Fprintln(e.stderr, w) },
		Take:     func(m client.Message) error { return printMessage(e.stdout, m) },
	})
}

// printMessage writes one message to w and syncs it if w is a file. An
// error means the message was not shown, and it is not acked.
func printMessage(w io.Writer, m client.Message) error {
	from := "anonymous"
	if m.Sender != nil {
		from = base64.RawURLEncoding.EncodeToString(m.Sender)
	}
	if _, err := fmt.Fprintf(w, "== from %s (%d bytes)\n%s\n", from, len(m.Payload), m.Payload); err != nil {
		return fmt.Errorf("write message: %w", err)
	}
	if f, ok := w.(interface{ Sync() error }); ok {
		if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
			return fmt.Errorf("write message: %w", err)
		}
	}
	return nil
}
