package store

import "sync"

// notifier wakes subscribers of a mailbox (keyed by its hash). It lives in
// memory only.
type notifier struct {
	mu     sync.Mutex
	closed bool
	subs   map[[32]byte]map[chan struct{}]struct{}
}

func newNotifier() *notifier {
	return &notifier{subs: make(map[[32]byte]map[chan struct{}]struct{})}
}

func (n *notifier) subscribe(hid [32]byte) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		close(ch)
		return ch, func() {}
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

func (n *notifier) wake(hid [32]byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs[hid] {
		select {
		case ch <- struct{}{}:
		default: // already pending; coalesce
		}
	}
}

// close closes every subscriber channel.
func (n *notifier) close() {
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
