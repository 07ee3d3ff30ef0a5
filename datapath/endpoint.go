package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/atomicfile"
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
	case !ep.IPv4.IsValid() || !ep.IPv4.Addr().Is4():
		return fmt.Errorf("endpoint %s: IPv4 %v is not an IPv4 prefix", ep.DockerEndpointID, ep.IPv4)
	case ep.Network.Index == 0:
		return fmt.Errorf("endpoint %s: network index must be 1..65535", ep.DockerEndpointID)
	case !ep.Network.Gateway.Is4():
		return fmt.Errorf("endpoint %s: network gateway %v is not IPv4", ep.DockerEndpointID, ep.Network.Gateway)
	case ep.LXCMAC != nil && len(ep.LXCMAC) != 6:
		return fmt.Errorf("endpoint %s: LXC MAC %v is not 6 bytes", ep.DockerEndpointID, ep.LXCMAC)
	}
	return nil
}

// CreateEndpoint builds an endpoint's datapath: it fills ep.ID, IfName,
// PeerName, IfIndex, NodeMAC and (if empty) LXCMAC, writes ep_config.h and
// bpf_lxc.o, creates the veth pair, neighbour and route, inserts the map
// entries and attaches both programs with pinned TCX links. On error it
// leaves nothing behind.
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
	used, err := d.usedIDs()
	if err != nil {
		return err
	}
	id, err := lowestFreeID(used)
	if err != nil {
		return err
	}
	ep.ID = id
	ep.IfName = HostIfName(ep.DockerEndpointID)
	ep.PeerName = PeerIfName(ep.DockerEndpointID)
	ep.NodeMAC = NodeMACFor(ep.DockerEndpointID)
	if len(ep.LXCMAC) == 0 {
		ep.LXCMAC = LXCMACFor(ep.DockerEndpointID)
	}

	var undo undoStack
	defer func() {
		if retErr != nil {
			if err := undo.run(); err != nil {
				d.log.WithError(err).WithField("epid", id).Warn("incomplete rollback of failed endpoint creation")
			}
		}
	}()

	// The intent record goes first: after a crash, a directory with a
	// record names the veth and pins to clean; one without a record had
	// created nothing else yet.
	dir := d.epDir(id)
	if err := os.Mkdir(dir, dirMode); err != nil {
		return fmt.Errorf("create endpoint directory: %w", err)
	}
	undo.push(func() error { return os.RemoveAll(dir) })
	hdr, err := WriteEPConfig(d.cfg.Version, ep)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, EPConfigFile), hdr, fileMode); err != nil {
		return fmt.Errorf("write endpoint %d record: %w", id, err)
	}

	ifindex, err := createVeth(ep)
	if err != nil {
		return err
	}
	undo.push(func() error { return deleteLinkByName(ep.IfName) })
	ep.IfIndex = ifindex
	if err := routeToEndpoint(ep); err != nil {
		return err
	}

	st := &endpointState{ep: *ep}
	undo.push(func() error { st.close(); return nil })
	if err := d.installMaps(st, &undo); err != nil {
		return err
	}
	spec, err := d.writeObject(ep)
	if err != nil {
		return err
	}
	// Updating a map-of-maps from user space waits for an RCU grace period
	// (the kernel guarantees no program still sees a replaced inner map),
	// and so does each TCX attach. Running the insert beside the attaches
	// lets the waits overlap. Until the entry exists the program does not
	// need it: with enforcement flags clear it never looks, and an enforcing
	// endpoint without a policy map denies.
	outer := d.shared[PolicyOuterName]
	inserted := make(chan error, 1)
	go func() { inserted <- outer.Put(uint32(id), st.policy) }()
	undo.push(func() error { return ignoreNotExist(outer.Delete(uint32(id))) })
	attachErr := d.attach(st, spec, &undo)
	if err := <-inserted; err != nil {
		return errors.Join(attachErr, fmt.Errorf("insert policy map of endpoint %d: %w", id, err))
	}
	if attachErr != nil {
		return attachErr
	}
	d.eps[id] = st
	d.log.WithFields(logrus.Fields{"epid": id, "ifname": ep.IfName, "ipv4": ep.IPv4}).Debug("endpoint created")
	return nil
}

// createVeth makes the pair with our MACs, brings the host side up and
// keeps reverse-path filtering out of the way of the /32 routing.
func createVeth(ep *Endpoint) (int, error) {
	la := netlink.NewLinkAttrs()
	la.Name = ep.IfName
	la.HardwareAddr = net.HardwareAddr(ep.NodeMAC)
	veth := &netlink.Veth{LinkAttrs: la, PeerName: ep.PeerName, PeerHardwareAddr: net.HardwareAddr(ep.LXCMAC)}
	if err := netlink.LinkAdd(veth); err != nil {
		return 0, fmt.Errorf("create veth %s/%s: %w", ep.IfName, ep.PeerName, err)
	}
	l, err := netlink.LinkByName(ep.IfName)
	if err != nil {
		_ = netlink.LinkDel(veth)
		return 0, fmt.Errorf("look up veth %s: %w", ep.IfName, err)
	}
	if err := os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/rp_filter", ep.IfName), []byte("0"), 0o644); err != nil {
		_ = netlink.LinkDel(l)
		return 0, fmt.Errorf("disable rp_filter on %s: %w", ep.IfName, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		_ = netlink.LinkDel(l)
		return 0, fmt.Errorf("bring up %s: %w", ep.IfName, err)
	}
	return l.Attrs().Index, nil
}

// routeToEndpoint lets the host reach the container without ARP: a
// permanent neighbour entry and a /32 route sourced from the gateway.
// Both disappear with the veth.
func routeToEndpoint(ep *Endpoint) error {
	ip := net.IP(ep.IPv4.Addr().AsSlice())
	neigh := &netlink.Neigh{
		LinkIndex:    ep.IfIndex,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           ip,
		HardwareAddr: net.HardwareAddr(ep.LXCMAC),
	}
	if err := netlink.NeighSet(neigh); err != nil {
		return fmt.Errorf("add neighbour %s on %s: %w", ip, ep.IfName, err)
	}
	route := &netlink.Route{
		LinkIndex: ep.IfIndex,
		Dst:       &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)},
		Src:       net.IP(ep.Network.Gateway.AsSlice()),
		Scope:     netlink.SCOPE_LINK,
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("add route %s via %s: %w", ip, ep.IfName, err)
	}
	return nil
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

// installMaps creates and pins the endpoint's policy map and publishes the
// endpoint in ebpfnet_endpoints; insertPolicyMap hangs the policy map in the
// outer map.
func (d *Datapath) installMaps(st *endpointState, undo *undoStack) error {
	id := st.ep.ID
	pin := d.policyPin(id)
	// A pin left by a crash between pin and record removal is stale.
	if err := os.Remove(pin); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove stale policy pin %s: %w", pin, err)
	}
	pm, err := ebpf.NewMap(d.inner)
	if err != nil {
		return fmt.Errorf("create policy map %s: %w", PolicyMapName(id), err)
	}
	st.policy = pm
	if err := pm.Pin(pin); err != nil {
		return fmt.Errorf("pin policy map %s: %w", pin, err)
	}
	undo.push(func() error { return removePin(pin) })
	if err := d.publishEndpoint(&st.ep); err != nil {
		return err
	}
	undo.push(func() error { return d.unpublishEndpoint(&st.ep) })
	return nil
}

func (d *Datapath) publishEndpoint(ep *Endpoint) error {
	key := endpointKey(ep.IPv4.Addr())
	if err := d.shared[EndpointsMapName].Put(key, infoOf(ep, 0)); err != nil {
		return fmt.Errorf("insert endpoint %d (%v) in %s: %w", ep.ID, ep.IPv4.Addr(), EndpointsMapName, err)
	}
	return nil
}

// unpublishEndpoint deletes the entry only if it is still this endpoint's,
// so a late cleanup never removes a successor holding the same address.
func (d *Datapath) unpublishEndpoint(ep *Endpoint) error {
	if !ep.IPv4.Addr().Is4() {
		return nil
	}
	m := d.shared[EndpointsMapName]
	key := endpointKey(ep.IPv4.Addr())
	var cur endpointInfo
	if err := m.Lookup(key, &cur); err != nil {
		return ignoreNotExist(err)
	}
	if cur.EPID != uint32(ep.ID) {
		return nil
	}
	if err := ignoreNotExist(m.Delete(key)); err != nil {
		return fmt.Errorf("delete endpoint %d from %s: %w", ep.ID, EndpointsMapName, err)
	}
	return nil
}

func removePin(path string) error {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove pin %s: %w", path, err)
	}
	return nil
}

// writeObject writes the endpoint's bpf_lxc.o and parses that very file, so
// what runs is what is on disk.
func (d *Datapath) writeObject(ep *Endpoint) (*ebpf.CollectionSpec, error) {
	obj, err := d.tmpl.instantiate(constantsOf(ep))
	if err != nil {
		return nil, err
	}
	path := filepath.Join(d.epDir(ep.ID), ObjectFile)
	if err := atomicfile.Write(path, obj, fileMode); err != nil {
		return nil, fmt.Errorf("write endpoint %d object: %w", ep.ID, err)
	}
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return nil, fmt.Errorf("parse endpoint %d object %s: %w", ep.ID, path, err)
	}
	return spec, nil
}

// attach loads the endpoint's programs against the shared maps and attaches
// them with TCX links pinned under PinDir/links.
func (d *Datapath) attach(st *endpointState, spec *ebpf.CollectionSpec, undo *undoStack) error {
	ep := &st.ep
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: d.cfg.PinDir},
		MapReplacements: d.shared,
	})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load endpoint %d programs: %+v", ep.ID, ve)
		}
		return fmt.Errorf("load endpoint %d programs: %w", ep.ID, err)
	}
	// The links keep the programs alive; the collection's descriptors are
	// not needed past attaching.
	defer coll.Close()
	// Each TCX attach waits for an RCU grace period in the kernel (it
	// swaps the device's program array) while holding RTNL, so the two
	// directions still wait one after the other; attaching them from
	// goroutines costs nothing and lets both overlap with the outer map
	// insert that CreateEndpoint runs meanwhile.
	attaches := []struct {
		prog string
		typ  ebpf.AttachType
		l    link.Link
		err  error
	}{{prog: progFrom, typ: ebpf.AttachTCXIngress}, {prog: progTo, typ: ebpf.AttachTCXEgress}}
	var wg sync.WaitGroup
	for i := range attaches {
		a := &attaches[i]
		prog := coll.Programs[a.prog]
		if prog == nil {
			return fmt.Errorf("endpoint %d object lacks program %s", ep.ID, a.prog)
		}
		if err := removePin(d.linkPin(ep.ID, a.prog)); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.l, a.err = link.AttachTCX(link.TCXOptions{Interface: ep.IfIndex, Program: prog, Attach: a.typ})
		}()
	}
	wg.Wait()
	var errs []error
	for i := range attaches {
		a := &attaches[i]
		if a.err != nil {
			errs = append(errs, fmt.Errorf("attach %s to %s: %w", a.prog, ep.IfName, a.err))
			continue
		}
		// Held by st from here on, so a rollback closes it.
		st.links = append(st.links, a.l)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for i := range attaches {
		pin := d.linkPin(ep.ID, attaches[i].prog)
		if err := attaches[i].l.Pin(pin); err != nil {
			return fmt.Errorf("pin %s link of %s: %w", attaches[i].prog, ep.IfName, err)
		}
		undo.push(func() error { return removePin(pin) })
	}
	return nil
}

// DeleteEndpoint removes everything CreateEndpoint made. Deleting an
// unknown endpoint succeeds.
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
	if err := d.teardown(&st.ep, st); err != nil {
		return err
	}
	delete(d.eps, st.ep.ID)
	return nil
}

// teardown removes an endpoint's links, map entries, pins, veth and state
// directory. st may be nil (nothing held open). Every step tolerates what
// is already gone, so it is safe to repeat after a partial failure.
func (d *Datapath) teardown(ep *Endpoint, st *endpointState) error {
	var errs []error
	if st != nil {
		st.close()
	}
	// Unpinning releases the last reference and detaches the program.
	for _, p := range []string{progFrom, progTo} {
		if err := removePin(d.linkPin(ep.ID, p)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.unpublishEndpoint(ep); err != nil {
		errs = append(errs, err)
	}
	if err := ignoreNotExist(d.shared[PolicyOuterName].Delete(uint32(ep.ID))); err != nil {
		errs = append(errs, fmt.Errorf("delete policy map of endpoint %d from %s: %w", ep.ID, PolicyOuterName, err))
	}
	if err := removePin(d.policyPin(ep.ID)); err != nil {
		errs = append(errs, err)
	}
	if ep.IfName != "" {
		if err := deleteLinkByName(ep.IfName); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(d.epDir(ep.ID)); err != nil {
		errs = append(errs, fmt.Errorf("remove endpoint %d state: %w", ep.ID, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", ep.ID, err)
	}
	return nil
}
