package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// The mailbox file, ID_FILE.mailbox (mode 0600), is what `mailbox create`
// keeps next to the identity: enough to fetch, ack, rotate and delete.
//
// Version 2 (this build) is one JSON object: the primary mailbox (the
// first created that still exists) at the top level, the identity's other
// mailboxes in "others":
//
//	version   2
//	name      the mailbox's local name ("main" for the first), chosen with
//	          `mailbox create --name`; never sent anywhere
//	relays    the descriptors of the relays holding it, in the card's order
//	          (at most envelope.MaxRelays)
//	relay     relays[0], kept for postern builds that know version 1 only;
//	          when it differs from relays[0] (such a build renewed it) it wins
//	id        the 32-byte mailbox id: the same on every relay of the mailbox,
//	          because a card names one mailbox id for all its relays
//	owner     the Ed25519 seed of the owner key, the same on every relay
//	send_cap  the send capability, if the mailbox needs one
//	card      the contact card for it, as last printed
//	next      a rotation under way (mailbox rotate): the new id, owner key
//	          and send capability, written before any relay is asked to
//	          move the mailbox, so that a rotation a crash or a failed
//	          write interrupts can be finished (rotate again) with the
//	          keys the relays already moved it to
//	others    more mailboxes, each an object with the fields above except
//	          version and others
//
// Version 1 (no "version" field) is the same object with "relay" only and
// no "others": it is read as one mailbox named "main" and written back as
// version 2 on the next change. A postern that knows version 1 only still
// reads the primary mailbox of a version 2 file (and drops the others if it
// rewrites it).
const mailboxFileVersion = 2

// mailboxState is one mailbox, and at the top of the file the primary one.
type mailboxState struct {
	Version int             `json:"version,omitempty"`
	Name    string          `json:"name,omitempty"`
	Relays  []string        `json:"relays,omitempty"`
	Relay   string          `json:"relay"`          // relays[0]; see above
	ID      []byte          `json:"id"`             // 32-byte mailbox id
	Owner   []byte          `json:"owner"`          // Ed25519 seed of the owner key
	SendCap []byte          `json:"send_cap"`       // send capability, if any
	Card    string          `json:"card"`           // the contact card printed at creation
	Next    *mailboxState   `json:"next,omitempty"` // a rotation under way
	Others  []*mailboxState `json:"others,omitempty"`
}

// primaryName is the name of a version 1 file's mailbox and of the first.
const primaryName = "main"

func mailboxPath(idPath string) string { return idPath + ".mailbox" }

func (m *mailboxState) id() (out [32]byte) { copy(out[:], m.ID); return }

func (m *mailboxState) owner() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(m.Owner) }

// relays are the descriptors of the relays that hold the mailbox.
func (m *mailboxState) relays() []string {
	if len(m.Relays) > 0 {
		return m.Relays
	}
	if m.Relay != "" {
		return []string{m.Relay}
	}
	return nil
}

// capVerifier is what the relay checks send capabilities against.
func (m *mailboxState) capVerifier() []byte {
	if len(m.SendCap) == 0 {
		return nil
	}
	sum := sha256.Sum256(m.SendCap)
	return sum[:]
}

// mailboxes are an identity's mailboxes, the primary first.
type mailboxes struct {
	idPath string
	list   []*mailboxState

	// mu guards the mailboxes' relay lines and cards, and the file, while
	// a relay's answer to a descriptor request may land (renew): code that
	// may run beside one reads relay lines through line. renewing counts
	// those answers still awaited; once settled (settle) no more are
	// asked for.
	mu       sync.Mutex
	renewing sync.WaitGroup
	settled  bool
}

// loadMailbox returns the primary mailbox (with the others in Others).
func loadMailbox(idPath string) (*mailboxState, error) {
	ms, err := loadMailboxes(idPath)
	if err != nil {
		return nil, err
	}
	top := ms.list[0]
	top.Others = ms.list[1:]
	return top, nil
}

// loadMailboxes reads ID_FILE.mailbox, migrating a version 1 file in
// memory. Every error names the file.
func loadMailboxes(idPath string) (*mailboxes, error) {
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
	var top mailboxState
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("mailbox state %s is corrupt", p)
	}
	if top.Version > mailboxFileVersion {
		return nil, fmt.Errorf("mailbox state %s is version %d, written by a newer postern: upgrade postern", p, top.Version)
	}
	ms := &mailboxes{idPath: idPath, list: append([]*mailboxState{&top}, top.Others...)}
	names := map[string]bool{}
	for i, m := range ms.list {
		if m == nil || len(m.ID) != 32 || len(m.Owner) != ed25519.SeedSize || len(m.Relays) > envelope.MaxRelays ||
			(i > 0 && (m.Others != nil || m.Version != 0)) {
			return nil, fmt.Errorf("mailbox state %s is corrupt", p)
		}
		if n := m.Next; n != nil && (len(n.ID) != 32 || len(n.Owner) != ed25519.SeedSize || n.Next != nil || n.Others != nil) {
			return nil, fmt.Errorf("mailbox state %s is corrupt", p)
		}
		if m.Name == "" {
			m.Name = defaultName(i)
		}
		if names[m.Name] {
			return nil, fmt.Errorf("mailbox state %s is corrupt (two mailboxes named %q)", p, m.Name)
		}
		names[m.Name] = true
		if m.Relay != "" && len(m.Relays) > 0 && m.Relays[0] != m.Relay {
			m.Relays[0] = m.Relay
		}
		m.Version, m.Others = 0, nil
	}
	top.Version = mailboxFileVersion
	return ms, nil
}

func defaultName(i int) string {
	if i == 0 {
		return primaryName
	}
	return fmt.Sprintf("mailbox%d", i+1)
}

// update applies change to the mailbox file as it is on disk now (no
// file: no mailbox), under the identity's state lock, and writes the
// result with every mailbox's card refreshed. A command must not write
// back the copy it loaded when it began: meanwhile another postern may
// have made or rotated a mailbox, or a `recv --follow` renewed a relay
// line, and writing the old copy would drop that, a new mailbox's owner
// key with its card already handed out. change finds the mailboxes it
// changes by id (byID); what it puts in the list is written as is.
func (ms *mailboxes) update(id *envelope.Identity, change func(disk *mailboxes) error) error {
	beforeUpdate()
	defer lockState(ms.idPath)()
	disk, err := loadMailboxes(ms.idPath)
	if err != nil {
		if _, statErr := os.Stat(mailboxPath(ms.idPath)); !errors.Is(statErr, os.ErrNotExist) {
			return err
		}
		disk = &mailboxes{idPath: ms.idPath}
	}
	if err := change(disk); err != nil {
		return err
	}
	return disk.saveLocked(id)
}

// beforeUpdate runs before an update of the state files takes the lock:
// a test runs another postern there.
var beforeUpdate = func() {}

// byID returns the mailbox of the list whose id is m's, or nil.
func (ms *mailboxes) byID(m *mailboxState) *mailboxState {
	for _, o := range ms.list {
		if bytes.Equal(o.ID, m.ID) {
			return o
		}
	}
	return nil
}

// saveLocked refreshes every mailbox's card and writes the file (0600);
// with no mailbox left it removes the file. The caller holds the state
// lock (update).
func (ms *mailboxes) saveLocked(id *envelope.Identity) error {
	if len(ms.list) == 0 {
		err := os.Remove(mailboxPath(ms.idPath))
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		return err
	}
	for _, m := range ms.list {
		if rs := m.relays(); len(rs) > 0 {
			m.Relays, m.Relay = rs, rs[0]
			card, err := id.Card(m.id(), rs, m.SendCap).Encode()
			if err != nil {
				return err
			}
			m.Card = card
		}
	}
	top := *ms.list[0]
	top.Version, top.Others = mailboxFileVersion, ms.list[1:]
	out, _ := json.MarshalIndent(&top, "", "  ")
	return writeFileAtomic(mailboxPath(ms.idPath), append(out, '\n'), 0o600)
}

// find returns the mailbox called name; "" means the only one.
func (ms *mailboxes) find(name string) (*mailboxState, error) {
	if name == "" {
		if len(ms.list) == 1 {
			return ms.list[0], nil
		}
		return nil, usageErr("%s has %d mailboxes: name one with --name (`postern mailbox list --id %s` shows them)", ms.idPath, len(ms.list), ms.idPath)
	}
	for _, m := range ms.list {
		if m.Name == name {
			return m, nil
		}
	}
	return nil, fmt.Errorf("no mailbox named %q for %s: `postern mailbox list --id %s` shows them", name, ms.idPath, ms.idPath)
}

// remove drops m from the list.
func (ms *mailboxes) remove(m *mailboxState) {
	for i, o := range ms.list {
		if o == m {
			ms.list = append(ms.list[:i], ms.list[i+1:]...)
			return
		}
	}
}

// newMailbox makes a fresh random mailbox id and owner key (and a send
// capability with withCap) for the relays.
func newMailbox(name string, relays []string, withCap bool) *mailboxState {
	m := &mailboxState{Name: name, Relays: relays, ID: make([]byte, 32), Owner: make([]byte, ed25519.SeedSize)}
	rand.Read(m.ID)
	rand.Read(m.Owner)
	if withCap {
		m.SendCap = make([]byte, 32)
		rand.Read(m.SendCap)
	}
	return m
}

// dialAt connects to the mailbox's relay i and asks it for its current
// descriptor; when the relay has renewed it, the new one is kept in the
// mailbox file (and so in the card). The question goes out beside the
// session's first request instead of before it, a round trip less: the
// relay answers it before it reads that request, and a goroutine saves
// what the answer changes (renew) while the caller goes on. settle waits
// for those.
func (ms *mailboxes) dialAt(ctx context.Context, e *env, id *envelope.Identity, m *mailboxState, i int) (*client.Client, error) {
	line := ms.line(m, i)
	c, ds, err := dialParsed(ctx, e, line)
	if err != nil {
		return nil, err
	}
	ms.mu.Lock()
	if ms.settled {
		ms.mu.Unlock()
		return c, nil
	}
	ms.renewing.Add(1)
	ms.mu.Unlock()
	wait, err := c.DescriptorLater(ctx)
	if err != nil {
		ms.renewing.Done()
		return c, nil // the session's own requests will say what failed
	}
	// The answer is awaited past ctx: a caller racing dials cancels ctx as
	// soon as this session won. It ends when the session does, at the
	// latest (the command closes its sessions before it settles).
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), renewWait)
	go func() {
		defer ms.renewing.Done()
		defer cancel()
		if fresh, err := wait(wctx); err == nil {
			ms.renew(e, id, m, i, line, fresh, ds)
		}
	}()
	return c, nil
}

// renewWait bounds the wait for a relay's descriptor when its session
// stays open without an answer.
const renewWait = time.Minute

// line returns the descriptor line of m's relay i.
func (ms *mailboxes) line(m *mailboxState, i int) string {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return m.relays()[i]
}

// renew keeps fresh, what m's relay i answered for its current
// descriptor, in place of old when it is a valid descriptor of one of the
// relays in ds that expires later than old, and saves the file.
func (ms *mailboxes) renew(e *env, id *envelope.Identity, m *mailboxState, i int, old, fresh string, ds []*descriptor.Descriptor) {
	if newer(fresh, ds) == "" {
		return
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	rs := slices.Clone(m.relays())
	if rs[i] != old {
		return // renewed already, by another session
	}
	rs[i] = fresh
	m.Relays = rs
	if !slices.Contains(ms.list, m) {
		return // a mailbox being made: its first save carries the renewal
	}
	// The file may have changed since this process read it (a long
	// `recv --follow` beside `mailbox create` or `rotate`): the renewal is
	// applied to what is on disk now, under the lock, not to this
	// process's copy, which would write over the other's change.
	err := ms.update(id, func(disk *mailboxes) error {
		if dm := disk.byID(m); dm != nil {
			if drs := dm.relays(); i < len(drs) && drs[i] == old {
				drs = slices.Clone(drs)
				drs[i] = fresh
				dm.Relays, dm.Relay = drs, drs[0]
			}
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(e.stderr, "warning: a relay renewed its descriptor, but %s could not be updated: %v\n", mailboxPath(ms.idPath), err)
		return
	}
	fmt.Fprintf(e.stderr, "a relay renewed its descriptor: %s is updated, and the card of mailbox %q changed; `postern mailbox show --name %s` prints it for your contacts\n",
		mailboxPath(ms.idPath), m.Name, m.Name)
}

// settle waits for the renewals dialAt started (their sessions answered
// or ended) and stops further ones: sessions dialled later, such as the
// loser of a race that opens anyway, ask no relay for its descriptor.
func (ms *mailboxes) settle() {
	ms.mu.Lock()
	ms.settled = true
	ms.mu.Unlock()
	ms.renewing.Wait()
}

// onEachRelay runs do on a session to each of m's relays in turn and
// returns the errors by relay index (nil where it worked).
func (ms *mailboxes) onEachRelay(ctx context.Context, e *env, id *envelope.Identity, m *mailboxState,
	do func(c *client.Client) error) []error {
	errs := make([]error, len(m.relays()))
	for i := range errs {
		c, err := ms.dialAt(ctx, e, id, m, i)
		if err == nil {
			err = do(c)
			c.Close()
		}
		errs[i] = scrubAddrs(err)
	}
	ms.settle()
	return errs
}

// descriptorLines reads --relay values (descriptors or files holding
// them), at most envelope.MaxRelays, no relay twice.
func descriptorLines(vals []string) ([]string, error) {
	if len(vals) > envelope.MaxRelays {
		return nil, usageErr("a card holds at most %d relays; %d --relay flags given", envelope.MaxRelays, len(vals))
	}
	var lines []string
	for _, v := range vals {
		line, err := lineArg(v, descriptor.Prefix)
		if err != nil {
			return nil, err
		}
		d, _, err := descriptor.ParseStale(line, time.Now())
		if err != nil {
			return nil, fmt.Errorf("relay descriptor %s: %w", truncate(v, 24), err)
		}
		if indexRelay(lines, d) >= 0 {
			return nil, usageErr("--relay %s names a relay given before", truncate(v, 24))
		}
		lines = append(lines, line)
	}
	return lines, nil
}

// sameKeys reports whether two cards belong to the same identity.
func sameKeys(a, b *envelope.Card) bool {
	return bytes.Equal(a.Auth, b.Auth) && bytes.Equal(a.X25519, b.X25519) && bytes.Equal(a.XWing, b.XWing)
}

// lockState takes an exclusive lock on ID_FILE.lock while an identity's
// state files (mailboxes, contacts) are read, changed and written, so that
// two postern processes (a `recv --follow` that renews a relay line beside
// a `mailbox create`) do not write over each other's change. It waits for
// the lock. A process that cannot lock goes on without it.
func lockState(idPath string) func() { return route.LockFile(idPath + ".lock") }
