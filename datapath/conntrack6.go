package datapath

import (
	"encoding/binary"
	"net/netip"

	"github.com/cilium/ebpf"
)

// ProtoICMPv6 is ICMPv6's protocol number: its echo flows are tracked as
// ICMP's are, with the echo id for a port.
const ProtoICMPv6 uint8 = 58

// ordered tells whether k is in the order ct6_key_of (bpf/lib/conntrack6.h)
// writes: each address compares as its two 64-bit words in the order the
// CPU loads them, the first word first, then the ports as loaded.
func (k ct6Key) ordered() bool {
	s0, d0 := binary.NativeEndian.Uint64(k.Saddr[:8]), binary.NativeEndian.Uint64(k.Daddr[:8])
	if s0 != d0 {
		return s0 < d0
	}
	s1, d1 := binary.NativeEndian.Uint64(k.Saddr[8:]), binary.NativeEndian.Uint64(k.Daddr[8:])
	if s1 != d1 {
		return s1 < d1
	}
	return binary.NativeEndian.Uint16(k.Sport[:]) <= binary.NativeEndian.Uint16(k.Dport[:])
}

// holds tells whether addr is one of k's ends.
func (k ct6Key) holds(addr v6Addr) bool { return k.Saddr == addr || k.Daddr == addr }

// flowOf6 describes an IPv6 entry that is live at now.
func flowOf6(k ct6Key, e ctEntry, now uint64) CTFlow {
	lo := netip.AddrPortFrom(netip.AddrFrom16(k.Saddr), binary.BigEndian.Uint16(k.Sport[:]))
	hi := netip.AddrPortFrom(netip.AddrFrom16(k.Daddr), binary.BigEndian.Uint16(k.Dport[:]))
	return orient(CTFlow{Proto: k.Proto, Src: lo, Dst: hi, State: e.state(k.Proto),
		Expires: durationUntil(e.Expires, now), SrcEndpoint: e.EPID[0], DstEndpoint: e.EPID[1]}, e)
}

// flushConntrack6 is flushConntrack for an IPv6 address.
func flushConntrack6(m *ebpf.Map, addr netip.Addr) error {
	if !addr.Is6() || addr.Is4In6() {
		return nil
	}
	return flushHolding[ct6Key](m, v6Addr(addr.As16()))
}
