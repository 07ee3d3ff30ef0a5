package datapath

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// testEnv is one privileged test's private world: its own pin directory,
// state directory, host device, networks and namespaces, all removed on
// cleanup.
type testEnv struct {
	t      testing.TB
	suffix string
	cfg    Config
	dp     *Datapath
	// links are the host veths of the endpoints made by endpoint: one
	// whose peer never went into a namespace outlives the test otherwise.
	links []string
}

func randHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newTestEnv makes a private world; configure adjusts its Config before the
// datapath opens.
func newTestEnv(t testing.TB, configure ...func(*Config)) *testEnv {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "ip", "busybox")
	if _, err := os.Stat("/sys/fs/bpf"); err != nil {
		testutil.Missing(t, "bpffs at /sys/fs/bpf: %v", err)
	}
	suffix := randHex(t, 3)
	e := &testEnv{t: t, suffix: suffix, cfg: Config{
		StateDir:   t.TempDir(),
		PinDir:     "/sys/fs/bpf/ebpfnet-test-" + suffix,
		HostDevice: "ebt" + suffix,
		Version:    "test",
	}}
	for _, c := range configure {
		c(&e.cfg)
	}
	t.Cleanup(func() {
		if e.dp != nil {
			_ = e.dp.Close()
		}
		// Whatever a failed test left: veths die with their namespace or
		// here, pins with the directory.
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().Name == e.cfg.HostDevice {
				_ = netlink.LinkDel(l)
			}
		}
		for _, name := range e.links {
			_ = deleteLinkByName(name)
		}
		_ = os.RemoveAll(e.cfg.PinDir)
	})
	e.dp = e.open()
	return e
}

func (e *testEnv) open() *Datapath {
	e.t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	dp, err := New(e.cfg, log)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	return dp
}

// network returns a fresh /24 that no route of the machine covers.
func (e *testEnv) network(index uint32) Network {
	e.t.Helper()
	for i := 0; i < 50; i++ {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200 + b[0]%50, b[1], 0}), 24)
		if onlyDefaultRoute(subnet) {
			n := Network{Index: index, Subnet: subnet, Gateway: subnet.Addr().Next()}
			if e.cfg.Overlay != nil {
				n.MTU = e.cfg.Overlay.MTU()
			}
			if err := e.dp.AddNetwork(n); err != nil {
				e.t.Fatalf("AddNetwork: %v", err)
			}
			e.t.Cleanup(func() {
				if err := e.dp.RemoveNetwork(n); err != nil {
					e.t.Errorf("RemoveNetwork: %v", err)
				}
			})
			return n
		}
	}
	e.t.Fatal("no free subnet found")
	return Network{}
}

// onlyDefaultRoute tells whether nothing but the default route covers p.
func onlyDefaultRoute(p netip.Prefix) bool {
	out, err := exec.Command("ip", "-4", "route", "show", "match", p.String()).Output()
	if err != nil {
		return false
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.HasPrefix(l, "default") {
			return false
		}
	}
	return true
}

func hostAddr(n Network, host byte) netip.Prefix {
	a := n.Subnet.Addr().As4()
	a[3] = host
	return netip.PrefixFrom(netip.AddrFrom4(a), n.Subnet.Bits())
}

func (e *testEnv) endpoint(n Network, host byte) *Endpoint {
	e.t.Helper()
	ep := &Endpoint{
		DockerEndpointID: fmt.Sprintf("%s-%d-%d-%s", e.suffix, n.Index, host, randHex(e.t, 4)),
		DockerNetworkID:  fmt.Sprintf("net%d", n.Index),
		IPv4:             hostAddr(n, host),
		Network:          n,
		Identity:         256 + uint32(host),
		Labels:           map[string]string{"id": fmt.Sprintf("app%d", host)},
	}
	if err := e.dp.CreateEndpoint(ep); err != nil {
		e.t.Fatalf("CreateEndpoint: %v", err)
	}
	e.links = append(e.links, ep.IfName)
	return ep
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// container does what Docker does after Join: move the peer into the
// sandbox, rename it eth0, address it and route via the gateway.
func (e *testEnv) container(ep *Endpoint) string {
	e.t.Helper()
	ns := fmt.Sprintf("ebt-%s-%d", e.suffix, ep.ID)
	run(e.t, "ip", "netns", "add", ns)
	e.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run(e.t, "ip", "link", "set", ep.PeerName, "netns", ns)
	run(e.t, "ip", "-n", ns, "link", "set", ep.PeerName, "name", "eth0")
	run(e.t, "ip", "-n", ns, "addr", "add", ep.IPv4.String(), "dev", "eth0")
	run(e.t, "ip", "-n", ns, "link", "set", "lo", "up")
	run(e.t, "ip", "-n", ns, "link", "set", "eth0", "up")
	run(e.t, "ip", "-n", ns, "route", "add", "default", "via", ep.Network.Gateway.String())
	return ns
}

// ping sends one echo request from ns ("" for the host) and reports
// whether it was answered.
func ping(ns string, dst netip.Addr, extra ...string) bool {
	args := []string{"busybox", "ping", "-c1", "-W1"}
	args = append(args, extra...)
	args = append(args, dst.String())
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	return exec.Command(args[0], args[1:]...).Run() == nil
}

// tcpConnect listens in serverNS and connects from clientNS, exchanging a
// few bytes.
func tcpConnect(t *testing.T, serverNS string, server netip.Addr, clientNS string) error {
	var ln net.Listener
	if err := testutil.InNetns(serverNS, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(server, 8080).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte("hello"))
	}()
	return testutil.InNetns(clientNS, func() error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(server, 8080).String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
			return fmt.Errorf("read %q: %v", buf, err)
		}
		return nil
	})
}

func (e *testEnv) metric(r Reason, dir policy.Direction) uint64 {
	e.t.Helper()
	m, err := e.dp.Metrics()
	if err != nil {
		e.t.Fatal(err)
	}
	return m[MetricKey{Reason: r, Dir: dir}].Packets
}

func TestDatapathLocalDelivery(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 10), e.endpoint(n, 11)
	nsA, nsB := e.container(a), e.container(b)

	if !ping(nsA, n.Gateway) {
		t.Fatal("container -> gateway: no reply")
	}
	neigh := run(t, "ip", "-n", nsA, "neigh", "show", n.Gateway.String())
	if !strings.Contains(neigh, a.NodeMAC.String()) {
		t.Errorf("gateway neighbour in container is %q, want NodeMAC %s", neigh, a.NodeMAC)
	}
	if e.metric(ReasonARPReply, policy.Egress) == 0 {
		t.Error("no ARP reply counted")
	}

	// Local delivery is counted where it happens: in
	// node_policy_verdict after the receiver's ingress check on a flow's
	// first packet, and in node_from_container for the rest; both
	// redirect into the peer.
	fwd := e.metric(ReasonForwarded, policy.Ingress)
	// The host's IPv6 chatter on a new link (DAD, MLD, router
	// solicitations) would count below; it has nothing to do with this.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+b.IfName+"/disable_ipv6", []byte("1"), 0o644); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	txBefore := hostTxPackets(t, b.IfName)
	if !ping(nsA, b.IPv4.Addr()) {
		t.Fatal("container -> container: no reply")
	}
	if err := tcpConnect(t, nsB, b.IPv4.Addr(), nsA); err != nil {
		t.Fatalf("container -> container TCP: %v", err)
	}
	if got := e.metric(ReasonForwarded, policy.Ingress); got < fwd+4 {
		t.Errorf("forwarded by redirect: %d -> %d, want at least 4 more", fwd, got)
	}
	// A peer of the same network is answered with its own MAC, so local
	// delivery writes nothing into the packet.
	if neigh := run(t, "ip", "-n", nsA, "neigh", "show", b.IPv4.Addr().String()); !strings.Contains(neigh, b.LXCMAC.String()) {
		t.Errorf("peer neighbour in container is %q, want the peer's MAC %s", neigh, b.LXCMAC)
	}
	// A stale entry (the address was reused by another endpoint) and a
	// peer MAC used for a non-endpoint address still get through.
	run(t, "ip", "-n", nsA, "neigh", "replace", b.IPv4.Addr().String(), "lladdr", "02:00:00:00:00:99", "dev", "eth0", "nud", "permanent")
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("container -> container with a stale neighbour entry: no reply")
	}
	run(t, "ip", "-n", nsA, "neigh", "replace", n.Gateway.String(), "lladdr", b.LXCMAC.String(), "dev", "eth0", "nud", "permanent")
	if !ping(nsA, n.Gateway) {
		t.Error("container -> gateway with a stale neighbour entry: no reply")
	}
	run(t, "ip", "-n", nsA, "neigh", "del", b.IPv4.Addr().String(), "dev", "eth0")
	run(t, "ip", "-n", nsA, "neigh", "del", n.Gateway.String(), "dev", "eth0")

	// The redirect bypasses the host stack: the receiver's host veth must
	// not have sent the ping and the TCP exchange (at least 6 packets).
	// Leave room for a stray packet or two of the host's own.
	if tx := hostTxPackets(t, b.IfName) - txBefore; tx >= 3 {
		t.Errorf("host veth of the receiver transmitted %d packets during the exchange; local delivery went through the stack", tx)
	}
	if !ping("", a.IPv4.Addr()) {
		t.Error("host -> container: no reply")
	}
	if e.metric(ReasonToStack, policy.Ingress) == 0 {
		t.Error("to_container counted nothing")
	}
}

func TestDatapathDropsSpoofing(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 20), e.endpoint(n, 21)
	nsA, _ := e.container(a), e.container(b)
	if !ping(nsA, b.IPv4.Addr()) {
		t.Fatal("baseline ping failed")
	}

	spoofed := hostAddr(n, 99)
	run(t, "ip", "-n", nsA, "addr", "add", spoofed.String(), "dev", "eth0")
	sip := e.metric(DropInvalidSIP, policy.Egress)
	if ping(nsA, b.IPv4.Addr(), "-I", spoofed.Addr().String()) {
		t.Error("ping from a spoofed source IP was answered")
	}
	if e.metric(DropInvalidSIP, policy.Egress) == sip {
		t.Error("no DROP_INVALID_SIP counted")
	}
	run(t, "ip", "-n", nsA, "addr", "del", spoofed.String(), "dev", "eth0")

	run(t, "ip", "-n", nsA, "link", "set", "eth0", "address", "02:00:00:00:00:99")
	smac := e.metric(DropInvalidSMAC, policy.Egress)
	if ping(nsA, b.IPv4.Addr()) {
		t.Error("ping from a spoofed source MAC was answered")
	}
	if e.metric(DropInvalidSMAC, policy.Egress) == smac {
		t.Error("no DROP_INVALID_SMAC counted")
	}
}

func TestDatapathIsolatesNetworks(t *testing.T) {
	e := newTestEnv(t)
	n1, n2 := e.network(1), e.network(2)
	a, b := e.endpoint(n1, 30), e.endpoint(n2, 31)
	nsA, nsB := e.container(a), e.container(b)
	if !ping(nsA, n1.Gateway) || !ping(nsB, n2.Gateway) {
		t.Fatal("containers cannot reach their gateways")
	}
	before := e.metric(DropNotSameNetwork, policy.Egress)
	if ping(nsA, b.IPv4.Addr()) {
		t.Error("container reached a container of another network")
	}
	if e.metric(DropNotSameNetwork, policy.Egress) == before {
		t.Error("no DROP_NOT_SAME_NETWORK counted")
	}
	// The unused addresses of a network are unreachable, not routed away.
	out, _ := exec.Command("ip", "route", "get", hostAddr(n1, 200).Addr().String()).CombinedOutput()
	if !strings.Contains(string(out), "No route to host") && !strings.Contains(string(out), "unreachable") {
		t.Errorf("unused address routes as %q", out)
	}
}

// hostTxPackets reads how many packets the host stack sent out of a host
// veth (bpf_redirect_peer does not count there).
func hostTxPackets(t *testing.T, ifname string) uint64 {
	t.Helper()
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics.TxPackets
}

// setPolicy does what the policy engine does: enforcement flags and allow
// entries, added to what the endpoint's map already holds.
func (e *testEnv) setPolicy(ep *Endpoint, flags uint32, allow ...policy.Key) {
	e.t.Helper()
	held, err := e.dp.PolicyEntries(ep.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	p := policy.EndpointPolicy{
		IngressEnforced: flags&FlagEnforceIngress != 0,
		EgressEnforced:  flags&FlagEnforceEgress != 0,
		Audit:           flags&FlagAudit != 0,
		Entries:         keys(append(held, allow...)...),
	}
	if _, _, err := e.dp.ApplyPolicy(ep.ID, p); err != nil {
		e.t.Fatal(err)
	}
}

func TestDatapathPolicy(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b, c := e.endpoint(n, 60), e.endpoint(n, 61), e.endpoint(n, 62)
	nsA, nsB, nsC := e.container(a), e.container(b), e.container(c)
	for _, ns := range []string{nsA, nsB, nsC} {
		if !ping(ns, n.Gateway) {
			t.Fatal("container -> gateway: no reply")
		}
	}

	// b accepts ICMP from a only: the receiver's ingress check, with its
	// handle_policy, sees the sender's identity.
	e.setPolicy(b, FlagEnforceIngress, policy.Key{Identity: a.Identity, Proto: 1, Direction: policy.Ingress})
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("allowed a -> b denied")
	}
	denied := e.metric(DropPolicy, policy.Ingress)
	if ping(nsC, b.IPv4.Addr()) {
		t.Error("c -> b passed b's ingress policy")
	}
	if e.metric(DropPolicy, policy.Ingress) == denied {
		t.Error("no ingress DROP_POLICY counted")
	}

	// a may send to c only; replies of the allowed flow are a's ingress,
	// which a does not enforce.
	e.setPolicy(a, FlagEnforceEgress, policy.Key{Identity: c.Identity, Direction: policy.Egress})
	if !ping(nsA, c.IPv4.Addr()) {
		t.Error("allowed a -> c denied")
	}
	denied = e.metric(DropPolicy, policy.Egress)
	if ping(nsA, b.IPv4.Addr()) {
		t.Error("a -> b passed a's egress policy")
	}
	if e.metric(DropPolicy, policy.Egress) == denied {
		t.Error("no egress DROP_POLICY counted")
	}

	// Flags clear: the entries stay but are not consulted.
	e.setPolicy(a, 0)
	e.setPolicy(b, 0)
	if !ping(nsC, b.IPv4.Addr()) || !ping(nsA, b.IPv4.Addr()) {
		t.Error("policy enforced with flags clear")
	}

	// A receiver that enforces ingress but has no policy lookup in the
	// array cannot be checked, so nothing reaches it (the packet is in
	// its ingress check when it is dropped).
	e.setPolicy(b, FlagEnforceIngress, policy.Key{Identity: a.Identity, Proto: 1, Direction: policy.Ingress})
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("allowed a -> b denied")
	}
	if err := e.dp.shared[PolicyLookupsName].Delete(uint32(b.ID)); err != nil {
		t.Fatal(err)
	}
	missed := e.metric(DropMissedTailCall, policy.Ingress)
	if ping(nsA, b.IPv4.Addr()) {
		t.Error("delivered to an endpoint without handle_policy")
	}
	if e.metric(DropMissedTailCall, policy.Ingress) == missed {
		t.Error("no DROP_MISSED_TAIL_CALL counted")
	}
}

// TestDatapathCreateFailureAfterAttachLeavesNothing: a failure at the last
// step, with the programs loaded and attached (publication, here into a
// full ebpfnet_endpoints map), undoes all of it: the policy lookup's array
// entry, the pin, the veth with its filters, the route and the state
// directory. The same endpoint is created once there is room again.
func TestDatapathCreateFailureAfterAttachLeavesNothing(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	// 198.18.0.0/16: the benchmark range, never an endpoint of n.
	const entries = 65536 // ENDPOINTS_MAX, bpf/lib/maps.h
	m := e.dp.shared[EndpointsMapName]
	if m.MaxEntries() != entries {
		t.Fatalf("%s holds %d entries, the test fills %d", EndpointsMapName, m.MaxEntries(), entries)
	}
	keys := make([][4]byte, entries)
	vals := make([]endpointInfo, entries)
	for i := range keys {
		keys[i] = [4]byte{198, 18, byte(i >> 8), byte(i)}
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatalf("fill %s: %v", EndpointsMapName, err)
	}
	emptied := false
	empty := func() {
		if !emptied {
			emptied = true
			if _, err := m.BatchDelete(keys, nil); err != nil {
				t.Errorf("empty %s: %v", EndpointsMapName, err)
			}
		}
	}
	t.Cleanup(empty)

	ep := &Endpoint{DockerEndpointID: "full-" + e.suffix, IPv4: hostAddr(n, 41), Network: n}
	err := e.dp.CreateEndpoint(ep)
	// Should the rollback regress, its veth goes at cleanup all the same
	// (assertGone still reports it).
	e.links = append(e.links, ep.IfName)
	if err == nil || !strings.Contains(err.Error(), EndpointsMapName) {
		t.Fatalf("CreateEndpoint with a full %s: %v", EndpointsMapName, err)
	}
	if ep.ID == 0 || ep.IfName == "" {
		t.Fatalf("creation failed before the veth: %+v", ep)
	}
	assertGone(t, e, ep)
	if len(e.dp.Endpoints()) != 0 {
		t.Error("failed endpoint is listed")
	}

	empty()
	again := &Endpoint{DockerEndpointID: ep.DockerEndpointID, IPv4: ep.IPv4, Network: n}
	if err := e.dp.CreateEndpoint(again); err != nil {
		t.Fatalf("create again: %v", err)
	}
	e.links = append(e.links, again.IfName)
	if again.ID != ep.ID {
		t.Errorf("epid %d was not reused (got %d)", ep.ID, again.ID)
	}
}

func TestDatapathCreateFailureLeavesNothing(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	ep := &Endpoint{DockerEndpointID: "collide-" + e.suffix, IPv4: hostAddr(n, 40), Network: n}
	// A device already holding the host veth's name makes creation fail
	// after the record is written.
	la := netlink.NewLinkAttrs()
	la.Name = HostIfName(ep.DockerEndpointID)
	if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: la}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteLinkByName(la.Name) })
	err := e.dp.CreateEndpoint(ep)
	// Should creation or its rollback regress, the veth goes at cleanup
	// all the same.
	e.links = append(e.links, ep.IfName)
	if err == nil {
		t.Fatal("CreateEndpoint succeeded despite the name collision")
	}
	if _, err := os.Stat(e.dp.epDir(ep.ID)); !os.IsNotExist(err) {
		t.Errorf("state directory left behind: %v", err)
	}
	if _, err := os.Stat(e.dp.policyPin(ep.ID)); !os.IsNotExist(err) {
		t.Errorf("policy pin left behind: %v", err)
	}
	var prog uint32
	if err := e.dp.shared[PolicyLookupsName].Lookup(uint32(ep.ID), &prog); err == nil {
		t.Errorf("%s still holds endpoint %d", PolicyLookupsName, ep.ID)
	}
	if len(e.dp.Endpoints()) != 0 {
		t.Error("failed endpoint is listed")
	}
}

func TestDatapathDeleteAndRestore(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 50), e.endpoint(n, 51)
	gone := e.endpoint(n, 52)
	nsA, _ := e.container(a), e.container(b)
	if !ping(nsA, b.IPv4.Addr()) {
		t.Fatal("baseline ping failed")
	}

	// Traffic runs across the whole restart.
	flow := exec.Command("ip", "netns", "exec", nsA, "busybox", "ping", "-c", "30", "-i", "0.1", "-W", "2", b.IPv4.Addr().String())
	var flowOut strings.Builder
	flow.Stdout, flow.Stderr = &flowOut, &flowOut
	if err := flow.Start(); err != nil {
		t.Fatal(err)
	}

	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	// What a crash may leave: a veth gone behind our back, a missing
	// filter, a lost object file, a record without IfIndex, and a
	// half-created endpoint with only a directory and a pin.
	run(t, "ip", "link", "del", gone.IfName)
	run(t, "tc", "filter", "del", "dev", a.IfName, "egress", "pref", "1", "handle", "0xeb", "bpf")
	if _, eg, err := tcPrograms(a.IfIndex); err != nil || eg != 0 {
		t.Fatalf("egress filter of %s still there (%d, %v)", a.IfName, eg, err)
	}
	if err := os.Remove(filepath.Join(e.dp.epDir(b.ID), ObjectFile)); err != nil {
		t.Fatal(err)
	}
	noIndex := *b
	noIndex.IfIndex = 0
	hdr, err := WriteEPConfig(e.cfg.Version, &noIndex)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dp.epDir(b.ID), EPConfigFile), hdr, 0o644); err != nil {
		t.Fatal(err)
	}
	orphanPin := filepath.Join(e.cfg.PinDir, PolicyMapName(78))
	half := filepath.Join(e.cfg.StateDir, "77")
	if err := os.Mkdir(half, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(half, ".ep_config.h.tmp-1"), []byte("torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	orphan, err := ebpf.NewMap(e.dp.policy)
	if err != nil {
		t.Fatal(err)
	}
	if err := orphan.Pin(orphanPin); err != nil {
		t.Fatal(err)
	}
	_ = orphan.Close()

	e.dp = e.open()
	records, err := e.dp.Records()
	if err != nil {
		t.Fatalf("Records: %v", err)
	}
	restored, err := e.dp.Restore()
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if len(restored) != 2 || restored[0].ID != a.ID || restored[1].ID != b.ID {
		t.Fatalf("restored %+v, want endpoints %d and %d", restored, a.ID, b.ID)
	}
	// Records, read before, names what Restore re-adopts and nothing else.
	if len(records) != 2 || records[0].ID != a.ID || records[1].ID != b.ID ||
		records[0].IPv4 != a.IPv4 || records[1].Network != b.Network || records[0].DockerNetworkID != a.DockerNetworkID {
		t.Fatalf("records %+v, want endpoints %d and %d as created", records, a.ID, b.ID)
	}
	if restored[0].IfIndex != a.IfIndex || restored[0].DockerEndpointID != a.DockerEndpointID {
		t.Errorf("restored endpoint differs: %+v", restored[0])
	}
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Errorf("half-created directory survived: %v", err)
	}
	assertGone(t, e, gone)
	for _, ep := range []*Endpoint{a, b} {
		in, eg, err := tcPrograms(ep.IfIndex)
		if err != nil || in == 0 || eg == 0 {
			t.Errorf("filters of %s after restore: ingress %d, egress %d, %v", ep.IfName, in, eg, err)
		}
	}
	if _, err := os.Stat(filepath.Join(e.dp.epDir(b.ID), ObjectFile)); err != nil {
		t.Errorf("lost object not rewritten: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(e.dp.epDir(b.ID), EPConfigFile)); err != nil {
		t.Error(err)
	} else if _, rec, err := ParseEPConfig(data); err != nil || rec.IfIndex != b.IfIndex {
		t.Errorf("record of %d after restore has IfIndex %d (%v), want %d", b.ID, rec.IfIndex, err, b.IfIndex)
	}
	if _, err := os.Stat(orphanPin); !os.IsNotExist(err) {
		t.Errorf("orphan policy pin survived: %v", err)
	}

	if err := flow.Wait(); err != nil {
		t.Errorf("ping across restart: %v\n%s", err, flowOut.String())
	}
	if !strings.Contains(flowOut.String(), " 0% packet loss") {
		t.Errorf("packets lost across restart:\n%s", flowOut.String())
	}
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("no traffic after restore")
	}

	if err := e.dp.DeleteEndpoint(a.DockerEndpointID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, e, a)
	if err := e.dp.DeleteEndpoint(a.DockerEndpointID); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if _, ok := e.dp.Endpoint(a.DockerEndpointID); ok {
		t.Error("deleted endpoint still listed")
	}
	if got, ok := e.dp.EndpointByID(b.ID); !ok || got.DockerEndpointID != b.DockerEndpointID {
		t.Error("other endpoint lost")
	}
}

// assertGone checks that nothing of ep is left on the host: at once what
// could clash with a successor on its address, after the background
// deletion (DeleteEndpoint) its veth and state directory.
func assertGone(t *testing.T, e *testEnv, ep *Endpoint) {
	t.Helper()
	if out := run(t, "ip", "route", "show", ep.IPv4.Addr().String()+"/32"); strings.TrimSpace(out) != "" {
		t.Errorf("route left: %s", out)
	}
	if _, err := os.Stat(e.dp.policyPin(ep.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind: %v", e.dp.policyPin(ep.ID), err)
	}
	e.dp.delWG.Wait()
	if _, err := netlink.LinkByName(ep.IfName); err == nil {
		t.Errorf("veth %s still exists", ep.IfName)
	}
	if _, err := os.Stat(e.dp.epDir(ep.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind: %v", e.dp.epDir(ep.ID), err)
	}
	// Only node-wide pins remain: no name carries the epid.
	pins, _ := os.ReadDir(e.cfg.PinDir)
	for _, p := range pins {
		if strings.HasSuffix(p.Name(), fmt.Sprintf("%05d", ep.ID)) {
			t.Errorf("pin %s left behind", p.Name())
		}
	}
	var prog uint32
	if err := e.dp.shared[PolicyLookupsName].Lookup(uint32(ep.ID), &prog); err == nil {
		t.Errorf("%s still holds endpoint %d", PolicyLookupsName, ep.ID)
	}
	var info endpointInfo
	if err := e.dp.shared[EndpointsMapName].Lookup(endpointKey(ep.IPv4.Addr()), &info); err == nil {
		t.Errorf("endpoints map still holds %v", ep.IPv4.Addr())
	}
}

// TestDatapathAddressReusedRightAfterDelete: an address released by
// DeleteEndpoint (its veth still being deleted in the background) serves a
// new endpoint at once, and the old veth's programs do not pass for it.
func TestDatapathAddressReusedRightAfterDelete(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 70), e.endpoint(n, 71)
	nsA, nsB := e.container(a), e.container(b)
	// The old container's namespace lives on: its veth is the one being
	// deleted in the background.
	if !ping(nsA, b.IPv4.Addr()) {
		t.Fatal("baseline ping failed")
	}
	oldFrom := e.fromContainer(a)
	if err := e.dp.DeleteEndpoint(a.DockerEndpointID); err != nil {
		t.Fatal(err)
	}
	c := e.endpoint(n, 70)
	if c.ID == a.ID {
		t.Errorf("epid %d reused while its veth may still exist", a.ID)
	}
	// a's program, as it may still run on its veth, does not take c's
	// identity and flags: its new flows meet a's (empty) policy as init.
	syn := tcpPacket(a.LXCMAC, b.LXCMAC, a.IPv4.Addr(), b.IPv4.Addr(), 42000, 80, 0x02)
	if ret, err := oldFrom.Run(&ebpf.RunOptions{Data: syn}); err != nil || ret != tcActShot {
		t.Errorf("old endpoint's program on a new flow: verdict %d, %v; want a drop", ret, err)
	}
	nsC := e.container(c)
	if !ping(nsC, b.IPv4.Addr()) || !ping(nsB, c.IPv4.Addr()) || !ping("", c.IPv4.Addr()) {
		t.Error("the successor on the released address is not reachable")
	}
	e.dp.delWG.Wait()
	if _, err := netlink.LinkByName(a.IfName); err == nil {
		t.Errorf("veth %s still exists", a.IfName)
	}
	if _, err := os.Stat(e.dp.epDir(a.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state of endpoint %d left behind: %v", a.ID, err)
	}
}

// TestDatapathRestoreFinishesDeletion: a daemon killed after DeleteEndpoint
// marked the endpoint (tombstone written, veth not yet deleted) does not
// re-adopt it at restart, it deletes it.
func TestDatapathRestoreFinishesDeletion(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 80), e.endpoint(n, 81)
	if err := os.WriteFile(filepath.Join(e.dp.epDir(a.ID), deletingFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	e.dp = e.open()
	if records, err := e.dp.Records(); err != nil || len(records) != 1 || records[0].ID != b.ID {
		t.Errorf("records %+v (%v), want only endpoint %d", records, err, b.ID)
	}
	restored, err := e.dp.Restore()
	if err != nil {
		t.Fatal(err)
	}
	if len(restored) != 1 || restored[0].ID != b.ID {
		t.Errorf("restored %+v, want only endpoint %d", restored, b.ID)
	}
	assertGone(t, e, a)
}

// TestDatapathRestoreRecreatesPolicyMap: an endpoint whose policy pin is
// lost, or holds a map of another shape, is restored with a fresh, empty
// map of the template's shape under its pin.
func TestDatapathRestoreRecreatesPolicyMap(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	lost, other := e.endpoint(n, 90), e.endpoint(n, 91)
	e.setPolicy(other, FlagEnforceIngress, policy.Key{Identity: lost.Identity, Direction: policy.Ingress})
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.dp.policyPin(lost.ID)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.dp.policyPin(other.ID)); err != nil {
		t.Fatal(err)
	}
	wrong, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := wrong.Pin(e.dp.policyPin(other.ID)); err != nil {
		t.Fatal(err)
	}
	_ = wrong.Close()

	e.dp = e.open()
	restored, err := e.dp.Restore()
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if len(restored) != 2 {
		t.Fatalf("restored %+v, want both endpoints", restored)
	}
	for _, ep := range []*Endpoint{lost, other} {
		m, err := ebpf.LoadPinnedMap(e.dp.policyPin(ep.ID), nil)
		if err != nil {
			t.Errorf("policy pin of %d after restore: %v", ep.ID, err)
			continue
		}
		if err := e.dp.policy.Compatible(m); err != nil {
			t.Errorf("policy map of %d after restore: %v", ep.ID, err)
		}
		_ = m.Close()
		if held, err := e.dp.PolicyEntries(ep.ID); err != nil || len(held) != 0 {
			t.Errorf("policy entries of %d after restore: %v, %v; want none", ep.ID, held, err)
		}
	}
}

// TestDatapathFailedRestoreKeepsPins: an endpoint that fails to restore
// keeps its state directory, and with it its policy pin and its
// ebpfnet_policy_lookups entry, which the programs still on its veth use; the
// pins of the others are no orphans either.
func TestDatapathFailedRestoreKeepsPins(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 100), e.endpoint(n, 101)
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	// An object file that cannot be rewritten fails b's restore.
	obj := filepath.Join(e.dp.epDir(b.ID), ObjectFile)
	if err := os.Remove(obj); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(obj, 0o755); err != nil {
		t.Fatal(err)
	}
	e.dp = e.open()
	restored, err := e.dp.Restore()
	if err == nil {
		t.Fatal("Restore succeeded with an object file that is a directory")
	}
	if len(restored) != 1 || restored[0].ID != a.ID {
		t.Fatalf("restored %+v, want only endpoint %d", restored, a.ID)
	}
	for _, ep := range []*Endpoint{a, b} {
		if _, err := os.Stat(e.dp.policyPin(ep.ID)); err != nil {
			t.Errorf("policy pin of endpoint %d: %v", ep.ID, err)
		}
		var prog uint32
		if err := e.dp.shared[PolicyLookupsName].Lookup(uint32(ep.ID), &prog); err != nil {
			t.Errorf("%s lost endpoint %d: %v", PolicyLookupsName, ep.ID, err)
		}
	}
}

// TestDatapathNodePrograms: an endpoint's entry programs hand every packet
// to the node programs. Without them (an empty ebpfnet_calls slot) nothing
// passes and the drop is counted; loading them again, as a daemon start
// does, replaces the slots under live endpoints.
func TestDatapathNodePrograms(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 110), e.endpoint(n, 111)
	nsA, _ := e.container(a), e.container(b)
	if !ping(nsA, b.IPv4.Addr()) {
		t.Fatal("a -> b: no reply")
	}
	calls := e.dp.shared[CallsMapName]
	for _, np := range nodePrograms() {
		if err := calls.Delete(np.slot); err != nil {
			t.Fatalf("delete %s: %v", np.name, err)
		}
	}
	missed := e.metric(DropMissedTailCall, policy.Egress)
	if ping(nsA, b.IPv4.Addr()) {
		t.Error("a -> b passed without the node programs")
	}
	if e.metric(DropMissedTailCall, policy.Egress) == missed {
		t.Error("no DROP_MISSED_TAIL_CALL counted by the entry program")
	}
	spec, err := nodeObjectSpec()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.dp.loadNodePrograms(spec); err != nil {
		t.Fatal(err)
	}
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("a -> b: no reply after the node programs were loaded again")
	}
}
