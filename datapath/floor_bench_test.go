package datapath

import (
	"fmt"
	"maps"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// BenchmarkBareBringUp is the floor under an endpoint's bring-up in this
// design: the kernel's work alone, issued as directly as the APIs allow
// and with the same overlap CreateEndpoint uses. Per endpoint: a veth pair
// (host end up, both MACs, in one request) and a /32 route to it, while
// beside it the endpoint's policy map is made and its three programs are
// loaded; then the clsact qdisc, the two tc filters and handle_policy's
// entry in the program array. No state file, record, spare, epid or
// bookkeeping: what is left between this and BenchmarkCreateEndpoint is
// ebpfnet's own work, and between this and the plugin socket's
// BenchmarkEndpointBringUp the plugin's too. Back to back, as
// bench/bringup runs the socket's.
func BenchmarkBareBringUp(b *testing.B) {
	testutil.RequireRoot(b)
	if !onlyDefaultRoute(mustPrefix(b, "10.252.0.0/16")) {
		b.Fatal("10.252.0.0/16, the routes' range, is in use on this machine")
	}
	spec := endpointSpecForTest(b)
	repl := endpointMapsForTest(b, spec)
	nl, err := netlink.NewHandle()
	if err != nil {
		b.Fatal(err)
	}
	defer nl.Close()
	suffix := randHex(b, 3)
	var made []string
	var policies []*ebpf.Map
	b.Cleanup(func() {
		for _, name := range made {
			_ = deleteLinkByName(name)
		}
		for _, m := range policies {
			m.Close()
		}
	})
	lookups := repl[PolicyLookupsName]
	durations := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bbu%s%04x", suffix, i)
		start := time.Now()
		type loaded struct {
			policy *ebpf.Map
			coll   *ebpf.Collection
			err    error
		}
		done := make(chan loaded, 1)
		go func() {
			var l loaded
			if l.policy, l.err = ebpf.NewMap(spec.Maps[policyMapKName]); l.err != nil {
				done <- l
				return
			}
			own := maps.Clone(repl)
			own[policyMapKName] = l.policy
			l.coll, l.err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: own})
			done <- l
		}()
		la := netlink.NewLinkAttrs()
		la.Name, la.Flags, la.MTU = name, net.FlagUp, 1500
		la.HardwareAddr = net.HardwareAddr{0x02, 0xbb, 0, 0, byte(i >> 8), byte(i)}
		veth := &netlink.Veth{LinkAttrs: la, PeerName: name + "p",
			PeerHardwareAddr: net.HardwareAddr{0x02, 0xbc, 0, 0, byte(i >> 8), byte(i)}}
		linkErr := nl.LinkAdd(veth)
		if linkErr == nil {
			made = append(made, name)
			dst := &net.IPNet{IP: net.IPv4(10, 252, byte(i>>8), byte(i)), Mask: net.CIDRMask(32, 32)}
			linkErr = nl.RouteAdd(&netlink.Route{LinkIndex: veth.Index, Dst: dst, Scope: unix.RT_SCOPE_LINK})
		}
		l := <-done
		if l.policy != nil {
			policies = append(policies, l.policy)
		}
		if linkErr != nil || l.err != nil {
			if l.coll != nil {
				l.coll.Close()
			}
			b.Fatalf("endpoint %d: veth %v, load %v", i, linkErr, l.err)
		}
		err := attachTC(nl, veth.Index, l.coll.Programs[progFrom], l.coll.Programs[progTo], true,
			func(createStep) error { return nil })
		if err == nil {
			err = lookups.Put(uint32(i%int(lookups.MaxEntries())), l.coll.Programs[progPolicy])
		}
		l.coll.Close()
		if err != nil {
			b.Fatalf("endpoint %d: %v", i, err)
		}
		durations = append(durations, time.Since(start))
	}
	b.StopTimer()
	reportPercentiles(b, durations)
}
