package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/datapath"
)

// networkRecord is what we persist of a Docker network. Docker never replays
// CreateNetwork after a restart, so this file is the only memory of it.
type networkRecord struct {
	ID       string            `json:"id"`
	Datapath datapath.Network  `json:"datapath"`
	Internal bool              `json:"internal,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
}

// networkStore keeps the networks in memory and in one JSON file, replaced
// atomically on every change. It is not safe for concurrent use: the Driver
// serialises access.
type networkStore struct {
	path     string
	networks map[string]networkRecord
}

func loadNetworkStore(path string) (*networkStore, error) {
	s := &networkStore{path: path, networks: map[string]networkRecord{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read network state %s: %w", path, err)
	}
	var list []networkRecord
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("parse network state %s (fix or remove it): %w", path, err)
	}
	for _, n := range list {
		s.networks[n.ID] = n
	}
	return s, nil
}

func (s *networkStore) get(id string) (networkRecord, bool) {
	n, ok := s.networks[id]
	return n, ok
}

func (s *networkStore) list() []networkRecord {
	out := make([]networkRecord, 0, len(s.networks))
	for _, n := range s.networks {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Datapath.Index < out[j].Datapath.Index })
	return out
}

// freeIndex returns the lowest network index not in use. Index 0 is never
// handed out so that a zero value in a BPF map means "no network".
func (s *networkStore) freeIndex() (uint32, error) {
	used := make(map[uint32]bool, len(s.networks))
	for _, n := range s.networks {
		used[n.Datapath.Index] = true
	}
	for i := uint32(1); i <= 65535; i++ {
		if !used[i] {
			return i, nil
		}
	}
	return 0, errors.New("no free network index: 65535 ebpfnet networks exist")
}

// put stores n and persists; on a failed write the memory is left unchanged.
func (s *networkStore) put(n networkRecord) error {
	old, had := s.networks[n.ID]
	s.networks[n.ID] = n
	if err := s.save(); err != nil {
		if had {
			s.networks[n.ID] = old
		} else {
			delete(s.networks, n.ID)
		}
		return err
	}
	return nil
}

// remove forgets id and persists; on a failed write the memory is left unchanged.
func (s *networkStore) remove(id string) error {
	old, had := s.networks[id]
	if !had {
		return nil
	}
	delete(s.networks, id)
	if err := s.save(); err != nil {
		s.networks[id] = old
		return err
	}
	return nil
}

func (s *networkStore) save() error {
	data, err := json.MarshalIndent(s.list(), "", "  ")
	if err != nil {
		return fmt.Errorf("encode network state: %w", err)
	}
	if err := atomicfile.Write(s.path, data, 0o600); err != nil {
		return fmt.Errorf("persist network state: %w", err)
	}
	return nil
}
