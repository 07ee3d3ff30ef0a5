package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// An endpoint's IPv6 side. The endpoint's object has no IPv6 constant
// (skb->cb, which hands its constants to the node programs, has no room
// for 16 bytes, and the object stays small); the node programs know the
// container's IPv6 address by its ebpfnet_endpoints6 entry, which names
// the endpoint (epid) and carries, as its ebpfnet_endpoints entry does for
// IPv4, its identity and policy flags.
//
// One source of truth per family: a dual-stack endpoint's identity and
// flags are in both entries, each read by its own family's packets only.
// publishEndpoint writes the IPv4 entry, then the IPv6 one, each with one
// map update, so a packet of either family sees its endpoint whole, old or
// new. ApplyPolicy's order (new policy entries, then the flags of both
// entries, then the stale entries) keeps each family's packets within what
// the old or the new policy allows while both are written; a new identity
// reaches both entries after every policy map knows it (endpoint package).

// endpoint6Key is the ebpfnet_endpoints6 key of a.
func endpoint6Key(a netip.Addr) v6Addr { return a.As16() }

// validateEndpoint6 checks what validateEndpoint leaves to it: that the
// endpoint has an address, and its IPv6 side.
func validateEndpoint6(ep *Endpoint) error {
	switch {
	case !ep.IPv4.IsValid() && !ep.IPv6.IsValid():
		return fmt.Errorf("endpoint %s has neither an IPv4 nor an IPv6 address", ep.DockerEndpointID)
	case !ep.IPv6.IsValid():
		return nil
	case !ep.IPv6.Addr().Is6() || ep.IPv6.Addr().Is4In6():
		return fmt.Errorf("endpoint %s: IPv6 %v is not an IPv6 prefix", ep.DockerEndpointID, ep.IPv6)
	case !ep.Network.Gateway6.Is6() || ep.Network.Gateway6.Is4In6():
		return fmt.Errorf("endpoint %s: network IPv6 gateway %v is not IPv6", ep.DockerEndpointID, ep.Network.Gateway6)
	}
	return nil
}

// publishEndpoint6 writes the endpoint's ebpfnet_endpoints6 entry, if it
// has an IPv6 address.
func (d *Datapath) publishEndpoint6(ep *Endpoint, flags uint32) error {
	if !ep.IPv6.IsValid() {
		return nil
	}
	if err := d.nodeMaps[Endpoints6MapName].Put(endpoint6Key(ep.IPv6.Addr()), infoOf(ep, flags)); err != nil {
		return fmt.Errorf("insert endpoint %d (%v) in %s: %w", ep.ID, ep.IPv6.Addr(), Endpoints6MapName, err)
	}
	return nil
}

// unpublishEndpoint6 deletes the endpoint's IPv6 entry if it is still its
// own, as unpublishEndpoint does for IPv4.
func (d *Datapath) unpublishEndpoint6(ep *Endpoint) error {
	if !ep.IPv6.IsValid() {
		return nil
	}
	return deleteOwnEntry(d.nodeMaps[Endpoints6MapName], Endpoints6MapName, endpoint6Key(ep.IPv6.Addr()), ep)
}

// publishedFlags reads the policy flags of ep's published entry (IPv4's,
// or IPv6's for an endpoint without IPv4): what a running policy engine
// set. ok is false when the endpoint has no entry of its own.
func (d *Datapath) publishedFlags(ep *Endpoint) (flags uint32, ok bool) {
	var cur endpointInfo
	var err error
	if ep.IPv4.IsValid() {
		err = d.shared[EndpointsMapName].Lookup(endpointKey(ep.IPv4.Addr()), &cur)
	} else {
		err = d.nodeMaps[Endpoints6MapName].Lookup(endpoint6Key(ep.IPv6.Addr()), &cur)
	}
	if err != nil || cur.EPID != uint32(ep.ID) {
		return 0, false
	}
	return cur.Flags, true
}

// routeToEndpoint6 is routeToEndpoint for the endpoint's IPv6 address: a
// permanent neighbour entry and a /128 route through the veth.
func routeToEndpoint6(nl *netlink.Handle, ep *Endpoint) error {
	if !ep.IPv6.IsValid() {
		return nil
	}
	ip := net.IP(ep.IPv6.Addr().AsSlice())
	neigh := &netlink.Neigh{
		LinkIndex:    ep.IfIndex,
		Family:       unix.AF_INET6,
		State:        netlink.NUD_PERMANENT,
		IP:           ip,
		HardwareAddr: net.HardwareAddr(ep.LXCMAC),
	}
	if err := nl.NeighSet(neigh); err != nil {
		return fmt.Errorf("add neighbour %s on %s: %w", ip, ep.IfName, err)
	}
	if err := nl.RouteReplace(route6To(ep)); err != nil {
		return fmt.Errorf("add route %s via %s: %w", ip, ep.IfName, err)
	}
	return nil
}

func route6To(ep *Endpoint) *netlink.Route {
	return &netlink.Route{
		LinkIndex: ep.IfIndex,
		Dst:       &net.IPNet{IP: net.IP(ep.IPv6.Addr().AsSlice()), Mask: net.CIDRMask(128, 128)},
		Scope:     netlink.SCOPE_LINK,
	}
}

// deleteRoute6 removes the /128 route to the endpoint; one already gone is
// fine.
func deleteRoute6(nl *netlink.Handle, ep *Endpoint) error {
	if !ep.IPv6.IsValid() {
		return nil
	}
	r := route6To(ep)
	if err := nl.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %v via %s: %w", r.Dst, ep.IfName, err)
	}
	return nil
}

// flushFlows deletes every flow of both tables with one of ep's addresses
// at an end (flushConntrack).
func flushFlows(ct4, ct6 *ebpf.Map, ep *Endpoint) error {
	var errs []error
	if ep.IPv4.IsValid() {
		errs = append(errs, flushConntrack(ct4, ep.IPv4.Addr()))
	}
	if ep.IPv6.IsValid() {
		errs = append(errs, flushConntrack6(ct6, ep.IPv6.Addr()))
	}
	return errors.Join(errs...)
}
