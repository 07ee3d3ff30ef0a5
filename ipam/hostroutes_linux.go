package ipam

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dumpRetries bounds how often a route dump that the kernel interrupted
// (because the table changed meanwhile) is retried before giving up.
const dumpRetries = 5

// HostRoutesNetlink lists the IPv4 and IPv6 destinations of the host's
// routes in every routing table (main, local and policy tables alike: a
// subnet routed in any of them is in use). It is Config.HostRoutes in
// production.
//
// The default route is left out: it covers everything, so honouring it would
// leave no pool to carve. Everything else is kept, loopback and link-local
// routes included: no pool belongs there, so keeping them costs nothing.
func HostRoutesNetlink() ([]netip.Prefix, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_UNSPEC}
	var (
		routes []netlink.Route
		err    error
	)
	for range dumpRetries {
		routes, err = netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	out := make([]netip.Prefix, 0, len(routes))
	for _, r := range routes {
		if r.Dst == nil {
			continue // netlink reports the default route without a destination
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, bits := r.Dst.Mask.Size()
		if bits == 0 || ones == 0 {
			continue
		}
		if ip.Is4In6() {
			ip = ip.Unmap()
			if bits == 128 {
				ones -= 96 // an IPv4 address stored in 16 bytes with a 16-byte mask
			}
		}
		out = append(out, netip.PrefixFrom(ip, ones).Masked())
	}
	return out, nil
}
