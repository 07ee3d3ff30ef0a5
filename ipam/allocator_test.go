package ipam

import (
	"net/netip"
	"testing"
)

func TestAllocateNextSkipsTakenAndWraps(t *testing.T) {
	p := newPool(LocalAddressSpace, netip.MustParsePrefix("10.0.0.0/8"), netip.Prefix{})
	for _, a := range []string{"10.255.255.254", "10.0.0.1"} {
		if _, err := p.reserve(netip.MustParseAddr(a)); err != nil {
			t.Fatal(err)
		}
	}
	// Pretend the sequence reached the end of the /8: the next candidate is
	// the taken last usable address, then the search wraps past the taken
	// first usable one.
	p.last = netip.MustParseAddr("10.255.255.253")
	got, _, err := p.allocateNext()
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddr("10.0.0.2"); got != want {
		t.Fatalf("allocateNext = %s, want %s", got, want)
	}
	if p.last != got {
		t.Fatalf("last = %s, want %s", p.last, got)
	}
}

func TestAllocateNextOnSlash8DoesNotScanThePool(t *testing.T) {
	p := newPool(LocalAddressSpace, netip.MustParsePrefix("10.0.0.0/8"), netip.Prefix{})
	// Each call wraps from the end of the range; a search proportional to
	// the pool (16M addresses) would make this loop run for hours and hit
	// the test timeout, so no clock is read here.
	for i := range 2000 {
		p.last = netip.MustParseAddr("10.255.255.254")
		got, _, err := p.allocateNext()
		if err != nil {
			t.Fatal(err)
		}
		if want := addrPlus(netip.MustParseAddr("10.0.0.1"), i); got != want {
			t.Fatalf("allocation %d = %s, want %s", i, got, want)
		}
	}
}

func TestUndoRestoresPool(t *testing.T) {
	p := newPool(LocalAddressSpace, netip.MustParsePrefix("10.1.0.0/29"), netip.Prefix{})
	a1, _, err := p.allocateNext()
	if err != nil {
		t.Fatal(err)
	}
	a2, undo, err := p.allocateNext()
	if err != nil {
		t.Fatal(err)
	}
	undo()
	if p.has(a2) || p.last != a1 {
		t.Fatalf("after undo: has(%s)=%v last=%s, want false and %s", a2, p.has(a2), p.last, a1)
	}
	p.gateway = a1
	undoRelease, released := p.release(a1)
	if !released || p.has(a1) || p.gateway.IsValid() {
		t.Fatalf("release: released=%v has=%v gateway=%s", released, p.has(a1), p.gateway)
	}
	undoRelease()
	if !p.has(a1) || p.gateway != a1 {
		t.Fatalf("after undo of release: has=%v gateway=%s, want true and %s", p.has(a1), p.gateway, a1)
	}
}

func TestCarveJumpsOverLargeRoutes(t *testing.T) {
	a := newAllocator([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, 24)
	routes := []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("10.0.0.0/9"),
		netip.MustParsePrefix("10.128.0.0/24"),
		netip.MustParsePrefix("10.128.1.7/32"),
		netip.MustParsePrefix("fd00::/8"),
	}
	got, err := a.carve(routes, 24, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("10.128.2.0/24"); got != want {
		t.Fatalf("carve = %s, want %s", got, want)
	}
}

// addrPlus is the address n after a.
func addrPlus(a netip.Addr, n int) netip.Addr {
	for range n {
		a = a.Next()
	}
	return a
}
