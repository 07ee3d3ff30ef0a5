package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/identity"
)

// Restore re-adopts every endpoint whose state directory holds a valid
// ep_config.h and whose host veth still exists: its programs are loaded
// again from its bpf_lxc.o and replace, atomically, its tc filters and its
// ebpfnet_policy_lookups entry (so traffic never meets a veth without a
// program), and its map entries are re-inserted. Endpoints whose veth is
// gone, directories without a valid record (a crash before the record was
// written) and pins that belong to no endpoint are removed. It returns the
// restored endpoints sorted by ID.
func (d *Datapath) Restore() ([]Endpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("datapath closed")
	}
	ids, err := d.stateDirIDs()
	if err != nil {
		return nil, err
	}
	// Versions before the node programs pinned ebpfnet_policy_calls,
	// which goes once every endpoint runs the current objects.
	legacy := d.pinExists(legacyPolicyCallsName)
	var errs []error
	for _, id := range ids {
		if _, ok := d.eps[id]; ok {
			continue
		}
		if err := d.restoreOne(id); err != nil {
			errs = append(errs, err)
		}
	}
	// Every endpoint runs the current programs now (or the restore of
	// those that do not failed): the last of an earlier version's flows
	// are carried over (ctupgrade.go).
	d.copyLegacyConntrack(true)
	if err := d.removeOrphanPins(); err != nil {
		errs = append(errs, err)
	}
	if legacy && len(errs) == 0 {
		// Every endpoint runs the current objects now; the pipelines
		// of versions before the node programs are unreachable.
		if err := removePin(filepath.Join(d.cfg.PinDir, legacyPolicyCallsName)); err != nil {
			errs = append(errs, err)
		}
	}
	return d.snapshots(), errors.Join(errs...)
}

// pinExists tells whether PinDir holds name.
func (d *Datapath) pinExists(name string) bool {
	_, err := os.Stat(filepath.Join(d.cfg.PinDir, name))
	return err == nil
}

func (d *Datapath) restoreOne(id uint16) error {
	dir := d.epDir(id)
	log := d.log.WithField("epid", id)
	if err := atomicfile.CleanTemporaries(dir); err != nil {
		return fmt.Errorf("restore endpoint %d: %w", id, err)
	}
	data, err := os.ReadFile(filepath.Join(dir, EPConfigFile))
	var ep Endpoint
	if err == nil {
		_, ep, err = ParseEPConfig(data)
	}
	if err == nil && (ep.ID != id || validateEndpoint(&ep) != nil || ep.IfName == "") {
		err = fmt.Errorf("record does not describe endpoint %d", id)
	}
	if err != nil {
		// No valid record: creation stopped before anything but the
		// directory (and perhaps pins of a reused ID) existed.
		log.WithError(err).Info("removing half-created endpoint")
		return d.teardown(&Endpoint{ID: id}, nil)
	}
	if _, err := os.Stat(filepath.Join(dir, deletingFile)); err == nil {
		// DeleteEndpoint had released it; its veth was still being
		// deleted when the daemon stopped.
		log.WithField("ifname", ep.IfName).Info("finishing the deletion of an endpoint")
		return d.teardown(&ep, nil)
	}
	l, err := netlink.LinkByName(ep.IfName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("restore endpoint %d: look up %s: %w", id, ep.IfName, err)
		}
		log.WithField("ifname", ep.IfName).Info("veth gone, removing endpoint")
		return d.teardown(&ep, nil)
	}
	ep.IfIndex = l.Attrs().Index
	st := &endpointState{ep: ep}
	if err := d.readopt(st); err != nil {
		st.close()
		return fmt.Errorf("restore endpoint %d: %w", id, err)
	}
	d.eps[id] = st
	log.WithField("ifname", ep.IfName).Debug("endpoint restored")
	return nil
}

// readopt reopens or recreates what a live endpoint needs: its policy map,
// its programs on the veth and in ebpfnet_policy_lookups, and its
// ebpfnet_endpoints entry.
//
// The programs are always reloaded and replaced rather than checked: a
// filter's program tag does not cover the patched constants, and replacing
// a filter or an array entry is atomic and cheap. The object loaded is the
// endpoint's bpf_lxc.o when it is the template instantiated for this
// endpoint; anything else there (lost, torn, written by another version) is
// rewritten from the running template first, so what runs is on disk.
func (d *Datapath) readopt(st *endpointState) error {
	ep := &st.ep
	if ep.Identity == 0 {
		// Recorded before identities existed: init, as a new endpoint.
		ep.Identity = uint32(identity.Init)
	}
	pin := d.policyPin(ep.ID)
	pm, err := ebpf.LoadPinnedMap(pin, nil)
	switch {
	case err == nil && d.policy.Compatible(pm) != nil:
		// A map of another shape cannot replace the template's
		// declaration; start the endpoint with an empty one
		// (createPolicyMap replaces the pin).
		_ = pm.Close()
		d.log.WithField("epid", ep.ID).Warn("policy map has another shape, recreating it empty")
	case err == nil:
		st.policy = pm
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("open policy map %s: %w", pin, err)
	}
	if st.policy == nil {
		// No rollback: the pin is the endpoint's as long as it lives.
		var keep undoStack
		if err := d.createPolicyMap(st, &keep); err != nil {
			return err
		}
	}

	want, err := d.tmpl.instantiate(constantsOf(ep))
	if err != nil {
		return err
	}
	objPath := filepath.Join(d.epDir(ep.ID), ObjectFile)
	if cur, err := os.ReadFile(objPath); err != nil || !bytes.Equal(cur, want) {
		d.log.WithField("epid", ep.ID).Info("rewriting bpf_lxc.o from the template")
		if err := writeStateFile(objPath, want); err != nil {
			return fmt.Errorf("rewrite endpoint %d object: %w", ep.ID, err)
		}
	}
	// The record may predate the veth's index (crash before the rewrite).
	if err := d.writeRecord(ep); err != nil {
		return err
	}
	// No rollback on failure: whatever was replaced so far is as good as
	// what it replaced, and the rest still runs the previous programs.
	var keep undoStack
	if err := d.load(st, want, false, &keep); err != nil {
		return err
	}

	// Keep the enforcement flags and entries a running policy engine
	// set; they live in pinned maps. An endpoint without its entry (a
	// crash before it was published) ran fail-closed, as the programs
	// treat a missing entry, and stays so until the daemon applies its
	// policy.
	flags, ok := d.publishedFlags(ep)
	if !ok {
		flags = FlagEnforceIngress | FlagEnforceEgress
		d.log.WithField("epid", ep.ID).Warn("endpoint was not published; enforcing both directions until its policy is applied")
	}
	entries, err := readPolicyEntries(st.policy)
	if err != nil {
		return fmt.Errorf("endpoint %d: %w", ep.ID, err)
	}
	if err := d.publishEndpoint(ep, flags); err != nil {
		return err
	}
	st.flags, st.entries = flags, entries
	return nil
}

// removeOrphanPins deletes policy pins and ebpfnet_policy_lookups entries
// whose endpoint has no state directory any more, and the TCX link pins an
// older version kept (the tc filters that Restore attached replace them;
// unpinning detaches the old programs).
func (d *Datapath) removeOrphanPins() error {
	var errs []error
	if err := os.RemoveAll(filepath.Join(d.cfg.PinDir, legacyLinksDir)); err != nil {
		errs = append(errs, fmt.Errorf("remove legacy link pins: %w", err))
	}
	// An endpoint that failed to restore keeps its directory, and its
	// veth the programs of the previous daemon: they still use its
	// policy map and ebpfnet_policy_lookups entry.
	ids, err := d.stateDirIDs()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	owned := make(map[uint16]bool, len(ids))
	for _, id := range ids {
		owned[id] = true
	}
	live := func(s string) bool {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return true // not ours to judge
		}
		return owned[uint16(n)]
	}
	lookups := d.shared[PolicyLookupsName]
	var key, val uint32
	var stale []uint32
	it := lookups.Iterate()
	for it.Next(&key, &val) {
		if key > MaxEndpointID || !owned[uint16(key)] {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("iterate %s: %w", PolicyLookupsName, err))
	}
	for _, k := range stale {
		errs = append(errs, ignoreNotExist(lookups.Delete(k)))
	}
	pins, err := os.ReadDir(d.cfg.PinDir)
	if err != nil {
		return fmt.Errorf("list pins: %w", err)
	}
	prefix := strings.TrimSuffix(PolicyMapName(0), "00000")
	for _, e := range pins {
		idStr, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || live(idStr) {
			continue
		}
		errs = append(errs, removePin(filepath.Join(d.cfg.PinDir, e.Name())))
	}
	return errors.Join(errs...)
}

// Records returns the endpoints Restore would re-adopt, read from their
// restore records without touching anything: a valid record, no deletion
// under way, the host veth there. The daemon reads them before Restore to
// rebuild its lost state files from them (plugin/heal.go): each carries its
// network (index, subnet, gateway), its Docker IDs, address, identity and
// labels. Sorted by ID.
func (d *Datapath) Records() ([]Endpoint, error) {
	ids, err := d.stateDirIDs()
	if err != nil {
		return nil, err
	}
	var out []Endpoint
	for _, id := range ids {
		dir := d.epDir(id)
		data, err := os.ReadFile(filepath.Join(dir, EPConfigFile))
		if err != nil {
			continue
		}
		_, ep, err := ParseEPConfig(data)
		if err != nil || ep.ID != id || validateEndpoint(&ep) != nil || ep.IfName == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, deletingFile)); err == nil {
			continue
		}
		if _, err := netlink.LinkByName(ep.IfName); err != nil {
			continue
		}
		out = append(out, ep)
	}
	return out, nil
}
