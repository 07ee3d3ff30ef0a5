package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AddNetwork makes the host side of a network: the gateway address on the
// dummy HostDevice (there is no bridge; the host answers for the gateway)
// and an unreachable route for the subnet, so addresses without an endpoint
// never leak to the default route, for each family the network has; and
// its entries in ebpfnet_networks and ebpfnet_networks6. Idempotent.
func (d *Datapath) AddNetwork(n Network) error {
	if err := validateNetwork(n); err != nil {
		return err
	}
	if err := checkNetworkIndex(n.Index); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	dev, err := netlink.LinkByName(d.cfg.HostDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("look up %s: %w", d.cfg.HostDevice, err)
		}
		if err := createHostDevice(d.cfg.HostDevice); err != nil {
			return err
		}
		if dev, err = netlink.LinkByName(d.cfg.HostDevice); err != nil {
			return fmt.Errorf("look up %s: %w", d.cfg.HostDevice, err)
		}
	}
	if err := netlink.LinkSetUp(dev); err != nil {
		return fmt.Errorf("bring up %s: %w", d.cfg.HostDevice, err)
	}
	for _, f := range familiesOf(n) {
		if err := netlink.AddrReplace(dev, gatewayAddr(f.subnet, f.gateway)); err != nil {
			return fmt.Errorf("add gateway %v to %s: %w", f.gateway, d.cfg.HostDevice, err)
		}
		if err := netlink.RouteReplace(unreachableRoute(f.subnet)); err != nil {
			return fmt.Errorf("add unreachable route for %v: %w", f.subnet, err)
		}
	}
	if err := d.shared[NetworksMapName].Put(n.Index, networkInfoOf(n)); err != nil {
		return fmt.Errorf("describe network %d in %s: %w", n.Index, NetworksMapName, err)
	}
	if err := d.nodeMaps[Networks6MapName].Put(n.Index, network6InfoOf(n)); err != nil {
		return fmt.Errorf("describe network %d in %s: %w", n.Index, Networks6MapName, err)
	}
	return nil
}

// network6InfoOf is a network's ebpfnet_networks6 entry: all zero
// without IPv6.
func network6InfoOf(n Network) network6Info {
	if !n.Subnet6.IsValid() {
		return network6Info{}
	}
	p := n.Subnet6.Masked()
	info := network6Info{Subnet: p.Addr().As16(), Gateway: n.Gateway6.As16()}
	copy(info.Mask[:], net.CIDRMask(p.Bits(), 128))
	return info
}

// family is one address family of a network: its subnet and gateway.
type family struct {
	subnet  netip.Prefix
	gateway netip.Addr
}

// familiesOf lists the families n has, IPv4 first.
func familiesOf(n Network) []family {
	var out []family
	if n.Subnet.IsValid() {
		out = append(out, family{n.Subnet, n.Gateway})
	}
	if n.Subnet6.IsValid() {
		out = append(out, family{n.Subnet6, n.Gateway6})
	}
	return out
}

// RemoveNetwork undoes AddNetwork and deletes HostDevice once it carries no
// gateway address of either family. Idempotent.
func (d *Datapath) RemoveNetwork(n Network) error {
	if err := validateNetwork(n); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// An array entry cannot go: all zeroes is "no network" (mask 0).
	if err := d.shared[NetworksMapName].Put(n.Index, networkInfo{}); err != nil && checkNetworkIndex(n.Index) == nil {
		return fmt.Errorf("forget network %d in %s: %w", n.Index, NetworksMapName, err)
	}
	if err := d.nodeMaps[Networks6MapName].Put(n.Index, network6Info{}); err != nil && checkNetworkIndex(n.Index) == nil {
		return fmt.Errorf("forget network %d in %s: %w", n.Index, Networks6MapName, err)
	}
	for _, f := range familiesOf(n) {
		if err := netlink.RouteDel(unreachableRoute(f.subnet)); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete unreachable route for %v: %w", f.subnet, err)
		}
	}
	dev, err := netlink.LinkByName(d.cfg.HostDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", d.cfg.HostDevice, err)
	}
	for _, f := range familiesOf(n) {
		if err := netlink.AddrDel(dev, gatewayAddr(f.subnet, f.gateway)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove gateway %v from %s: %w", f.gateway, d.cfg.HostDevice, err)
		}
	}
	addrs, err := netlink.AddrList(dev, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", d.cfg.HostDevice, err)
	}
	// The kernel's own link-local address is no gateway.
	addrs = slices.DeleteFunc(addrs, func(a netlink.Addr) bool { return a.IP.IsLinkLocalUnicast() })
	if len(addrs) == 0 {
		if err := netlink.LinkDel(dev); err != nil {
			return fmt.Errorf("delete %s: %w", d.cfg.HostDevice, err)
		}
	}
	return nil
}

// createHostDevice makes the device that holds gateway addresses: a dummy,
// or an ifb on kernels built without the dummy driver (CONFIG_DUMMY=n); all
// it has to do is carry addresses while up, which both do.
func createHostDevice(name string) error {
	la := netlink.NewLinkAttrs()
	la.Name = name
	err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: la})
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = netlink.LinkAdd(&netlink.Ifb{LinkAttrs: la})
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create %s: %w", name, err)
	}
	return nil
}

// checkNetworkIndex: the node programs get a network's index in 16 bits
// (bpf/lib/cb.h), and 0 means none. Not part of validateNetwork, so that
// RemoveNetwork still takes what an older version let in.
func checkNetworkIndex(index uint32) error {
	if index == 0 || index > 0xffff {
		return fmt.Errorf("network index %d: want 1 to 65535", index)
	}
	return nil
}

// validateNetwork: an IPv4 subnet and gateway, an IPv6 subnet and gateway,
// or both.
func validateNetwork(n Network) error {
	v4 := n.Subnet.IsValid() || n.Gateway.IsValid()
	v6 := n.Subnet6.IsValid() || n.Gateway6.IsValid()
	switch {
	case !v4 && !v6:
		return fmt.Errorf("network %d has neither an IPv4 nor an IPv6 subnet", n.Index)
	case v4 && (!n.Subnet.IsValid() || !n.Subnet.Addr().Is4() || !n.Gateway.Is4()):
		return fmt.Errorf("network %d: want an IPv4 subnet and gateway, got %v and %v", n.Index, n.Subnet, n.Gateway)
	case v6 && (!n.Subnet6.IsValid() || !n.Subnet6.Addr().Is6() || n.Subnet6.Addr().Is4In6() ||
		!n.Gateway6.Is6() || n.Gateway6.Is4In6()):
		return fmt.Errorf("network %d: want an IPv6 subnet and gateway, got %v and %v", n.Index, n.Subnet6, n.Gateway6)
	}
	return nil
}

// gatewayAddr is the gateway as the host device carries it: a host
// address, without duplicate address detection (the address is the
// network's, and a tentative one could not answer for a few seconds).
func gatewayAddr(subnet netip.Prefix, gw netip.Addr) *netlink.Addr {
	bits := gw.BitLen()
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(gw.AsSlice()), Mask: net.CIDRMask(bits, bits)}}
	if subnet.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func unreachableRoute(subnet netip.Prefix) *netlink.Route {
	p := subnet.Masked()
	bits := p.Addr().BitLen()
	return &netlink.Route{
		Dst:  &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)},
		Type: unix.RTN_UNREACHABLE,
	}
}
