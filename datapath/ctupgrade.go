package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Upgrading the conntrack table of an earlier version.
//
// Versions before flow states pinned ebpfnet_ct4 with 8-byte values: the
// last time (CLOCK_MONOTONIC ns) a packet of the flow was seen; the oldest
// of them keyed a flow by its first packet's tuple rather than by its
// ordered ends. The layout of a map cannot change under its pin, so New
// builds a table of the current layout, carries every flow over and takes
// the pin for it. Established flows survive the upgrade: each keeps its
// ordered key, a TCP flow becomes established, every flow gets its
// protocol's timeout from its last-seen time (one already past it is left
// behind, as it would have expired), and its ends get the epids that the
// endpoints at those addresses have in ebpfnet_endpoints. The earlier
// version let every recorded flow pass; the upgrade lets pass exactly
// those, minus the expired ones, and nothing else.
//
// The programs of the earlier version keep writing to the old table until
// they are replaced: the node programs in New, the endpoints' own programs
// (of versions before the node programs) in Restore. The flows they open
// meanwhile are carried over after each step; one opened after the last
// copy only meets policy again.

// legacyCTEntry is struct ct_entry of the earlier versions.
type legacyCTEntry struct {
	LastSeen uint64
}

// legacyCTValueSize is the value size that tells the earlier layout.
const legacyCTValueSize = 8

// openConntrack opens the pinned conntrack table, creating it if there is
// none. A table of the earlier layout is upgraded (see above) and stays
// open in d.ctLegacy for the later copies; one of any other layout, which
// no version of ours wrote, is replaced by an empty one: its flows meet
// policy again.
func (d *Datapath) openConntrack(spec *ebpf.MapSpec) (*ebpf.Map, error) {
	pin := filepath.Join(d.cfg.PinDir, CTMapName)
	// The new table's pin until it replaces the old one (bpffs allows no
	// dot in a name); one left by a daemon killed in between goes.
	tmp := pin + "_upgrade"
	if err := removePin(tmp); err != nil {
		return nil, err
	}
	m, err := ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: d.cfg.PinDir})
	if !errors.Is(err, ebpf.ErrMapIncompatible) {
		return m, err
	}
	old, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		return nil, fmt.Errorf("open the pinned %s of an earlier version: %w", CTMapName, err)
	}
	log := d.log.WithField("map", CTMapName)
	legacy := old.KeySize() == spec.KeySize && old.ValueSize() == legacyCTValueSize
	if !legacy {
		_ = old.Close()
		old = nil
		log.Warn("pinned conntrack table has an unknown layout, replacing it: its flows meet policy again")
	}
	unpinned := spec.Copy()
	unpinned.Pinning = ebpf.PinNone
	m, err = ebpf.NewMap(unpinned)
	if err != nil {
		if old != nil {
			_ = old.Close()
		}
		return nil, fmt.Errorf("create %s: %w", CTMapName, err)
	}
	if old != nil {
		n, err := d.copyLegacyFlows(old, m)
		if err != nil {
			log.WithError(err).Warn("some flows of the earlier conntrack table meet policy again")
		}
		log.WithField("flows", n).Info("carried the flows of the earlier conntrack table over")
	}
	// Swap the pins in one rename: a daemon killed half-way finds the
	// old table or the new one, never none.
	err = m.Pin(tmp)
	if err == nil {
		err = os.Rename(tmp, pin)
	}
	if err != nil {
		_ = os.Remove(tmp)
		_ = m.Close()
		if old != nil {
			_ = old.Close()
		}
		return nil, fmt.Errorf("pin the new %s: %w", CTMapName, err)
	}
	d.ctLegacy = old
	return m, nil
}

// copyLegacyConntrack carries over what the earlier version's programs
// recorded since the last copy, if an upgrade is under way; last closes
// the old table, once no program of the earlier version runs.
func (d *Datapath) copyLegacyConntrack(last bool) {
	if d.ctLegacy == nil {
		return
	}
	if _, err := d.copyLegacyFlows(d.ctLegacy, d.shared[CTMapName]); err != nil {
		d.log.WithError(err).Warn("some flows of the earlier conntrack table meet policy again")
	}
	if last {
		_ = d.ctLegacy.Close()
		d.ctLegacy = nil
	}
}

// copyLegacyFlows converts every live flow of old (the earlier layout) and
// adds it to m unless m has the flow already: what the current programs
// recorded is newer. It returns how many it added.
func (d *Datapath) copyLegacyFlows(old, m *ebpf.Map) (int, error) {
	epids, err := d.endpointEPIDs()
	if err != nil {
		return 0, err
	}
	now := monotonicNow()
	var keys []ctKey
	var vals []ctEntry
	err = walkFlows(old, func(k []ctKey, v []legacyCTEntry) error {
		for i := range k {
			if nk, nv, ok := upgradeFlow(k[i], v[i], now, epids); ok {
				keys = append(keys, nk)
				vals = append(vals, nv)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read the earlier table: %w", err)
	}
	added := 0
	var errs []error
	for i := range keys {
		switch err := m.Update(keys[i], vals[i], ebpf.UpdateNoExist); {
		case err == nil:
			added++
		case !errors.Is(err, ebpf.ErrKeyExist):
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return added, fmt.Errorf("add flows to %s: %w", CTMapName, err)
	}
	return added, nil
}

// upgradeFlow converts a flow of the earlier layout (see the top of this
// file). ok is false for a flow that has expired by now.
func upgradeFlow(k ctKey, v legacyCTEntry, now uint64, epids map[[4]byte]uint16) (ctKey, ctEntry, bool) {
	if !k.ordered() {
		k = k.swapped()
	}
	var e ctEntry
	timeout := CTTimeoutAny
	switch k.Proto {
	case ProtoTCP:
		timeout = CTTimeoutTCP
		e.Flags = ctFlagEstablished
	case ProtoICMP:
		timeout = CTTimeoutICMP
	}
	e.Timeout = uint32(timeout.Seconds())
	e.Expires = v.LastSeen + uint64(timeout.Nanoseconds())
	if e.Expires < now {
		return k, e, false
	}
	e.EPID = [2]uint16{epids[k.Saddr], epids[k.Daddr]}
	return k, e, true
}

// endpointEPIDs reads ebpfnet_endpoints: the epid of every published
// endpoint, by address.
func (d *Datapath) endpointEPIDs() (map[[4]byte]uint16, error) {
	out := map[[4]byte]uint16{}
	var addr [4]byte
	var info endpointInfo
	it := d.shared[EndpointsMapName].Iterate()
	for it.Next(&addr, &info) {
		out[addr] = uint16(info.EPID)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", EndpointsMapName, err)
	}
	return out, nil
}
