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
