package endpoint

import "sync"

// queue is the manager's unbounded FIFO of events. Putting never blocks,
// so that anyone may queue from anywhere, the driver under its lock and
// the manager's own loop included (an identity freed inside the loop
// queues its change); a bounded channel would deadlock the loop on itself
// when full.
type queue struct {
	mu     sync.Mutex
	items  []event
	ready  chan struct{} // holds a token while items is not empty
	closed bool
}

func newQueue() *queue {
	return &queue{ready: make(chan struct{}, 1)}
}

// put appends ev. After close it reports false and drops ev.
func (q *queue) put(ev event) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	q.items = append(q.items, ev)
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

// take removes the oldest event, if any.
func (q *queue) take() (event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return nil, false
	}
	ev := q.items[0]
	q.items[0] = nil
	q.items = q.items[1:]
	if len(q.items) > 0 {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return ev, true
}

// close refuses further events; those queued are still taken.
func (q *queue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}
