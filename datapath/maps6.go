package datapath

import (
	"bytes"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// The IPv6 maps (bpf/lib/maps6.h). Only the node programs use them: an
// endpoint's own object hands every packet to the node programs whatever
// its family, so bpf_lxc.o neither declares nor loads these, and stayed
// byte for byte what it was before IPv6. They are pinned beside the
// others, created by the first daemon that knows them; a pin directory of
// an earlier version simply lacks them.
const (
	// Endpoints6MapName is the IPv6 address -> endpoint hash: the
	// container's own addresses (anti-spoofing, identity and flags) and
	// local peers.
	Endpoints6MapName = "ebpfnet_endpoints6"
	// IPCache6MapName is the LPM trie of IPv6 prefixes -> identity.
	IPCache6MapName = "ebpfnet_ipcache6"
	// CT6MapName is the conntrack table of IPv6 flows.
	CT6MapName = "ebpfnet_ct6"
	// Frag6MapName holds the ports of IPv6 datagrams whose later
	// fragments are still to come.
	Frag6MapName = "ebpfnet_frag6"
	// Networks6MapName holds every network's IPv6 subnet by its index.
	Networks6MapName = "ebpfnet_networks6"
	// Calls6MapName is the prog array of the IPv6 node programs, by slot
	// (nodePrograms6).
	Calls6MapName = "ebpfnet_calls6"
)

// nodeMapNames are the maps only the node programs declare.
func nodeMapNames() []string {
	return []string{Endpoints6MapName, IPCache6MapName, CT6MapName, Frag6MapName, Networks6MapName, Calls6MapName}
}

// nodeObjectSpec parses the committed node object.
func nodeObjectSpec() (*ebpf.CollectionSpec, error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(bpf.NodeObject))
	if err != nil {
		return nil, fmt.Errorf("parse node programs: %w", err)
	}
	return spec, nil
}

// openNodeMaps opens or creates the node-only maps from the node object's
// declarations into d.nodeMaps.
func (d *Datapath) openNodeMaps(spec *ebpf.CollectionSpec) error {
	for _, name := range nodeMapNames() {
		ms := spec.Maps[name]
		if ms == nil {
			return fmt.Errorf("node object lacks map %s", name)
		}
		m, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: d.cfg.PinDir})
		if err != nil {
			return fmt.Errorf("open or create pinned map %s in %s: %w", name, d.cfg.PinDir, err)
		}
		d.nodeMaps[name] = m
	}
	return nil
}

// v6Addr is union v6addr: an IPv6 address in network byte order.
type v6Addr [16]byte

// ipcache6Key mirrors struct ipcache6_key.
type ipcache6Key struct {
	PrefixLen uint32
	Addr      v6Addr
}

// network6Info mirrors struct network6_info: a network's IPv6 subnet,
// mask and gateway, network byte order; all zero for none.
type network6Info struct {
	Subnet  v6Addr
	Mask    v6Addr
	Gateway v6Addr
}

// ct6Key mirrors struct ct6_key: a flow's tuple with the lower (address,
// port) end first, as ct6_key_of orders it.
type ct6Key struct {
	Saddr v6Addr
	Daddr v6Addr
	Sport [2]byte
	Dport [2]byte
	Proto uint8
	Pad   [3]uint8
}

// frag6Key mirrors struct frag6_key.
type frag6Key struct {
	Saddr v6Addr
	Daddr v6Addr
	ID    [4]byte
	Proto uint8
	Pad   [3]uint8
}
