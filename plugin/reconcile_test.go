package plugin

import (
	"net/netip"
	"reflect"
	"testing"

	dockernetwork "github.com/docker/docker/api/types/network"
)

func TestPlanCleanupRemovesOnlyWhatDockerForgot(t *testing.T) {
	subnetA := netip.MustParsePrefix("10.1.0.0/24")
	subnetB := netip.MustParsePrefix("10.2.0.0/24")
	addr := netip.MustParseAddr
	docker := dockerState{
		networks:  map[string]bool{"netA": true},
		endpoints: map[string]bool{"epKept": true},
		inUse: map[netip.Prefix]map[netip.Addr]bool{
			subnetA: {addr("10.1.0.1"): true, addr("10.1.0.2"): true, addr("10.1.0.9"): true},
		},
	}
	own := ownState{
		endpoints: []string{"epKept", "epGone"},
		networks:  []string{"netA", "netGone"},
		pools: []ipamPool{
			{id: "poolA", subnet: subnetA, addresses: []netip.Addr{addr("10.1.0.1"), addr("10.1.0.2"), addr("10.1.0.3"), addr("10.1.0.9")}},
			{id: "poolB", subnet: subnetB, addresses: []netip.Addr{addr("10.2.0.1")}},
		},
	}
	got := planCleanup(docker, own)
	want := cleanupPlan{
		endpoints: []string{"epGone"},
		addresses: []poolAddress{{poolID: "poolA", addr: addr("10.1.0.3")}},
		networks:  []string{"netGone"},
		pools:     []string{"poolB"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("plan = %+v\nwant %+v", got, want)
	}
}

func TestPlanCleanupWithEverythingKnownIsEmpty(t *testing.T) {
	subnet := netip.MustParsePrefix("10.1.0.0/24")
	gw := netip.MustParseAddr("10.1.0.1")
	docker := dockerState{
		networks:  map[string]bool{"n": true},
		endpoints: map[string]bool{"e": true},
		inUse:     map[netip.Prefix]map[netip.Addr]bool{subnet: {gw: true}},
	}
	own := ownState{endpoints: []string{"e"}, networks: []string{"n"}, pools: []ipamPool{{id: "p", subnet: subnet, addresses: []netip.Addr{gw}}}}
	if plan := planCleanup(docker, own); !plan.empty() {
		t.Fatalf("plan = %+v, want nothing to do", plan)
	}
}

func TestDriverNamesLearnsTheManagedPluginReference(t *testing.T) {
	list := []dockernetwork.Summary{
		{ID: "n1", Driver: "127.0.0.1:5000/ebpfnet:v1", IPAM: dockernetwork.IPAM{Driver: "127.0.0.1:5000/ebpfnet:v1"}},
		{ID: "n2", Driver: "ebpfnet/ebpfnet", IPAM: dockernetwork.IPAM{Driver: "default"}},
		{ID: "other", Driver: "bridge", IPAM: dockernetwork.IPAM{Driver: "default"}},
		{ID: "stranger", Driver: "someone/else:latest", IPAM: dockernetwork.IPAM{Driver: "someone/else:latest"}},
	}
	got := driverNames("ebpfnet", list, []string{"n1", "n2", "gone"})
	want := map[string]bool{"ebpfnet": true, "127.0.0.1:5000/ebpfnet:v1": true, "ebpfnet/ebpfnet": true}
	if len(got) != len(want) {
		t.Fatalf("driver names = %v, want %v", got, want)
	}
	for name := range want {
		if !got[name] {
			t.Errorf("driver names = %v: %q missing", got, name)
		}
	}
}

// Docker 20.10 shows a network's gateway only when the user gave one; the
// one our IPAM chose (the first usable address) is held all the same, so
// reconcile never releases it (it did, at every restart).
func TestDockerHoldsTheGatewayItDoesNotShow(t *testing.T) {
	ours := map[string]bool{"ebpfnet": true}
	n := dockernetwork.Inspect{ID: "n", Driver: "ebpfnet", IPAM: dockernetwork.IPAM{Driver: "ebpfnet", Config: []dockernetwork.IPAMConfig{
		{Subnet: "10.1.0.0/24"},
		{Subnet: "10.2.0.0/24", Gateway: "10.2.0.254", IPRange: "10.2.0.128/25", AuxAddress: map[string]string{"a": "10.2.0.7"}},
	}}, Containers: map[string]dockernetwork.EndpointResource{"c": {EndpointID: "e", IPv4Address: "10.1.0.9/24"}}}
	held := describeNetwork(n, ours).inUse()
	addr := netip.MustParseAddr
	want := map[netip.Prefix]map[netip.Addr]bool{
		netip.MustParsePrefix("10.1.0.0/24"): {addr("10.1.0.1"): true, addr("10.1.0.9"): true},
		netip.MustParsePrefix("10.2.0.0/24"): {addr("10.2.0.254"): true, addr("10.2.0.7"): true},
	}
	if !reflect.DeepEqual(held, want) {
		t.Fatalf("held %v\nwant %v", held, want)
	}
	if p := describeNetwork(n, ours).pools[1]; p.ipRange != netip.MustParsePrefix("10.2.0.128/25") {
		t.Fatalf("ip-range %v", p.ipRange)
	}
}

// A dual-stack network's IPv6 pool is Docker's as much as its IPv4 one:
// reconcile keeps it and the IPv6 addresses its containers hold, and
// releases only what Docker does not hold.
func TestDockerHoldsIPv6Pools(t *testing.T) {
	ours := map[string]bool{"ebpfnet": true}
	n := dockernetwork.Inspect{ID: "n", Driver: "ebpfnet", IPAM: dockernetwork.IPAM{Driver: "ebpfnet", Config: []dockernetwork.IPAMConfig{
		{Subnet: "10.1.0.0/24"},
		{Subnet: "fd00:1::/64"},
	}}, Containers: map[string]dockernetwork.EndpointResource{"c": {EndpointID: "e", IPv4Address: "10.1.0.9/24", IPv6Address: "fd00:1::9/64"}}}
	dn := describeNetwork(n, ours)
	addr := netip.MustParseAddr
	v6 := netip.MustParsePrefix("fd00:1::/64")
	held := dn.inUse()
	if want := map[netip.Addr]bool{addr("fd00:1::1"): true, addr("fd00:1::9"): true}; !reflect.DeepEqual(held[v6], want) {
		t.Fatalf("IPv6 pool held %v, want %v", held[v6], want)
	}
	if p := dn.pool(true); p.subnet != v6 || p.gateway != addr("fd00:1::1") {
		t.Errorf("the IPv6 pool: %+v", p)
	}
	plan := planCleanup(dockerState{inUse: held}, ownState{pools: []ipamPool{
		{id: "p6", subnet: v6, addresses: []netip.Addr{addr("fd00:1::1"), addr("fd00:1::9"), addr("fd00:1::a")}},
	}})
	if len(plan.pools) != 0 || len(plan.addresses) != 1 || plan.addresses[0].addr != addr("fd00:1::a") {
		t.Errorf("plan for an IPv6 pool Docker holds: %+v", plan)
	}
}
