package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The overlay carries a network's traffic between nodes: one VXLAN device
// per node in external (collect_md) mode, to which the node programs hand a
// packet for another node's endpoint with the tunnel key set (bpf/lib/
// overlay.h), and on whose tc ingress node_from_overlay takes what other
// nodes send. One device serves every network and every peer: the tunnel
// key names the peer, the ipcache the peer of each address.

// OverlayConfig turns the overlay on.
type OverlayConfig struct {
	// Device is the VXLAN device's name (ebpfnet_vxlan).
	Device string
	// Port is the UDP port of VXLAN on every node: Linux's and Cilium's
	// 8472, not IANA's 4789, which Docker's own overlay uses.
	Port int
	// UplinkMTU is the MTU of the underlay. The device and the
	// containers of networks that span nodes get it less the
	// encapsulation (VXLANOverhead).
	UplinkMTU int
}

// Defaults of the overlay.
const (
	DefaultOverlayDevice = "ebpfnet_vxlan"
	DefaultOverlayPort   = 8472
	// VXLANOverhead is what VXLAN over IPv4 adds to a frame: outer IPv4
	// (20), UDP (8), VXLAN (8) headers and the inner Ethernet header (14).
	VXLANOverhead = 50
)

// MTU is the largest inner packet the overlay carries.
func (o OverlayConfig) MTU() int { return o.UplinkMTU - VXLANOverhead }

func (o OverlayConfig) validate() error {
	if o.Device == "" || len(o.Device) >= unix.IFNAMSIZ {
		return fmt.Errorf("overlay device name %q: want 1 to %d characters", o.Device, unix.IFNAMSIZ-1)
	}
	if o.Port <= 0 || o.Port > 65535 {
		return fmt.Errorf("overlay port %d: want 1 to 65535", o.Port)
	}
	if o.MTU() < 576 {
		return fmt.Errorf("overlay: an uplink MTU of %d leaves %d for containers, below IPv4's 576", o.UplinkMTU, o.MTU())
	}
	return nil
}

// ensureOverlayDevice creates the VXLAN device, or takes the one an
// earlier start made if it has the same settings (flows through it go on
// across a restart), and brings it up. It returns the device's index.
func ensureOverlayDevice(o OverlayConfig) (int, error) {
	if err := o.validate(); err != nil {
		return 0, err
	}
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: o.Device, MTU: o.MTU()},
		FlowBased: true, // external: the tunnel key comes with each packet
		Port:      o.Port,
		Learning:  false,
	}
	if l, err := netlink.LinkByName(o.Device); err == nil {
		cur, ok := l.(*netlink.Vxlan)
		if !ok || !cur.FlowBased || cur.Port != o.Port {
			// Another kind or other settings: ours to replace, the name
			// is ours.
			if err := netlink.LinkDel(l); err != nil {
				return 0, fmt.Errorf("replace %s: %w", o.Device, err)
			}
		} else {
			if cur.MTU != o.MTU() {
				if err := netlink.LinkSetMTU(l, o.MTU()); err != nil {
					return 0, fmt.Errorf("set the MTU of %s: %w", o.Device, err)
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return 0, fmt.Errorf("bring up %s: %w", o.Device, err)
			}
			return l.Attrs().Index, nil
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return 0, fmt.Errorf("look up %s: %w", o.Device, err)
	}
	if err := netlink.LinkAdd(want); err != nil {
		return 0, fmt.Errorf("create VXLAN device %s (port %d): %w", o.Device, o.Port, err)
	}
	l, err := netlink.LinkByName(o.Device)
	if err != nil {
		return 0, fmt.Errorf("look up %s: %w", o.Device, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		_ = netlink.LinkDel(l)
		return 0, fmt.Errorf("bring up %s: %w", o.Device, err)
	}
	return l.Attrs().Index, nil
}

// attachOverlay puts node_from_overlay on the device's tc ingress,
// replacing the program of the daemon before atomically.
func attachOverlay(ifindex int, prog *ebpf.Program) error {
	if err := netlink.QdiscAdd(clsact(ifindex)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to the overlay device: %w", err)
	}
	if err := netlink.FilterReplace(tcFilter(ifindex, netlink.HANDLE_MIN_INGRESS, prog, progFromOverlay)); err != nil {
		return fmt.Errorf("attach %s to the overlay device: %w", progFromOverlay, err)
	}
	return nil
}

// RemoveOverlay deletes an overlay device that a cluster daemon left: a
// daemon without a cluster owns no tunnel, and nothing else may use the
// name. A missing device is fine.
func RemoveOverlay(device string) error {
	l, err := netlink.LinkByName(device)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", device, err)
	}
	if _, ok := l.(*netlink.Vxlan); !ok {
		return fmt.Errorf("%s is a %s, not the overlay's VXLAN device: not removing it", device, l.Type())
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("remove %s: %w", device, err)
	}
	return nil
}

// UplinkMTU is the MTU of the device that carries the node's own address
// nodeIP: the underlay of the overlay.
func UplinkMTU(nodeIP netip.Addr) (int, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == nodeIP {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, fmt.Errorf("look up the device of %s: %w", nodeIP, err)
			}
			return l.Attrs().MTU, nil
		}
	}
	return 0, fmt.Errorf("no device of this node has the address %s", nodeIP)
}
