package datapath

import (
	"sync"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
)

// policyMapSparesWanted is how many empty policy maps are kept ready:
// enough for a burst of two creations (they are serialized anyway) while
// the next ones are being made.
const policyMapSparesWanted = 2

// policyMapSpares keeps a few empty per-endpoint policy maps made ahead
// of time. Making one is the largest single step on the programs' side of
// CreateEndpoint (0.19-0.22 of 0.88 ms, BenchmarkCreateEndpoint with the
// state on tmpfs): the kernel allocates and zeroes the hash table's
// buckets, one per possible entry. Spares are made after a creation has
// returned, while Docker goes on with the container. They are neither
// pinned nor filled: nothing refers to them, and they go with the
// daemon's descriptors if it dies.
type policyMapSpares struct {
	spec *ebpf.MapSpec
	want int
	log  logrus.FieldLogger

	mu        sync.Mutex
	maps      []*ebpf.Map
	refilling bool
	closed    bool
	wg        sync.WaitGroup
}

func newPolicyMapSpares(spec *ebpf.MapSpec, want int, log logrus.FieldLogger) *policyMapSpares {
	return &policyMapSpares{spec: spec, want: want, log: log}
}

// take returns an empty policy map: a spare, or a new one when none is
// left.
func (s *policyMapSpares) take() (*ebpf.Map, error) {
	s.mu.Lock()
	var m *ebpf.Map
	if n := len(s.maps); n > 0 {
		m, s.maps = s.maps[n-1], s.maps[:n-1]
	}
	s.mu.Unlock()
	if m != nil {
		return m, nil
	}
	return ebpf.NewMap(s.spec)
}

// refill makes spares up to the number wanted, in the background, unless
// that is under way already or the spares are closed.
func (s *policyMapSpares) refill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.refilling || len(s.maps) >= s.want {
		return
	}
	s.refilling = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for s.makeOne() {
		}
	}()
}

// makeOne adds a spare; false once there are enough, the spares are
// closed or the kernel refuses (then take makes maps itself, and its
// error is the one the caller sees).
func (s *policyMapSpares) makeOne() bool {
	s.mu.Lock()
	if s.closed || len(s.maps) >= s.want {
		s.refilling = false
		s.mu.Unlock()
		return false
	}
	s.mu.Unlock()
	m, err := ebpf.NewMap(s.spec)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil || s.closed {
		s.refilling = false
		if err != nil {
			s.log.WithError(err).Debug("make a spare policy map")
		} else {
			_ = m.Close()
		}
		return false
	}
	s.maps = append(s.maps, m)
	return true
}

// ready is how many spares there are now.
func (s *policyMapSpares) ready() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.maps)
}

// close waits for a refill under way and closes the spares.
func (s *policyMapSpares) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	for _, m := range s.maps {
		_ = m.Close()
	}
	s.maps = nil
}
