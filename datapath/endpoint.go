package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/policy"
)

// undoStack collects the reverse of every step taken, so a failed
// CreateEndpoint leaves nothing behind.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

func (u undoStack) run() error {
	var errs []error
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func validateEndpoint(ep *Endpoint) error {
	switch {
	case ep.DockerEndpointID == "":
		return errors.New("endpoint has no Docker endpoint ID")
	case ep.IPv4.IsValid() && !ep.IPv4.Addr().Is4():
		return fmt.Errorf("endpoint %s: IPv4 %v is not an IPv4 prefix", ep.DockerEndpointID, ep.IPv4)
	case ep.IPv4.IsValid() && !ep.Network.Gateway.Is4():
		return fmt.Errorf("endpoint %s: network gateway %v is not IPv4", ep.DockerEndpointID, ep.Network.Gateway)
	case ep.LXCMAC != nil && len(ep.LXCMAC) != 6:
		return fmt.Errorf("endpoint %s: LXC MAC %v is not 6 bytes", ep.DockerEndpointID, ep.LXCMAC)
	}
	if err := checkNetworkIndex(ep.Network.Index); err != nil {
		return fmt.Errorf("endpoint %s: %w", ep.DockerEndpointID, err)
	}
	return validateEndpoint6(ep)
}

// createStep names a step of CreateEndpoint done after its programs are
// loaded: each has something to undo should a later one fail.
type createStep string

const (
	stepLoaded         createStep = "programs loaded" // with the veth, its route and bpf_lxc.o
	stepClsact         createStep = "clsact qdisc added"
	stepFromAttached   createStep = "from_container attached"
	stepToAttached     createStep = "to_container attached"
	stepLookupInserted createStep = "handle_policy in " + PolicyLookupsName
	stepPublished      createStep = "published in " + EndpointsMapName
)

// createSteps lists them in the order CreateEndpoint takes them.
func createSteps() []createStep {
	return []createStep{stepLoaded, stepClsact, stepFromAttached, stepToAttached, stepLookupInserted, stepPublished}
}

// after is called once each createStep is done (Restore, reattaching,
// passes the attach steps too). It returns the error of the test hook
// d.failAfter, which tests set to fail a creation at that point; it is nil
// in production.
func (d *Datapath) after(step createStep) error {
	if d.failAfter == nil {
		return nil
	}
	return d.failAfter(step)
}

// CreateEndpoint builds an endpoint's datapath: it fills ep.ID, IfName,
// PeerName, IfIndex, NodeMAC and (if empty) LXCMAC, writes ep_config.h,
// creates the veth pair (or claims a spare one made ahead), neighbour and
// route while, beside it, the endpoint's policy map is made, bpf_lxc.o
// written and its programs loaded against that map; then attaches them as
// tc filters, registers handle_policy in ebpfnet_policy_lookups and
// publishes the endpoint. On error it leaves nothing behind.
func (d *Datapath) CreateEndpoint(ep *Endpoint) (retErr error) {
	if err := validateEndpoint(ep); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("datapath closed")
	}
	if st := d.byDockerID(ep.DockerEndpointID); st != nil {
		return fmt.Errorf("endpoint %s already exists as %d", ep.DockerEndpointID, st.ep.ID)
	}
	// The next endpoint's policy map is made once this one is done, its
	// veth pair once creations pause (vethRefillIdle).
	defer d.spares.refill()
	d.veths.creationStarted()
	defer d.veths.creationEnded()
	initial := ep.InitialPolicy
	if initial != nil {
		if err := initial.Validate(policyEntriesMax); err != nil {
			return fmt.Errorf("endpoint %s initial policy: %w", ep.DockerEndpointID, err)
		}
	}
	ep.IfName = HostIfName(ep.DockerEndpointID)
	// The same Docker endpoint ID again, right after its deletion: its
	// veth name is taken until the background deletion is done.
	d.waitDeleted(ep.IfName)
	// A spare veth pair (vethspares.go) keeps its peer's name, so the
	// record written below names it. Should the creation fail before
	// createLink claims the spare, it goes back to the pool.
	spare, spareHeld := d.veths.take()
	if spareHeld {
		ep.PeerName = spare.peerName
		defer func() {
			if spareHeld {
				d.veths.putBack(spare)
			}
		}()
	} else {
		ep.PeerName = PeerIfName(ep.DockerEndpointID)
	}
	ep.NodeMAC = NodeMACFor(ep.DockerEndpointID)
	if len(ep.LXCMAC) == 0 {
		ep.LXCMAC = LXCMACFor(ep.DockerEndpointID)
	}
	ep.IfIndex = 0
	if ep.Identity == 0 {
		// Labels arrive later (Docker events); until then it is init.
		ep.Identity = uint32(identity.Init)
	}
	var undo undoStack
	defer func() {
		if retErr != nil {
			if err := undo.run(); err != nil {
				d.log.WithError(err).WithField("epid", ep.ID).Warn("incomplete rollback of failed endpoint creation")
			}
		}
	}()

	// The intent record goes first: after a crash, a directory with a
	// record names the veth and pins to clean; one without a record had
	// created nothing else yet. Its IfIndex is 0 until the veth exists.
	id, err := d.claimEndpointID()
	if err != nil {
		return err
	}
	ep.ID = id
	dir := d.epDir(id)
	undo.push(func() error { return os.RemoveAll(dir) })
	// Run second to last, once nothing of the endpoint runs: flows it
	// had in the instant after its publication (see DeleteEndpoint).
	ct, ct6 := d.shared[CTMapName], d.nodeMaps[CT6MapName]
	undo.push(func() error { return flushFlows(ct, ct6, ep) })
	if err := d.writeRecord(ep); err != nil {
		return err
	}

	// The programs do not depend on the veth (bpf/lib/config.h): they
	// are loaded, most of the creation's time, while the main line
	// creates the veth. The loader works on st alone until joined.
	st := &endpointState{ep: *ep}
	st.ep.InitialPolicy = nil
	obj, err := d.tmpl.instantiate(constantsOf(ep))
	if err != nil {
		return err
	}
	loaded := make(chan loadResult, 1)
	go func() { loaded <- d.prepareLoad(st, obj, initial) }()
	// The object file is the shorter line's: what the loader loads is
	// these bytes, and they are on disk before anything is attached.
	vethErr := d.createLink(ep, spare, spareHeld, &undo)
	spareHeld = false
	if vethErr == nil {
		vethErr = d.writeObject(id, obj)
	}
	res := <-loaded
	undo = append(undo, res.undo...)
	if res.coll != nil {
		// The filters and the program array keep the programs
		// alive; the collection's descriptors are not needed past
		// attaching.
		defer res.coll.Close()
	}
	if vethErr != nil {
		return vethErr
	}
	if res.err != nil {
		return res.err
	}
	if err := d.after(stepLoaded); err != nil {
		return err
	}
	st.ep.IfIndex = ep.IfIndex
	if err := d.attach(st, res.coll, true, &undo); err != nil {
		return err
	}
	// Published last: until a sender finds the endpoint here it cannot
	// tail-call into it, and the program array entry already exists.
	if err := d.publishEndpoint(ep, st.flags); err != nil {
		return err
	}
	undo.push(func() error { return d.unpublishEndpoint(ep) })
	if err := d.after(stepPublished); err != nil {
		return err
	}
	d.eps[id] = st
	d.log.WithFields(logrus.Fields{"epid": id, "ifname": ep.IfName, "ipv4": ep.IPv4}).Debug("endpoint created")
	return nil
}

// createLink makes the endpoint's veth pair (claims spare when haveSpare)
// and its neighbour and route. The record on disk keeps IfIndex 0:
// Restore takes the index from the live veth, found by name, and the
// record is written again as soon as the container's labels arrive
// (SetEndpointIdentity). A second write here cost ~0.5 ms where /run is
// ext4, which starts writing a file renamed over another out to disk
// (auto_da_alloc).
func (d *Datapath) createLink(ep *Endpoint, spare spareVeth, haveSpare bool, undo *undoStack) error {
	ifindex, err := d.claimOrCreateVeth(ep, spare, haveSpare)
	if err != nil {
		return err
	}
	undo.push(func() error { return deleteLinkByName(ep.IfName) })
	ep.IfIndex = ifindex
	return routeToEndpoint(d.nl, ep)
}

// loadResult is what prepareLoad hands back: the loaded programs and how
// to undo what it made.
type loadResult struct {
	coll *ebpf.Collection
	undo undoStack
	err  error
}

// prepareLoad creates and pins st's policy map with the initial entries
// and loads the programs of obj (the endpoint's instance of the template)
// against it. It touches st and the endpoint's pin only, so it runs beside
// the veth's creation.
func (d *Datapath) prepareLoad(st *endpointState, obj []byte, initial *policy.EndpointPolicy) (r loadResult) {
	r.undo.push(func() error { st.close(); return nil })
	if r.err = d.createPolicyMap(st, &r.undo); r.err != nil {
		return r
	}
	// Entries before the programs exist; the flags go with the
	// publication. Until then the programs find no entry of their own
	// and enforce both directions with what the map holds.
	if r.err = installPolicy(st, initial); r.err != nil {
		return r
	}
	r.coll, r.err = d.loadPrograms(st, obj)
	return r
}

// writeRecord writes ep_config.h, the restore record.
func (d *Datapath) writeRecord(ep *Endpoint) error {
	hdr, err := WriteEPConfig(d.cfg.Version, ep)
	if err != nil {
		return err
	}
	if err := writeStateFile(filepath.Join(d.epDir(ep.ID), EPConfigFile), hdr); err != nil {
		return fmt.Errorf("write endpoint %d record: %w", ep.ID, err)
	}
	return nil
}

// writeStateFile replaces path atomically without fsync. The state
// directory lives in /run: a reader or a restarted daemon sees the old or
// the new file, never a torn one, because the rename is atomic and a
// killed process loses nothing of the page cache. Only a machine crash
// loses unsynced data, and that also wipes /run and every veth, program
// and pin the files describe, so syncing would buy nothing and cost a
// journal commit per file where /run is not tmpfs.
func writeStateFile(path string, data []byte) error {
	return atomicfile.WriteVolatile(path, data, fileMode)
}

// claimOrCreateVeth gives the endpoint the spare veth pair when it has
// one (vethspares.go), or makes one, and returns its host end's index.
// A spare that cannot be claimed is deleted and a pair made instead, its
// peer under the spare's peer name, the one the record has.
func (d *Datapath) claimOrCreateVeth(ep *Endpoint, spare spareVeth, haveSpare bool) (int, error) {
	if !haveSpare {
		return createVeth(d.nl, ep)
	}
	if err := claim(d.nl, spare, ep); err != nil {
		d.log.WithError(err).WithField("epid", ep.ID).Warn("a spare veth could not be claimed; making the endpoint's own")
		// Now, not in the background: the names must be free again
		// (the host end may have the endpoint's already).
		deleteSpare(d.log, spare)
		return createVeth(d.nl, ep)
	}
	return spare.index, nil
}

// createVeth makes the pair in one request: both MACs, the host side up.
// Reverse-path filtering is kept out of the way of the /32 routing.
func createVeth(nl *netlink.Handle, ep *Endpoint) (int, error) {
	la := netlink.NewLinkAttrs()
	la.Name = ep.IfName
	la.HardwareAddr = net.HardwareAddr(ep.NodeMAC)
	la.Flags = net.FlagUp
	la.MTU = ep.Network.MTU
	veth := &netlink.Veth{LinkAttrs: la, PeerName: ep.PeerName, PeerHardwareAddr: net.HardwareAddr(ep.LXCMAC)}
	if err := nl.LinkAdd(veth); err != nil {
		return 0, fmt.Errorf("create veth %s/%s: %w", ep.IfName, ep.PeerName, err)
	}
	// LinkAdd looks the new device up by name to fill in its index.
	if veth.Index == 0 {
		_ = deleteLinkByName(ep.IfName)
		return 0, fmt.Errorf("look up veth %s: no index after creation", ep.IfName)
	}
	if err := disableRPFilter(ep.IfName); err != nil {
		_ = nl.LinkDel(veth)
		return 0, err
	}
	return veth.Index, nil
}

// routeToEndpoint lets the host reach the container without ARP: a
// permanent neighbour entry and a /32 route sourced from the gateway, and
// the same for its IPv6 address (routeToEndpoint6). All disappear with
// the veth.
func routeToEndpoint(nl *netlink.Handle, ep *Endpoint) error {
	if !ep.IPv4.IsValid() {
		return routeToEndpoint6(nl, ep)
	}
	ip := net.IP(ep.IPv4.Addr().AsSlice())
	neigh := &netlink.Neigh{
		LinkIndex:    ep.IfIndex,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           ip,
		HardwareAddr: net.HardwareAddr(ep.LXCMAC),
	}
	if err := nl.NeighSet(neigh); err != nil {
		return fmt.Errorf("add neighbour %s on %s: %w", ip, ep.IfName, err)
	}
	route := &netlink.Route{
		LinkIndex: ep.IfIndex,
		Dst:       &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)},
		Src:       net.IP(ep.Network.Gateway.AsSlice()),
		Scope:     netlink.SCOPE_LINK,
	}
	if err := nl.RouteReplace(route); err != nil {
		return fmt.Errorf("add route %s via %s: %w", ip, ep.IfName, err)
	}
	return routeToEndpoint6(nl, ep)
}

func deleteLinkByName(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// createPolicyMap creates and pins the endpoint's policy map.
func (d *Datapath) createPolicyMap(st *endpointState, undo *undoStack) error {
	id := st.ep.ID
	pin := d.policyPin(id)
	// A pin left by a crash between pin and record removal is stale.
	if err := os.Remove(pin); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove stale policy pin %s: %w", pin, err)
	}
	pm, err := d.spares.take()
	if err != nil {
		return fmt.Errorf("create policy map %s: %w", PolicyMapName(id), err)
	}
	st.policy = pm
	if err := pm.Pin(pin); err != nil {
		return fmt.Errorf("pin policy map %s: %w", pin, err)
	}
	undo.push(func() error { return removePin(pin) })
	return nil
}

// publishEndpoint writes the endpoint's entry of each family it has, IPv4
// first (endpoint6.go says why that order keeps every packet whole).
func (d *Datapath) publishEndpoint(ep *Endpoint, flags uint32) error {
	if ep.IPv4.IsValid() {
		key := endpointKey(ep.IPv4.Addr())
		if err := d.shared[EndpointsMapName].Put(key, infoOf(ep, flags)); err != nil {
			return fmt.Errorf("insert endpoint %d (%v) in %s: %w", ep.ID, ep.IPv4.Addr(), EndpointsMapName, err)
		}
	}
	return d.publishEndpoint6(ep, flags)
}

// unpublishEndpoint deletes the entry only if it is still this endpoint's,
// so a late cleanup never removes a successor holding the same address.
func (d *Datapath) unpublishEndpoint(ep *Endpoint) error {
	if err := d.unpublishEndpoint6(ep); err != nil {
		return err
	}
	if !ep.IPv4.Addr().Is4() {
		return nil
	}
	return deleteOwnEntry(d.shared[EndpointsMapName], EndpointsMapName, endpointKey(ep.IPv4.Addr()), ep)
}

// deleteOwnEntry deletes key from the endpoints map m (named name) if its
// entry is still ep's.
func deleteOwnEntry(m *ebpf.Map, name string, key any, ep *Endpoint) error {
	var cur endpointInfo
	if err := m.Lookup(key, &cur); err != nil {
		return ignoreNotExist(err)
	}
	if cur.EPID != uint32(ep.ID) {
		return nil
	}
	if err := ignoreNotExist(m.Delete(key)); err != nil {
		return fmt.Errorf("delete endpoint %d from %s: %w", ep.ID, name, err)
	}
	return nil
}

func removePin(path string) error {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove pin %s: %w", path, err)
	}
	return nil
}

// writeObject writes obj, the template instantiated for endpoint id, as its
// bpf_lxc.o.
func (d *Datapath) writeObject(id uint16, obj []byte) error {
	if err := writeStateFile(filepath.Join(d.epDir(id), ObjectFile), obj); err != nil {
		return fmt.Errorf("write endpoint %d object: %w", id, err)
	}
	return nil
}

// load loads the programs of obj (an instance of the template, the bytes
// of the endpoint's bpf_lxc.o) and attaches them (see attach).
func (d *Datapath) load(st *endpointState, obj []byte, freshVeth bool, undo *undoStack) error {
	coll, err := d.loadPrograms(st, obj)
	if err != nil {
		return err
	}
	// The filters and the program array keep the programs alive; the
	// collection's descriptors are not needed past attaching.
	defer coll.Close()
	return d.attach(st, coll, freshVeth, undo)
}

// loadPrograms loads the programs of obj against the shared maps and the
// endpoint's own policy map: verification and JIT, most of an endpoint's
// creation.
func (d *Datapath) loadPrograms(st *endpointState, obj []byte) (*ebpf.Collection, error) {
	id := st.ep.ID
	spec, err := d.tmpl.specFor(obj)
	if err != nil {
		return nil, fmt.Errorf("endpoint %d object: %w", id, err)
	}
	repl := make(map[string]*ebpf.Map, len(d.shared)+1)
	for k, v := range d.shared {
		repl[k] = v
	}
	repl[policyMapKName] = st.policy
	coll, err := d.loadCollection(spec, repl)
	if err != nil {
		return nil, fmt.Errorf("load endpoint %d programs: %w", id, err)
	}
	if coll.Programs[progFrom] == nil || coll.Programs[progTo] == nil || coll.Programs[progPolicy] == nil {
		coll.Close()
		return nil, fmt.Errorf("endpoint %d object lacks one of %s, %s, %s", id, progFrom, progTo, progPolicy)
	}
	return coll, nil
}

// attach puts from_container and to_container of coll as tc filters on the
// host veth and handle_policy in ebpfnet_policy_lookups. Filters and the
// array entry are replaced in place if they exist, so a restore never
// leaves the veth without a program. freshVeth says the veth was just
// created by us and has no qdisc yet.
func (d *Datapath) attach(st *endpointState, coll *ebpf.Collection, freshVeth bool, undo *undoStack) error {
	ep := &st.ep
	from, to, pol := coll.Programs[progFrom], coll.Programs[progTo], coll.Programs[progPolicy]
	if err := attachTC(d.nl, ep.IfIndex, from, to, freshVeth, d.after); err != nil {
		return fmt.Errorf("attach programs to %s: %w", ep.IfName, err)
	}
	// The filters go with the veth; a rollback deletes the veth.
	lookups := d.shared[PolicyLookupsName]
	if err := lookups.Put(uint32(ep.ID), pol); err != nil {
		return fmt.Errorf("insert %s of endpoint %d in %s: %w", progPolicy, ep.ID, PolicyLookupsName, err)
	}
	undo.push(func() error { return ignoreNotExist(lookups.Delete(uint32(ep.ID))) })
	return d.after(stepLookupInserted)
}

// DeleteEndpoint removes everything CreateEndpoint made. Deleting an
// unknown endpoint succeeds.
//
// What could clash with a new endpoint on the same address is gone when it
// returns: the ebpfnet_endpoints entry, the program array entry, the policy
// pin and the /32 route. The host veth may outlive the call by a few tens of
// milliseconds: deleting a network device waits for an RCU barrier in the
// kernel (~20-30 ms, most of a deletion), so when the veth still exists
// (Docker had not destroyed the container's namespace yet) it is deleted in
// the background, and the endpoint's conntrack entries after it. The state
// directory gets a tombstone (deletingFile) first: a daemon killed at any
// step after finds it at Restore and finishes the deletion instead of
// re-adopting the endpoint. The epid, kept by its state directory, is not
// reused before the veth and the flows are gone. The veth's programs can no
// longer pass for the endpoint: they find no entry of their own, or another
// endpoint's (lib/verdict.h endpoint_self), and enforce as init.
//
// A new endpoint on the released address inherits no flow: an entry names
// the epids of its ends, and the programs take a flow as established only
// while the same endpoints hold its addresses (lib/conntrack.h). Deleting
// the entries before the epid is free covers the one case that check
// cannot: the same address and the same epid again.
func (d *Datapath) DeleteEndpoint(dockerEndpointID string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("datapath closed")
	}
	st := d.byDockerID(dockerEndpointID)
	if st == nil {
		return nil
	}
	ep := &st.ep
	// The tombstone first: from here on, a restart finishes the deletion
	// whatever step a crash interrupts.
	if err := os.WriteFile(filepath.Join(d.epDir(ep.ID), deletingFile), nil, fileMode); err != nil {
		if err := d.teardown(ep, st); err != nil {
			return err
		}
		delete(d.eps, ep.ID)
		return nil
	}
	if errs := d.releaseMaps(ep, st); len(errs) > 0 {
		// Something is off; try everything again the slow, certain way.
		d.log.WithError(errors.Join(errs...)).WithField("epid", ep.ID).Warn("retrying endpoint deletion")
		if err := d.teardown(ep, nil); err != nil {
			return err
		}
		delete(d.eps, ep.ID)
		return nil
	}
	if err := d.releaseLink(ep); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", ep.ID, err)
	}
	delete(d.eps, ep.ID)
	return nil
}

// deletingFile in an endpoint's state directory says DeleteEndpoint has
// released the endpoint and its veth is being deleted.
const deletingFile = "deleting"

// releaseLink deletes the endpoint's /32 route now and its veth (if the
// kernel has not removed it with the container's namespace already), its
// conntrack entries and its state directory in the background (see
// DeleteEndpoint). The route is
// deleted by its device index: no lookup of the veth on the way.
func (d *Datapath) releaseLink(ep *Endpoint) error {
	if err := deleteRoute(d.nl, ep); err != nil {
		return err
	}
	if err := deleteRoute6(d.nl, ep); err != nil {
		return err
	}
	dir := d.epDir(ep.ID)
	ct, ct6 := d.shared[CTMapName], d.nodeMaps[CT6MapName]
	done := make(chan struct{})
	d.delMu.Lock()
	d.deleting[ep.IfName] = done
	d.delMu.Unlock()
	d.delWG.Add(1)
	go func() {
		defer d.delWG.Done()
		defer func() {
			d.delMu.Lock()
			delete(d.deleting, ep.IfName)
			d.delMu.Unlock()
			close(done)
		}()
		log := d.log.WithFields(logrus.Fields{"epid": ep.ID, "ifname": ep.IfName})
		if err := deleteLinkByName(ep.IfName); err != nil {
			// The tombstone stays: the next Restore retries.
			log.WithError(err).Warn("deleting the veth of a deleted endpoint failed")
			return
		}
		if err := flushFlows(ct, ct6, ep); err != nil {
			// The same: the epid stays taken until its flows are gone.
			log.WithError(err).Warn("deleting the flows of a deleted endpoint failed")
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			log.WithError(err).Warn("removing the state of a deleted endpoint failed")
		}
	}()
	return nil
}

// waitDeleted returns once no veth named name is being deleted in the
// background.
func (d *Datapath) waitDeleted(name string) {
	d.delMu.Lock()
	done := d.deleting[name]
	d.delMu.Unlock()
	if done != nil {
		<-done
	}
}

// deleteRoute removes the /32 route to the endpoint through its veth; one
// already gone (with the veth) is fine.
func deleteRoute(nl *netlink.Handle, ep *Endpoint) error {
	if !ep.IPv4.IsValid() {
		return nil
	}
	route := &netlink.Route{
		LinkIndex: ep.IfIndex,
		Dst:       &net.IPNet{IP: net.IP(ep.IPv4.Addr().AsSlice()), Mask: net.CIDRMask(32, 32)},
		Scope:     netlink.SCOPE_LINK,
	}
	if err := nl.RouteDel(route); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %v via %s: %w", route.Dst, ep.IfName, err)
	}
	return nil
}

// releaseMaps closes the endpoint's descriptors and removes its map entries
// and pins. st may be nil (nothing held open). Each step tolerates what is
// already gone.
func (d *Datapath) releaseMaps(ep *Endpoint, st *endpointState) []error {
	var errs []error
	if st != nil {
		st.close()
	}
	// Unpublished first, so no sender tail-calls into a program that is
	// about to leave the array (it would drop as DROP_MISSED_TAIL_CALL).
	if err := d.unpublishEndpoint(ep); err != nil {
		errs = append(errs, err)
	}
	if err := ignoreNotExist(d.shared[PolicyLookupsName].Delete(uint32(ep.ID))); err != nil {
		errs = append(errs, fmt.Errorf("delete program of endpoint %d from %s: %w", ep.ID, PolicyLookupsName, err))
	}
	if err := removePin(d.policyPin(ep.ID)); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// teardown removes an endpoint's map entries, pins, veth (and with it the
// tc filters and the route), conntrack entries and state directory,
// waiting for each. st may
// be nil (nothing held open). Every step tolerates what is already gone, so
// it is safe to repeat after a partial failure.
func (d *Datapath) teardown(ep *Endpoint, st *endpointState) error {
	errs := d.releaseMaps(ep, st)
	if ep.IfName != "" {
		if err := deleteLinkByName(ep.IfName); err != nil {
			errs = append(errs, err)
		}
	}
	if err := flushFlows(d.shared[CTMapName], d.nodeMaps[CT6MapName], ep); err != nil {
		// The directory keeps the epid taken until its flows are gone;
		// the next Restore tries again.
		errs = append(errs, fmt.Errorf("delete the flows of endpoint %d: %w", ep.ID, err))
	} else if err := os.RemoveAll(d.epDir(ep.ID)); err != nil {
		errs = append(errs, fmt.Errorf("remove endpoint %d state: %w", ep.ID, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", ep.ID, err)
	}
	return nil
}
