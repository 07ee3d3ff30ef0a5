package ipam

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// TestHostRoutesNetlinkMatchesIproute compares the netlink listing with what
// `ip -4 route show table all` and `ip -6 ...` print, default routes
// excluded. Listing routes needs no privilege.
func TestHostRoutesNetlinkMatchesIproute(t *testing.T) {
	testutil.RequireCommand(t, "ip")
	out4, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("ip route: %v", err)
	}
	out6, err := exec.Command("ip", "-6", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("ip -6 route: %v", err)
	}
	out := append(out4, out6...)
	// The words iproute2 prints before a destination that is not an
	// ordinary unicast route.
	routeTypes := []string{"unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole", "nat", "anycast"}
	var want []netip.Prefix
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue // blank, or a nexthop of a multipath route
		}
		if slices.Contains(routeTypes, f[0]) && len(f) > 1 {
			f = f[1:]
		}
		if f[0] == "default" {
			continue
		}
		dst := f[0]
		if !strings.Contains(dst, "/") && strings.Contains(dst, ":") {
			dst += "/128"
		} else if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			t.Fatalf("cannot parse %q from %q: %v", dst, line, err)
		}
		want = append(want, p)
	}
	got, err := HostRoutesNetlink()
	if err != nil {
		t.Fatal(err)
	}
	cmp := func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	}
	slices.SortFunc(want, cmp)
	slices.SortFunc(got, cmp)
	want, got = slices.Compact(want), slices.Compact(got)
	if !slices.Equal(got, want) {
		t.Fatalf("HostRoutesNetlink = %v\nip route shows %v", got, want)
	}
}
