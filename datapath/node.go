package datapath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// nodeProgram is a program of bpf/bpf_node.c and its slot in ebpfnet_calls
// (CALL_* in bpf/lib/maps.h).
type nodeProgram struct {
	name string
	slot uint32
}

// nodePrograms are the node programs every endpoint's entry programs
// tail-call into. The slots are part of the skb->cb contract (bpf/lib/cb.h):
// a new layout takes new slots, so an endpoint object of an older version
// never reaches a program that reads another layout. Slot 3, the last of
// the array (its size is part of every endpoint object's pinned map), is
// the IPv6 verdict, where an endpoint's handle_policy returns for an IPv6
// flow.
func nodePrograms() []nodeProgram {
	return []nodeProgram{
		{"node_from_container", 0},
		{"node_to_container", 1},
		{"node_policy_verdict", 2},
		{"node_policy_verdict6", 3},
	}
}

// nodePrograms6 are the IPv6 node programs in ebpfnet_calls6 (CALL6_* in
// bpf/lib/maps6.h), which the programs of ebpfnet_calls and
// node_from_overlay hand IPv6 packets to, skb->cb unchanged.
func nodePrograms6() []nodeProgram {
	return []nodeProgram{
		{"node_from_container6", 0},
		{"node_to_container6", 1},
		{"node_from_overlay6", 2},
	}
}

// loadNodePrograms loads the node programs of spec (the node object)
// against the shared and node maps and puts them in ebpfnet_calls and
// ebpfnet_calls6, replacing, one atomic slot at a time, those of the
// daemon that ran before: the IPv6 ones first, so that the IPv4 programs
// that hand packets to them never find an empty slot. They are verified
// here once for every endpoint, which is what keeps an endpoint's own
// object small. The arrays (pinned) hold them; the daemon keeps no
// descriptor.
func (d *Datapath) loadNodePrograms(spec *ebpf.CollectionSpec) error {
	// The node programs redirect to the overlay device by index.
	if v := spec.Variables["OVERLAY_IFINDEX"]; v == nil {
		return errors.New("node object lacks OVERLAY_IFINDEX")
	} else if err := v.Set(uint32(d.overlayIfindex)); err != nil {
		return fmt.Errorf("set OVERLAY_IFINDEX: %w", err)
	}
	repl := make(map[string]*ebpf.Map, len(spec.Maps))
	for name := range spec.Maps {
		if m, ok := d.shared[name]; ok {
			repl[name] = m
			continue
		}
		if m, ok := d.nodeMaps[name]; ok {
			repl[name] = m
			continue
		}
		if strings.HasPrefix(name, ".rodata") {
			continue // the node programs' constants (OVERLAY_IFINDEX)
		}
		// Declared in the shared header but not a node map (the
		// per-endpoint policy map): a program that used it would
		// fail to load, which is what we want.
		delete(spec.Maps, name)
	}
	coll, err := d.loadCollection(spec, repl)
	if err != nil {
		return fmt.Errorf("load node programs: %w", err)
	}
	defer coll.Close()
	for _, set := range []struct {
		progs []nodeProgram
		calls string
		array *ebpf.Map
	}{
		{nodePrograms6(), Calls6MapName, d.nodeMaps[Calls6MapName]},
		{nodePrograms(), CallsMapName, d.shared[CallsMapName]},
	} {
		for _, np := range set.progs {
			p := coll.Programs[np.name]
			if p == nil {
				return fmt.Errorf("node object lacks program %s", np.name)
			}
			if err := set.array.Put(np.slot, p); err != nil {
				return fmt.Errorf("insert %s in %s: %w", np.name, set.calls, err)
			}
		}
	}
	if d.overlayIfindex != 0 {
		p := coll.Programs[progFromOverlay]
		if p == nil {
			return fmt.Errorf("node object lacks program %s", progFromOverlay)
		}
		if err := attachOverlay(d.overlayIfindex, p); err != nil {
			return err
		}
	}
	return nil
}

// loadCollection loads spec against the maps in repl. A verifier error
// comes with the verifier's whole log (%+v): the one thing that says why.
func (d *Datapath) loadCollection(spec *ebpf.CollectionSpec, repl map[string]*ebpf.Map) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		MapReplacements: repl,
		Cache:           d.btf,
	})
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return nil, fmt.Errorf("%+v", ve)
	}
	return coll, err
}
