package policy

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// Direction is a direction as seen from an endpoint: ingress is traffic
// towards the container, egress traffic it sends. Policy keys, verdict
// events and metrics all use this one type; the values are those of the
// datapath's policy key (bpf/lib/maps.h POLICY_INGRESS, POLICY_EGRESS).
type Direction uint8

// Directions.
const (
	Ingress Direction = 0
	Egress  Direction = 1
)

// String names the direction as the CLI prints it.
func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction-%d", uint8(d))
}

// Valid reports whether d is Ingress or Egress.
func (d Direction) Valid() bool { return d == Ingress || d == Egress }

// Key is one allow entry of an endpoint's policy map: traffic with the peer
// Identity, to destination Port over Proto, in Direction. Identity 0 means
// any peer; Port 0 means any port; Proto 0 means any protocol and comes only
// with Port 0 (an item without toPorts). Port is in host byte order here;
// MarshalBinary puts it in network order, as the program compares it. Port 0
// with TCP or UDP (a rule port "0" or without a port) means every port of
// that protocol, so the datapath also looks up (identity, 0, proto) and
// (0, 0, proto), besides the exact key and the (…, 0, 0) wildcards.
type Key struct {
	Identity  uint32    `json:"identity"`
	Port      uint16    `json:"port"`
	Proto     uint8     `json:"proto"`
	Direction Direction `json:"direction"`
}

// KeySize is sizeof(struct policy_key) of bpf/lib/maps.h.
const KeySize = 8

// MarshalBinary lays the key out as struct policy_key: the identity in the
// host's byte order (BPF runs little-endian here), the port in network
// order, then protocol and direction. cilium/ebpf uses it for map keys.
func (k Key) MarshalBinary() ([]byte, error) {
	b := make([]byte, KeySize)
	binary.NativeEndian.PutUint32(b[0:4], k.Identity)
	binary.BigEndian.PutUint16(b[4:6], k.Port)
	b[6] = k.Proto
	b[7] = uint8(k.Direction)
	return b, nil
}

// UnmarshalBinary reads a struct policy_key back.
func (k *Key) UnmarshalBinary(b []byte) error {
	if len(b) != KeySize {
		return fmt.Errorf("policy key of %d bytes, want %d", len(b), KeySize)
	}
	k.Identity = binary.NativeEndian.Uint32(b[0:4])
	k.Port = binary.BigEndian.Uint16(b[4:6])
	k.Proto = b[6]
	k.Direction = Direction(b[7])
	return nil
}

func (k Key) String() string {
	return fmt.Sprintf("%s identity=%d port=%d proto=%d", k.Direction, k.Identity, k.Port, k.Proto)
}

func (k Key) less(o Key) bool {
	if k.Direction != o.Direction {
		return k.Direction < o.Direction
	}
	if k.Identity != o.Identity {
		return k.Identity < o.Identity
	}
	if k.Proto != o.Proto {
		return k.Proto < o.Proto
	}
	return k.Port < o.Port
}

// SortKeys orders keys by direction, identity, protocol, port.
func SortKeys(keys []Key) {
	sort.Slice(keys, func(i, j int) bool { return keys[i].less(keys[j]) })
}

// EndpointPolicy is everything the datapath enforces for one endpoint:
// whether each direction is enforced (default-deny), whether denials are
// only reported (audit), and the entries that allow traffic in an enforced
// direction. A direction that is not enforced has no entries.
type EndpointPolicy struct {
	IngressEnforced bool
	EgressEnforced  bool
	// Audit lets denied new flows pass, reported with verdict audit.
	Audit   bool
	Entries map[Key]struct{}
}

// DenyAll is the policy of an endpoint whose policy cannot be computed:
// both directions enforced, nothing allowed. Failing closed never opens
// an endpoint by mistake.
func DenyAll() EndpointPolicy {
	return EndpointPolicy{IngressEnforced: true, EgressEnforced: true, Entries: map[Key]struct{}{}}
}

// SortedEntries returns the entries in SortKeys order.
func (p EndpointPolicy) SortedEntries() []Key {
	out := make([]Key, 0, len(p.Entries))
	for k := range p.Entries {
		out = append(out, k)
	}
	SortKeys(out)
	return out
}

// Validate checks what the datapath relies on: known directions, and no
// more entries than a policy map holds (maxEntries).
func (p EndpointPolicy) Validate(maxEntries int) error {
	for k := range p.Entries {
		if !k.Direction.Valid() {
			return fmt.Errorf("policy key %v: direction must be ingress or egress", k)
		}
	}
	if len(p.Entries) > maxEntries {
		return fmt.Errorf("policy has %d entries, the map holds %d", len(p.Entries), maxEntries)
	}
	return nil
}

// Diff returns what to add to and remove from a policy map holding old so
// that it holds new, each sorted, so the datapath can update in place
// instead of rewriting the map (which would drop traffic in between).
func Diff(old, new map[Key]struct{}) (add, remove []Key) {
	for k := range new {
		if _, ok := old[k]; !ok {
			add = append(add, k)
		}
	}
	for k := range old {
		if _, ok := new[k]; !ok {
			remove = append(remove, k)
		}
	}
	SortKeys(add)
	SortKeys(remove)
	return add, remove
}
