package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/policy"
)

// Names of the pinned maps every endpoint shares (bpf/lib/maps.h).
const (
	EndpointsMapName = "ebpfnet_endpoints"
	// PolicyLookupsName is the prog array epid -> the endpoint's
	// handle_policy, through which the node programs look a new flow up
	// in that endpoint's own policy map.
	PolicyLookupsName = "ebpfnet_policy_lookups"
	// CallsMapName is the prog array of the node programs, by slot
	// (nodePrograms); every endpoint's entry programs tail-call into it.
	CallsMapName   = "ebpfnet_calls"
	MetricsMapName = "ebpfnet_metrics"
	EventsMapName  = "ebpfnet_events"
	// IPCacheMapName is the LPM trie prefix -> identity of remote
	// addresses that are not local endpoints; a miss is the world.
	IPCacheMapName = "ebpfnet_ipcache"
	// CTMapName is the node-wide conntrack table (LRU hash of tuples).
	CTMapName = "ebpfnet_ct4"
	// NetworksMapName holds every network's subnet by its index, so
	// that traffic between nodes stays within one network.
	NetworksMapName = "ebpfnet_networks"
	// FragMapName holds the ports of IPv4 datagrams whose later
	// fragments are still to come (bpf/lib/frag.h).
	FragMapName = "ebpfnet_frag4"
	// legacyPolicyCallsName is the prog array of endpoint pipelines of
	// versions before the node programs; Restore removes its pin once no
	// endpoint runs such a pipeline.
	legacyPolicyCallsName = "ebpfnet_policy_calls"
)

func sharedMapNames() []string {
	return []string{EndpointsMapName, PolicyLookupsName, CallsMapName, MetricsMapName, EventsMapName, IPCacheMapName, CTMapName, FragMapName, NetworksMapName}
}

// Endpoint flags in the endpoint's own ebpfnet_endpoints entry (keyed by
// its IPv4 address): policy enforcement per direction. The programs read
// them there on every new flow. With both clear, the endpoint's policy map
// is not consulted. A missing entry counts as both set (fail closed).
const (
	FlagEnforceIngress uint32 = 1 << 0
	FlagEnforceEgress  uint32 = 1 << 1
	// FlagAudit lets a denied new flow pass, reported with verdict audit.
	FlagAudit uint32 = 1 << 2
)

// policyEntriesMax is POLICY_ENTRIES_MAX of bpf/lib/maps.h.
const policyEntriesMax = 16384

// endpointInfo mirrors struct endpoint_info; the key is the IPv4 address in
// network byte order.
type endpointInfo struct {
	IfIndex   uint32
	EPID      uint32
	Identity  uint32
	NetworkID uint32
	LXCMAC    [6]byte
	NodeMAC   [6]byte
	Flags     uint32
}

func endpointKey(a netip.Addr) [4]byte { return a.As4() }

func infoOf(ep *Endpoint, flags uint32) endpointInfo {
	info := endpointInfo{
		IfIndex:   uint32(ep.IfIndex),
		EPID:      uint32(ep.ID),
		Identity:  ep.Identity,
		NetworkID: ep.Network.Index,
		Flags:     flags,
	}
	copy(info.LXCMAC[:], ep.LXCMAC)
	copy(info.NodeMAC[:], ep.NodeMAC)
	return info
}

// networkInfo mirrors struct network_info: a network's subnet and mask,
// network byte order.
type networkInfo struct {
	Subnet  [4]byte
	Mask    [4]byte
	Gateway [4]byte
}

func networkInfoOf(n Network) networkInfo {
	if !n.Subnet.IsValid() {
		return networkInfo{} // IPv6 only: mask 0, no IPv4 subnet
	}
	p := n.Subnet.Masked()
	info := networkInfo{Subnet: p.Addr().As4(), Gateway: n.Gateway.As4()}
	copy(info.Mask[:], net.CIDRMask(p.Bits(), 32))
	return info
}

// PolicyEntry mirrors struct policy_entry; the presence of an entry allows.
type PolicyEntry struct {
	Flags uint32
	Pad   uint32
}

// MetricKey is a metric's reason and direction. ebpfnet_metrics is a per-CPU
// array with one slot per key (metricSlot).
type MetricKey struct {
	Reason Reason
	Dir    policy.Direction
}

// MetricValue mirrors struct metrics_value, summed over CPUs by Metrics.
type MetricValue struct {
	Packets uint64
	Bytes   uint64
}

// metricSlot is metrics_slot of bpf/lib/metrics.h: reason * 2, plus one for
// egress (METRICS_SLOTS, 512, holds every reason).
func metricSlot(k MetricKey) uint32 {
	s := uint32(k.Reason) << 1
	if k.Dir == policy.Egress {
		s |= 1
	}
	return s
}

// metricKeyOf is the key of a slot.
func metricKeyOf(slot uint32) MetricKey {
	k := MetricKey{Reason: Reason(slot >> 1), Dir: policy.Ingress}
	if slot&1 != 0 {
		k.Dir = policy.Egress
	}
	return k
}

// readMetrics sums the per-CPU counters of every slot. A slot no packet has
// been counted in is left out, as a hash never held its key.
func readMetrics(m *ebpf.Map) (map[MetricKey]MetricValue, error) {
	out := map[MetricKey]MetricValue{}
	var slot uint32
	var perCPU []MetricValue
	it := m.Iterate()
	for it.Next(&slot, &perCPU) {
		var sum MetricValue
		for _, v := range perCPU {
			sum.Packets += v.Packets
			sum.Bytes += v.Bytes
		}
		if sum.Packets != 0 {
			out[metricKeyOf(slot)] = sum
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", MetricsMapName, err)
	}
	return out, nil
}

// ignoreNotExist treats a missing key as done: deletions are idempotent.
func ignoreNotExist(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}
