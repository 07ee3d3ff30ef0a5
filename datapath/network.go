package datapath

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AddNetwork makes the host side of a network: the gateway address on the
// dummy HostDevice (there is no bridge; the host answers for the gateway)
// and an unreachable route for the subnet, so addresses without an endpoint
// never leak to the default route. Idempotent.
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
	if err := netlink.AddrReplace(dev, gatewayAddr(n)); err != nil {
		return fmt.Errorf("add gateway %v to %s: %w", n.Gateway, d.cfg.HostDevice, err)
	}
	if err := netlink.RouteReplace(unreachableRoute(n)); err != nil {
		return fmt.Errorf("add unreachable route for %v: %w", n.Subnet, err)
	}
	if err := d.shared[NetworksMapName].Put(n.Index, networkInfoOf(n)); err != nil {
		return fmt.Errorf("describe network %d in %s: %w", n.Index, NetworksMapName, err)
	}
	return nil
}

// RemoveNetwork undoes AddNetwork and deletes HostDevice once it carries no
// IPv4 address. Idempotent.
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
	if err := netlink.RouteDel(unreachableRoute(n)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete unreachable route for %v: %w", n.Subnet, err)
	}
	dev, err := netlink.LinkByName(d.cfg.HostDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", d.cfg.HostDevice, err)
	}
	if err := netlink.AddrDel(dev, gatewayAddr(n)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove gateway %v from %s: %w", n.Gateway, d.cfg.HostDevice, err)
	}
	addrs, err := netlink.AddrList(dev, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", d.cfg.HostDevice, err)
	}
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

func validateNetwork(n Network) error {
	if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() || !n.Gateway.Is4() {
		return fmt.Errorf("network %d: want an IPv4 subnet and gateway, got %v and %v", n.Index, n.Subnet, n.Gateway)
	}
	return nil
}

func gatewayAddr(n Network) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(n.Gateway.AsSlice()), Mask: net.CIDRMask(32, 32)}}
}

func unreachableRoute(n Network) *netlink.Route {
	p := n.Subnet.Masked()
	return &netlink.Route{
		Dst:  &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)},
		Type: unix.RTN_UNREACHABLE,
	}
}
