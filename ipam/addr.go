package ipam

import "net/netip"

// Address arithmetic for both families: pools are IPv4 or IPv6 prefixes,
// and an IPv6 /64 holds more addresses than any integer type, so addresses
// stay netip.Addr and step with Next and Prev.

// bounds returns the first and last address of a prefix.
func bounds(p netip.Prefix) (first, last netip.Addr) {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ = netip.AddrFromSlice(b)
	return p.Addr(), last
}

func minAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return a
	}
	return b
}

func maxAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return b
	}
	return a
}

// sameFamily tells whether a belongs to p's family (an IPv4-mapped IPv6
// address belongs to neither pool family).
func sameFamily(a netip.Addr, p netip.Prefix) bool {
	return !a.Is4In6() && a.Is4() == p.Addr().Is4()
}
