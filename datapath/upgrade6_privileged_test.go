package datapath

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/policy"
)

// runOut runs one frame through p and returns its verdict and the frame
// as the program left it.
func runOut(t *testing.T, what string, p *ebpf.Program, frame []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+256)
	opts := &ebpf.RunOptions{Data: frame, DataOut: out}
	ret, err := p.Run(opts)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return ret, opts.DataOut
}

// TestUpgradeFromBeforeIPv6: a daemon of the version before IPv6 left its
// pins (no IPv6 map) and its node programs in ebpfnet_calls, whose IPv4
// endpoints' objects are the current ones byte for byte. A daemon of this
// version takes over: the endpoints keep their IPv4 traffic from New on,
// before Restore, and after; the IPv6 maps are created beside the old
// pins; and an endpoint without an IPv6 address sends no IPv6 but
// Neighbor Discovery: it is not opened by the new programs.
func TestUpgradeFromBeforeIPv6(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 10), e.endpoint(n, 11)
	nsA, _ := e.container(a), e.container(b)
	if !ping(nsA, b.IPv4.Addr()) {
		t.Fatal("a -> b: no reply")
	}
	// The earlier version's state: its node programs, no IPv6 maps.
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range nodeMapNames() {
		if err := os.Remove(filepath.Join(e.cfg.PinDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	loadEarlierNodePrograms(t, e.cfg.PinDir)
	from := e.fromContainer(a)
	ll := netip.MustParseAddr("fe80::1")
	ns := neighborSolicit(a.LXCMAC, ll, netip.MustParseAddr("fd00::1"), 255, a.LXCMAC)
	send(t, "IPv6 to the earlier node programs", from, ns, tcActShot)
	if !ping(nsA, b.IPv4.Addr()) {
		t.Fatal("a -> b under the earlier node programs: no reply")
	}

	e.dp = e.open()
	for _, name := range nodeMapNames() {
		if _, err := os.Stat(filepath.Join(e.cfg.PinDir, name)); err != nil {
			t.Errorf("the upgrade did not create %s: %v", name, err)
		}
	}
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("a -> b after the upgrade, before Restore: no reply")
	}
	if ret, _ := runOut(t, "a neighbour solicitation", from, ns); ret != tcActRedirect {
		t.Errorf("the current node programs do not answer an earlier endpoint's solicitation: verdict %d", ret)
	}
	eps, err := e.dp.Restore()
	if err != nil || len(eps) != 2 {
		t.Fatalf("Restore: %d endpoints, %v", len(eps), err)
	}
	if eps[0].IPv6.IsValid() || eps[1].IPv6.IsValid() {
		t.Errorf("endpoints of an earlier version restored with IPv6 addresses: %v %v", eps[0].IPv6, eps[1].IPv6)
	}
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("a -> b after Restore: no reply")
	}
	sip := e.metric(DropInvalidSIP, policy.Egress)
	for _, src := range []netip.Addr{ll, netip.MustParseAddr("fd00::a"), netip.IPv6Unspecified()} {
		send(t, "IPv6 data from an endpoint without IPv6", from, udp6Packet(a.LXCMAC, a.NodeMAC, src, netip.MustParseAddr("2001:db8::1"), 5000, 53, 8), tcActShot)
	}
	if got := e.metric(DropInvalidSIP, policy.Egress); got != sip+3 {
		t.Errorf("DROP_INVALID_SIP counted %d of 3 IPv6 packets from an endpoint without IPv6", got-sip)
	}
}

// loadEarlierNodePrograms puts the node programs of the version before
// IPv6 (testdata) into the pinned ebpfnet_calls of pinDir, and empties the
// slot they did not have.
func loadEarlierNodePrograms(t *testing.T, pinDir string) {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec("testdata/bpf_node_before_ipv6.o")
	if err != nil {
		t.Fatal(err)
	}
	repl := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if err != nil {
			delete(spec.Maps, name) // the per-endpoint policy map
			continue
		}
		t.Cleanup(func() { m.Close() })
		repl[name] = m
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		t.Fatalf("load the earlier node programs: %v", err)
	}
	defer coll.Close()
	calls := repl[CallsMapName]
	for slot, name := range []string{"node_from_container", "node_to_container", "node_policy_verdict"} {
		if err := calls.Put(uint32(slot), coll.Programs[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := calls.Delete(uint32(3)); err != nil && !isNotExist(err) {
		t.Fatal(err)
	}
}
