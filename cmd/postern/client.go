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
	"strings"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

// dialRelay connects to the relay described by line, trying its endpoints
// in order. POSTERN_TRANSPORT restricts the transport and POSTERN_BIND sets
// the local address (both mainly for tests and troubleshooting).
func dialRelay(ctx context.Context, line string, e *env) (*relay.Client, error) {
	d, err := descriptor.Parse(line, time.Now())
	if err != nil {
		return nil, err
	}
	return relay.Dial(ctx, newRegistry(), d, relay.DialOptions{
		Transport: e.getenv("POSTERN_TRANSPORT"),
		LocalAddr: e.getenv("POSTERN_BIND"),
	})
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
				card, err := id.Card(st.id(), []string{line}, st.SendCap).Encode()
				if err != nil {
					return err
				}
				st.Card = card
				c, err := dialRelay(ctx, line, e)
				if err != nil {
					return err
				}
				defer c.Close()
				if err := c.CreateMailbox(ctx, st.owner(), st.id(), capv); err != nil {
					return err
				}
				out, _ := json.MarshalIndent(st, "", "  ")
				if err := writeFileAtomic(mailboxPath(path), append(out, '\n'), 0o600); err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, card)
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

func sendCmd() command {
	return command{
		name:    "send",
		summary: "Send a message (stdin, or --file) to a contact card, sealed so the relay learns\nneither sender nor content. Returns once the relay has stored it durably.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			to := fs.String("to", "", "recipient contact `card` (postern-card1:...) or a file holding it")
			file := fs.String("file", "", "read the message from this `file` instead of stdin")
			anon := fs.Bool("anonymous", false, "do not authenticate as the sender (no identity needed)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				if *to == "" {
					return usageErr("--to is required")
				}
				line, err := lineArg(*to, envelope.CardPrefix)
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
				if !*anon {
					if from, err = envelope.LoadIdentity(resolveID(e, *idPath)); err != nil {
						return err
					}
				}
				var msg []byte
				if *file != "" {
					msg, err = os.ReadFile(*file)
				} else {
					msg, err = io.ReadAll(io.LimitReader(e.stdin, envelope.MaxMessageSize+1))
				}
				if err != nil {
					return err
				}
				envs, err := envelope.SealMessage(card, from, msg, nil)
				if err != nil {
					return err
				}
				var c *relay.Client
				var lastErr error
				for _, r := range card.Relays {
					if c, lastErr = dialRelay(ctx, r, e); lastErr == nil {
						break
					}
				}
				if c == nil {
					return lastErr
				}
				defer c.Close()
				for _, env := range envs {
					if _, err := c.Send(ctx, env, card.SendCap); err != nil {
						return err
					}
				}
				fmt.Fprintf(e.stderr, "sent %d bytes in %d envelope(s)\n", len(msg), len(envs))
				return nil
			}
		},
	}
}

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
				r := newReceiver(e, id, mb, path)
				defer r.replay.save()
				if !*follow {
					return r.drain(ctx)
				}
				return r.follow(ctx)
			}
		},
	}
}

type receiver struct {
	e      *env
	id     *envelope.Identity
	mb     *mailboxState
	replay *replayFile
	join   *envelope.Joiner
	held   map[string]*heldMessage // fragments of unfinished messages
	order  []string                // keys of held, oldest first
}

// heldMessage is what recv keeps of a message whose fragments are still
// arriving. Its envelopes stay on the relay (unacked) until the message is
// complete and printed, so a crash or exit loses nothing.
type heldMessage struct {
	refs []store.Ref
	ids  map[[envelope.IDSize]byte]bool
}

// maxHeld bounds unfinished messages; beyond it the oldest is given up
// (its fragments acked and dropped), so a flood of fragments that never
// complete cannot stall the mailbox.
const maxHeld = 64

func newReceiver(e *env, id *envelope.Identity, mb *mailboxState, idPath string) *receiver {
	return &receiver{e: e, id: id, mb: mb, replay: loadReplay(idPath),
		join: &envelope.Joiner{MaxPending: maxHeld + 1}, held: map[string]*heldMessage{}}
}

// handle opens one delivery, prints the message when it is complete, and
// returns the refs that may now be acked.
func (r *receiver) handle(d relay.Delivery) []store.Ref {
	o, err := envelope.Open(r.id, d.Envelope)
	if err != nil {
		// Not for us or damaged: nothing to keep it for.
		fmt.Fprintf(r.e.stderr, "dropping an envelope that does not open: %v\n", err)
		return []store.Ref{d.Ref}
	}
	if r.replay.contains(o.ID) {
		// Printed before; the ack was lost. Ack it again.
		return []store.Ref{d.Ref}
	}
	if !o.Fragment {
		r.print(o.Sender, o.Payload)
		r.replay.add(o.ID)
		return []store.Ref{d.Ref}
	}
	if len(o.Payload) < 16 {
		return []store.Ref{d.Ref}
	}
	key := string(o.Sender) + "|" + string(o.Payload[:16])
	h := r.held[key]
	if h != nil && h.ids[o.ID] {
		return nil // the same fragment delivered again
	}
	var acks []store.Ref
	if h == nil {
		if len(r.order) >= maxHeld {
			old := r.order[0]
			r.order = r.order[1:]
			acks = append(acks, r.held[old].refs...)
			delete(r.held, old)
			fmt.Fprintln(r.e.stderr, "dropping an unfinished message: too many messages waiting for fragments")
		}
		h = &heldMessage{ids: map[[envelope.IDSize]byte]bool{}}
		r.held[key] = h
		r.order = append(r.order, key)
	}
	h.refs = append(h.refs, d.Ref)
	h.ids[o.ID] = true
	msg, done, err := r.join.Add(o)
	if err != nil {
		fmt.Fprintf(r.e.stderr, "dropping a bad fragment: %v\n", err)
		return append(acks, r.drop(key)...)
	}
	if !done {
		return acks
	}
	r.print(o.Sender, msg)
	for id := range h.ids {
		r.replay.add(id)
	}
	return append(acks, r.drop(key)...)
}

// drop forgets a held message and returns its refs.
func (r *receiver) drop(key string) []store.Ref {
	h := r.held[key]
	delete(r.held, key)
	for i, k := range r.order {
		if k == key {
			r.order = append(r.order[:i], r.order[i+1:]...)
			break
		}
	}
	if h == nil {
		return nil
	}
	return h.refs
}

func (r *receiver) print(sender, msg []byte) {
	from := "anonymous"
	if sender != nil {
		from = base64.RawURLEncoding.EncodeToString(sender)
	}
	fmt.Fprintf(r.e.stdout, "== from %s (%d bytes)\n", from, len(msg))
	r.e.stdout.Write(msg)
	fmt.Fprintln(r.e.stdout)
	if f, ok := r.e.stdout.(interface{ Sync() error }); ok {
		f.Sync()
	}
}

// drain pages once through the mailbox, printing and acking complete
// messages; fragments of unfinished messages stay on the relay.
func (r *receiver) drain(ctx context.Context) error {
	c, err := dialRelay(ctx, r.mb.Relay, r.e)
	if err != nil {
		return err
	}
	defer c.Close()
	var after uint64
	for {
		ds, err := c.FetchAfter(ctx, r.mb.owner(), r.mb.id(), after, 0)
		if err != nil {
			return err
		}
		if len(ds) == 0 {
			return nil
		}
		var acks []store.Ref
		for _, d := range ds {
			acks = append(acks, r.handle(d)...)
			after = d.Seq
		}
		r.replay.save()
		if len(acks) > 0 {
			if _, err := c.Ack(ctx, r.mb.owner(), r.mb.id(), acks...); err != nil {
				return err
			}
		}
	}
}

func (r *receiver) follow(ctx context.Context) error {
	return relay.Follow(ctx, relay.FollowConfig{
		Dial:    func(ctx context.Context) (*relay.Client, error) { return dialRelay(ctx, r.mb.Relay, r.e) },
		Owner:   r.mb.owner(),
		Mailbox: r.mb.id(),
		Connected: func() {
			// The new session pushes every waiting envelope again,
			// including fragments held so far (still on the relay).
			r.held = map[string]*heldMessage{}
			r.order = nil
			r.join = &envelope.Joiner{MaxPending: maxHeld + 1}
		},
		Handle: func(d relay.Delivery) []store.Ref {
			acks := r.handle(d)
			r.replay.save()
			return acks
		},
		Lost: func(err error, wait time.Duration) {
			fmt.Fprintf(r.e.stderr, "connection lost (%v); retrying in %s\n", err, wait)
		},
	})
}

// replayFile is the recipient's replay cache, kept in ID_FILE.replay so that
// an envelope redelivered after a crash (printed, not yet acked) is not
// printed twice. It holds the last replayCap envelope ids.
type replayFile struct {
	path  string
	ids   [][envelope.IDSize]byte
	cache *envelope.ReplayCache
	dirty bool
}

const replayCap = 1 << 14

func loadReplay(idPath string) *replayFile {
	r := &replayFile{path: idPath + ".replay", cache: envelope.NewReplayCache(replayCap)}
	data, _ := os.ReadFile(r.path)
	for len(data) >= envelope.IDSize {
		var id [envelope.IDSize]byte
		copy(id[:], data)
		data = data[envelope.IDSize:]
		r.cache.Check(id)
		r.ids = append(r.ids, id)
	}
	return r
}

func (r *replayFile) contains(id [envelope.IDSize]byte) bool { return r.cache.Contains(id) }

// add records an envelope id once its message has been printed.
func (r *replayFile) add(id [envelope.IDSize]byte) {
	if r.cache.Check(id) != nil {
		return
	}
	r.ids = append(r.ids, id)
	if len(r.ids) > replayCap {
		r.ids = r.ids[len(r.ids)-replayCap:]
	}
	r.dirty = true
}

func (r *replayFile) save() {
	if !r.dirty {
		return
	}
	buf := make([]byte, 0, len(r.ids)*envelope.IDSize)
	for _, id := range r.ids {
		buf = append(buf, id[:]...)
	}
	if err := writeFileAtomic(r.path, buf, 0o600); err == nil {
		r.dirty = false
	}
}
