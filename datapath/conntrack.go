package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// ctKey mirrors struct ct_key of bpf/lib/maps.h: a flow's tuple, addresses
// and ports in network byte order, the end with the lower (address, port)
// first (ordered), so that both directions of a flow share one key.
type ctKey struct {
	Saddr [4]byte
	Daddr [4]byte
	Sport [2]byte
	Dport [2]byte
	Proto uint8
	Pad   [3]uint8
}

// ctEntry mirrors struct ct_entry.
type ctEntry struct {
	LastSeen uint64
}

// ordered tells whether k is in the order ct_key_of (bpf/lib/conntrack.h)
// writes: the program compares the fields as the integers the CPU loads
// from them, so they are read here in the native byte order.
func (k ctKey) ordered() bool {
	sa, da := binary.NativeEndian.Uint32(k.Saddr[:]), binary.NativeEndian.Uint32(k.Daddr[:])
	sp, dp := binary.NativeEndian.Uint16(k.Sport[:]), binary.NativeEndian.Uint16(k.Dport[:])
	return sa < da || (sa == da && sp <= dp)
}

// swapped is the same flow seen from its other end.
func (k ctKey) swapped() ctKey {
	return ctKey{Saddr: k.Daddr, Daddr: k.Saddr, Sport: k.Dport, Dport: k.Sport, Proto: k.Proto, Pad: k.Pad}
}

// orderConntrack gives every flow that an earlier version keyed by its
// first packet's tuple, ends in the wrong order, the key the programs now
// look up, so that an established flow stays established across an
// upgrade (its replies would otherwise meet policy as new flows). The old
// keys stay: programs of the earlier version may still run until Restore
// has replaced them, and the LRU ages the keys out. Restore runs it before
// and after reloading the programs, when it upgrades an earlier version.
func (d *Datapath) orderConntrack() error {
	m := d.shared[CTMapName]
	var k ctKey
	var v ctEntry
	type kv struct {
		k ctKey
		v ctEntry
	}
	var old []kv
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !k.ordered() {
			old = append(old, kv{k, v})
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", CTMapName, err)
	}
	var errs []error
	for _, e := range old {
		err := m.Update(e.k.swapped(), e.v, ebpf.UpdateNoExist)
		if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reorder %s keys: %w", CTMapName, err)
	}
	return nil
}
