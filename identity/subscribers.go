package identity

import "sync"

// subscribers delivers Changes in the order they happened. A backend
// queues a change while it holds its own lock (so the order is the order
// of the changes) and delivers after unlocking (so a subscriber may call
// back into it). Delivery is serialised: two goroutines delivering at once
// never reorder the changes.
type subscribers struct {
	mu      sync.Mutex
	nextID  int
	fns     map[int]func(Change)
	pending []Change

	deliverMu sync.Mutex
}

func (s *subscribers) add(fn func(Change)) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fns == nil {
		s.fns = map[int]func(Change){}
	}
	id := s.nextID
	s.nextID++
	s.fns[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.fns, id)
	}
}

// queue records a change for the next deliver.
func (s *subscribers) queue(c Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fns) == 0 {
		return
	}
	s.pending = append(s.pending, c)
}

// deliver hands every queued change to every subscriber.
func (s *subscribers) deliver() {
	s.deliverMu.Lock()
	defer s.deliverMu.Unlock()
	s.mu.Lock()
	pending := s.pending
	s.pending = nil
	fns := make([]func(Change), 0, len(s.fns))
	for _, fn := range s.fns {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, c := range pending {
		for _, fn := range fns {
			fn(c)
		}
	}
}

// Notifier is the same ordered delivery for an Allocator kept outside this
// package (etcd's in a cluster): Queue a change while holding the lock
// that orders the changes, Deliver after releasing it. The zero value is
// ready to use.
type Notifier struct{ s subscribers }

// Add calls fn for every change delivered from now on, until cancel.
func (n *Notifier) Add(fn func(Change)) (cancel func()) { return n.s.add(fn) }

// Queue records a change for the next Deliver; with no subscriber it is
// dropped.
func (n *Notifier) Queue(c Change) { n.s.queue(c) }

// Deliver hands every queued change to every subscriber, in the order
// queued; two Delivers at once never reorder them.
func (n *Notifier) Deliver() { n.s.deliver() }
