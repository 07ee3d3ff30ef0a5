package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/atomicfile"
)

// Restore re-adopts every endpoint whose state directory holds a valid
// ep_config.h and whose host veth still exists: pinned links are reopened
// (re-attached if a pin is missing), map entries re-inserted. Endpoints
// whose veth is gone, directories without a valid record (a crash before
// the record was written) and pins that belong to no endpoint are removed.
// It returns the restored endpoints sorted by ID.
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
	var errs []error
	for _, id := range ids {
		if _, ok := d.eps[id]; ok {
			continue
		}
		if err := d.restoreOne(id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.removeOrphanPins(); err != nil {
		errs = append(errs, err)
	}
	out := make([]Endpoint, 0, len(d.eps))
	for _, st := range d.eps {
		out = append(out, cloneEndpoint(&st.ep))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, errors.Join(errs...)
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

// readopt reopens or recreates what a live endpoint needs: its policy map
// in the outer map, its ebpfnet_endpoints entry and both attached links.
func (d *Datapath) readopt(st *endpointState) error {
	ep := &st.ep
	pin := d.policyPin(ep.ID)
	pm, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("open policy map %s: %w", pin, err)
		}
		if pm, err = ebpf.NewMap(d.inner); err != nil {
			return fmt.Errorf("recreate policy map %s: %w", PolicyMapName(ep.ID), err)
		}
		if err := pm.Pin(pin); err != nil {
			_ = pm.Close()
			return fmt.Errorf("pin policy map %s: %w", pin, err)
		}
	}
	st.policy = pm
	if err := d.shared[PolicyOuterName].Put(uint32(ep.ID), pm); err != nil {
		return fmt.Errorf("insert policy map: %w", err)
	}
	// Keep enforcement flags a running policy engine may have set.
	var cur endpointInfo
	flags := uint32(0)
	if err := d.shared[EndpointsMapName].Lookup(endpointKey(ep.IPv4.Addr()), &cur); err == nil && cur.EPID == uint32(ep.ID) {
		flags = cur.Flags
	}
	if err := d.shared[EndpointsMapName].Put(endpointKey(ep.IPv4.Addr()), infoOf(ep, flags)); err != nil {
		return fmt.Errorf("insert endpoint entry: %w", err)
	}

	var missing bool
	for _, p := range []string{progFrom, progTo} {
		l, err := link.LoadPinnedLink(d.linkPin(ep.ID, p), nil)
		if err != nil {
			missing = true
			break
		}
		st.links = append(st.links, l)
	}
	if !missing {
		return nil
	}
	// Regenerate: drop what was found and attach a fresh pair from the
	// endpoint's object (rewritten from the template if lost).
	for _, l := range st.links {
		_ = l.Close()
	}
	st.links = nil
	for _, p := range []string{progFrom, progTo} {
		if err := removePin(d.linkPin(ep.ID, p)); err != nil {
			return err
		}
	}
	spec, err := d.writeObject(ep)
	if err != nil {
		return err
	}
	var undo undoStack
	if err := d.attach(st, spec, &undo); err != nil {
		_ = undo.run()
		return err
	}
	return nil
}

// removeOrphanPins deletes link and policy pins whose endpoint has no state
// directory any more, and their outer map entries.
func (d *Datapath) removeOrphanPins() error {
	var errs []error
	live := func(s string) bool {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return true // not ours to judge
		}
		_, ok := d.eps[uint16(n)]
		return ok
	}
	links, err := os.ReadDir(filepath.Join(d.cfg.PinDir, linksDir))
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("list link pins: %w", err)
	}
	for _, e := range links {
		idStr, _, ok := strings.Cut(e.Name(), "_")
		if ok && !live(idStr) {
			errs = append(errs, removePin(filepath.Join(d.cfg.PinDir, linksDir, e.Name())))
		}
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
		if n, err := strconv.ParseUint(idStr, 10, 16); err == nil {
			errs = append(errs, ignoreNotExist(d.shared[PolicyOuterName].Delete(uint32(n))))
		}
		errs = append(errs, removePin(filepath.Join(d.cfg.PinDir, e.Name())))
	}
	return errors.Join(errs...)
}
