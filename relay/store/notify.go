package store

import "sync"

// Notifier implements Store.Notify for Store implementations: it wakes the
// subscribers of a mailbox, keyed by its hash (Keys.MailboxHash), and lives
// in process memory only. The zero value is ready to use. Safe for
// concurrent use.
type Notifier struct {
	mu     sync.Mutex
	closed bool
	subs   map[[32]byte]map[chan struct{}]struct{}
}

// Subscribe is Store.Notify for the mailbox with hash hid. After Close it
// returns a closed channel.
func (n *Notifier) Subscribe(hid [32]byte) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		close(ch)
		return ch, func() {}
	}
	if n.subs == nil {
		n.subs = make(map[[32]byte]map[chan struct{}]struct{})
	}
	set := n.subs[hid]
	if set == nil {
		set = make(map[chan struct{}]struct{})
		n.subs[hid] = set
	}
	set[ch] = struct{}{}
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			n.mu.Lock()
			defer n.mu.Unlock()
			if set := n.subs[hid]; set != nil {
				delete(set, ch)
				if len(set) == 0 {
					delete(n.subs, hid)
				}
			}
		})
	}
}

// Wake signals every subscriber of the mailbox with hash hid, without
// blocking: a subscriber that has a signal pending keeps just the one.
func (n *Notifier) Wake(hid [32]byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs[hid] {
		select {
		case ch <- struct{}{}:
		default: // already pending; coalesce
		}
	}
}

// Close closes every subscriber channel; later subscriptions get a closed
// channel. Calling it again does nothing.
func (n *Notifier) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	for _, set := range n.subs {
		for ch := range set {
			close(ch)
		}
	}
	n.subs = nil
}
