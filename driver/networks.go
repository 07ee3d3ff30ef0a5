package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/dockerid"
)

// networkRecord is what we persist of a Docker network. Docker never replays
// CreateNetwork after a restart, so this file is the only memory of it.
type networkRecord struct {
	ID       string            `json:"id"`
	Datapath datapath.Network  `json:"datapath"`
	Internal bool              `json:"internal,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	// Rebuilt marks a record rebuilt from its endpoints' (the file was
	// lost): Internal and Options are guesses until Docker confirms them
	// (Driver.Confirm).
	Rebuilt bool `json:"rebuilt,omitempty"`
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
		return nil, atomicfile.Corrupt(fmt.Errorf("network state %s is corrupt: %w", path, err))
	}
	indexes := map[uint32]string{}
	for i, n := range list {
		if err := n.check(); err != nil {
			return nil, atomicfile.Corrupt(fmt.Errorf("network state %s is corrupt: network %d: %w", path, i, err))
		}
		if _, dup := s.networks[n.ID]; dup {
			return nil, atomicfile.Corrupt(fmt.Errorf("network state %s is corrupt: network %s appears twice", path, dockerid.Short(n.ID)))
		}
		if other, dup := indexes[n.Datapath.Index]; dup {
			return nil, atomicfile.Corrupt(fmt.Errorf("network state %s is corrupt: networks %s and %s have index %d",
				path, dockerid.Short(other), dockerid.Short(n.ID), n.Datapath.Index))
		}
		indexes[n.Datapath.Index] = n.ID
		s.networks[n.ID] = n
	}
	return s, nil
}

// check says why a record cannot be a network, or nil.
func (n networkRecord) check() error {
	switch dp := n.Datapath; {
	case n.ID == "":
		return errors.New("no network ID")
	case dp.Index == 0 || dp.Index > 0xffff:
		return fmt.Errorf("index %d: want 1 to 65535", dp.Index)
	case !dp.Subnet.IsValid() && !dp.Subnet6.IsValid():
		return errors.New("neither an IPv4 nor an IPv6 subnet")
	case dp.Subnet.IsValid() && (!dp.Subnet.Addr().Is4() || dp.Subnet != dp.Subnet.Masked()):
		return fmt.Errorf("subnet %v is not a canonical IPv4 prefix", dp.Subnet)
	case dp.Subnet.IsValid() && (!dp.Gateway.Is4() || !dp.Subnet.Contains(dp.Gateway)):
		return fmt.Errorf("gateway %v is not in subnet %s", dp.Gateway, dp.Subnet)
	case dp.Subnet6.IsValid() && (!dp.Subnet6.Addr().Is6() || dp.Subnet6.Addr().Is4In6() || dp.Subnet6 != dp.Subnet6.Masked()):
		return fmt.Errorf("subnet %v is not a canonical IPv6 prefix", dp.Subnet6)
	case dp.Subnet6.IsValid() && !dp.Subnet6.Contains(dp.Gateway6):
		return fmt.Errorf("gateway %v is not in subnet %s", dp.Gateway6, dp.Subnet6)
	}
	return nil
}

// CheckState loads the network state file at path as New would, without
// doing anything with it, and says how many networks it holds: none and
// nil when it is missing.
func CheckState(path string) (networks int, err error) {
	s, err := loadNetworkStore(path)
	if err != nil {
		return 0, err
	}
	return len(s.networks), nil
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
