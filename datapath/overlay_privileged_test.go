package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/policy"
)

// The overlay against a bare kernel peer: the other node is a network
// namespace behind a veth (the underlay), with a plain Linux VXLAN device
// for the remote containers' addresses. What leaves this node must carry
// the sender's identity as its VNI; what arrives is judged by the VNI's.

// overlayEnv is a test datapath with the overlay on, an endpoint in a
// container, and the underlay to a peer namespace.
type overlayEnv struct {
	*testEnv
	net        Network
	a          *Endpoint
	aNS        string
	peerNS     string
	local      netip.Addr // this node's underlay address
	peer       netip.Addr // the peer node's
	peerDevice string     // the peer's underlay interface
}

func newOverlayEnv(t *testing.T) *overlayEnv { return newOverlayEnvOf(t, false) }

// newOverlayEnvOf is newOverlayEnv with, if v6, a dual-stack network and
// endpoint.
func newOverlayEnvOf(t *testing.T, v6 bool) *overlayEnv {
	t.Helper()
	port := 20000 + int(randByte(t))*30
	e := newTestEnv(t, func(c *Config) {
		c.Overlay = &OverlayConfig{Device: "ebv" + c.HostDevice[3:], Port: port, UplinkMTU: 1500}
	})
	t.Cleanup(func() {
		if err := RemoveOverlay(e.cfg.Overlay.Device); err != nil {
			t.Errorf("remove the overlay device: %v", err)
		}
	})
	o := &overlayEnv{testEnv: e}
	if v6 {
		o.net = e.network6(1, true)
		o.a = e.endpoint6(o.net, 2)
		o.aNS = e.container6(o.a)
	} else {
		o.net = e.network(1)
		o.a = e.endpoint(o.net, 2)
		o.aNS = e.container(o.a)
	}

	// The underlay: a /30 of the benchmark range that no route covers.
	var under netip.Prefix
	for i := 0; i < 50; i++ {
		under = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, randByte(t), randByte(t) &^ 3}), 30)
		if onlyDefaultRoute(under) {
			break
		}
	}
	o.local, o.peer = under.Addr().Next(), under.Addr().Next().Next()
	o.peerNS = "ebt-" + e.suffix + "-peer"
	hostSide := "ebu" + e.suffix
	o.peerDevice = "eth0"
	run(t, "ip", "netns", "add", o.peerNS)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", o.peerNS).Run()
		_ = exec.Command("ip", "link", "del", hostSide).Run()
	})
	run(t, "ip", "link", "add", hostSide, "type", "veth", "peer", "name", o.peerDevice, "netns", o.peerNS)
	run(t, "ip", "addr", "add", netip.PrefixFrom(o.local, 30).String(), "dev", hostSide)
	run(t, "ip", "link", "set", hostSide, "up")
	run(t, "ip", "-n", o.peerNS, "addr", "add", netip.PrefixFrom(o.peer, 30).String(), "dev", o.peerDevice)
	run(t, "ip", "-n", o.peerNS, "link", "set", o.peerDevice, "up")
	run(t, "ip", "-n", o.peerNS, "link", "set", "lo", "up")
	return o
}

func randByte(t testing.TB) byte {
	var b [1]byte
	if _, err := fmt.Sscanf(randHex(t, 1), "%02x", &b[0]); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

// remoteAddr is an address of the network that lives on the peer node.
func (o *overlayEnv) remoteAddr(host byte) netip.Addr { return hostAddr(o.net, host).Addr() }

// peerVXLAN makes the peer's VXLAN device: with vni 0 in external mode
// (it takes any VNI), else with that one VNI only. It answers to the MAC
// our endpoint's packets carry (its node MAC, the ARP answer for every
// address but a local peer's), as the receiving datapath would rewrite it.
func (o *overlayEnv) peerVXLAN(vni uint32) {
	o.t.Helper()
	args := []string{"ip", "-n", o.peerNS, "link", "add", "vx0", "type", "vxlan", "dstport", fmt.Sprint(o.cfg.Overlay.Port)}
	if vni == 0 {
		args = append(args, "external")
	} else {
		args = append(args, "id", fmt.Sprint(vni), "remote", o.local.String(), "local", o.peer.String(), "dev", o.peerDevice)
	}
	run(o.t, args...)
	run(o.t, "ip", "-n", o.peerNS, "link", "set", "vx0", "address", net.HardwareAddr(o.a.NodeMAC).String(), "mtu", "1450", "up")
	run(o.t, "ip", "-n", o.peerNS, "neigh", "replace", o.a.IPv4.Addr().String(), "lladdr",
		net.HardwareAddr(o.a.LXCMAC).String(), "dev", "vx0", "nud", "permanent")
	if o.a.IPv6.IsValid() {
		run(o.t, "ip", "-n", o.peerNS, "neigh", "replace", o.a.IPv6.Addr().String(), "lladdr",
			net.HardwareAddr(o.a.LXCMAC).String(), "dev", "vx0", "nud", "permanent")
	}
}

// remote tells this node that addr is an endpoint of the peer node with
// identity id, as the cluster's ipcache would.
func (o *overlayEnv) remote(addr netip.Addr, id identity.ID) {
	o.t.Helper()
	if err := o.dp.PutIPCache(netip.PrefixFrom(addr, addr.BitLen()), IPCacheEntry{Identity: id, TunnelEndpoint: o.peer}); err != nil {
		o.t.Fatal(err)
	}
}

// A container reaches a peer node's address, and the peer answers, over
// the overlay; the peer's device takes only the VNI of the sender's
// identity, so the answer proves the VNI.
func TestOverlayCarriesTheSendersIdentity(t *testing.T) {
	o := newOverlayEnv(t)
	r := o.remoteAddr(200)
	o.peerVXLAN(o.a.Identity)
	run(t, "ip", "-n", o.peerNS, "addr", "add", netip.PrefixFrom(r, o.net.Subnet.Bits()).String(), "dev", "vx0")
	o.remote(r, 777)

	sent := o.metric(ReasonToOverlay, policy.Egress)
	if !ping(o.aNS, r) {
		t.Fatal("a -> the peer node's address over the overlay: no answer")
	}
	if o.metric(ReasonToOverlay, policy.Egress) <= sent {
		t.Error("the echo request was not counted as sent to the overlay")
	}
	if !ping(o.peerNS, o.a.IPv4.Addr()) {
		t.Error("the peer node's address -> a: no answer")
	}
	// A peer whose device expects another VNI gets nothing: the VNI is
	// the identity, not a constant.
	if err := o.dp.SetEndpointIdentity(o.a.ID, o.a.Identity+1, "", "", nil); err != nil {
		t.Fatal(err)
	}
	if ping(o.aNS, r, "-p", "ab") {
		t.Error("the peer answered a VNI it does not take: the VNI is not the sender's identity")
	}
}

// What arrives from another node meets the receiver's ingress policy with
// the identity in its VNI, and the monitor names it.
func TestOverlayIngressPolicyByVNI(t *testing.T) {
	o := newOverlayEnv(t)
	evs := o.events()
	r := o.remoteAddr(200)
	const peerIdentity = 777
	o.peerVXLAN(0)
	run(t, "ip", "-n", o.peerNS, "addr", "add", r.String()+"/32", "dev", "vx0")
	run(t, "ip", "-n", o.peerNS, "route", "add", o.a.IPv4.Addr().String()+"/32", "dev", "vx0", "src", r.String(),
		"encap", "ip", "id", fmt.Sprint(peerIdentity), "dst", o.local.String())
	o.remote(r, peerIdentity)

	if !ping(o.peerNS, o.a.IPv4.Addr()) {
		t.Fatal("peer -> a without policy: no answer")
	}
	o.setPolicy(o.a, FlagEnforceIngress)
	if ping(o.peerNS, o.a.IPv4.Addr(), "-s", "64") {
		t.Fatal("peer -> a passed a's ingress policy, which allows nothing")
	}
	if _, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventPolicyVerdict && ev.Verdict == VerdictDenied && ev.EndpointID == o.a.ID &&
			ev.SrcIdentity == peerIdentity && ev.Src == r && ev.Direction == policy.Ingress
	}); !ok {
		t.Error("no denied verdict naming the peer's identity from the VNI")
	}
	o.setPolicy(o.a, FlagEnforceIngress, policy.Key{Identity: peerIdentity, Direction: policy.Ingress})
	if !ping(o.peerNS, o.a.IPv4.Addr(), "-s", "65") {
		t.Error("peer -> a denied with the VNI's identity allowed")
	}
}

// Between nodes, traffic stays within a network: the peer's source must be
// in the receiver's subnet, and a packet for no local endpoint goes nowhere.
func TestOverlayStaysWithinTheNetwork(t *testing.T) {
	o := newOverlayEnv(t)
	outside := netip.MustParseAddr("198.51.100.77")
	missing := o.remoteAddr(250)
	o.peerVXLAN(0)
	run(t, "ip", "-n", o.peerNS, "addr", "add", outside.String()+"/32", "dev", "vx0")
	for _, dst := range []netip.Addr{o.a.IPv4.Addr(), missing} {
		run(t, "ip", "-n", o.peerNS, "route", "add", dst.String()+"/32", "dev", "vx0", "src", outside.String(),
			"encap", "ip", "id", "777", "dst", o.local.String())
		run(t, "ip", "-n", o.peerNS, "neigh", "replace", dst.String(), "lladdr", "02:00:00:00:00:01", "dev", "vx0", "nud", "permanent")
	}
	before := o.metric(DropNotSameNetwork, policy.Ingress)
	if ping(o.peerNS, o.a.IPv4.Addr()) {
		t.Error("a source outside a's network reached a through the overlay")
	}
	if o.metric(DropNotSameNetwork, policy.Ingress) <= before {
		t.Error("the foreign source was not dropped as another network's")
	}
	before = o.metric(DropUnroutable, policy.Ingress)
	_ = ping(o.peerNS, missing)
	if o.metric(DropUnroutable, policy.Ingress) <= before {
		t.Error("a packet for no local endpoint was not dropped as unroutable")
	}
	// And a container does not send another network's address over the
	// overlay, even when the ipcache knows a node for it.
	o.remote(outside, 777)
	sent := o.metric(ReasonToOverlay, policy.Egress)
	_ = ping(o.aNS, outside)
	if o.metric(ReasonToOverlay, policy.Egress) != sent {
		t.Error("an address outside the container's subnet went to the overlay")
	}
}

// The device is made once and taken over by the next start; a daemon
// without a cluster removes it.
func TestOverlayDeviceLifecycle(t *testing.T) {
	o := newOverlayEnv(t)
	l, err := netlink.LinkByName(o.cfg.Overlay.Device)
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok || !vx.FlowBased || vx.Port != o.cfg.Overlay.Port || vx.MTU != 1450 {
		t.Fatalf("overlay device %+v", l)
	}
	filters := run(t, "tc", "filter", "show", "dev", o.cfg.Overlay.Device, "ingress")
	if !strings.Contains(filters, progFromOverlay) || !strings.Contains(filters, "direct-action") {
		t.Fatalf("overlay device ingress: %s", filters)
	}
	if err := o.dp.Close(); err != nil {
		t.Fatal(err)
	}
	o.dp = o.open()
	again, err := netlink.LinkByName(o.cfg.Overlay.Device)
	if err != nil || again.Attrs().Index != l.Attrs().Index {
		t.Fatalf("a restart replaced the overlay device: %v", err)
	}
	if err := RemoveOverlay(o.cfg.Overlay.Device); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(o.cfg.Overlay.Device); err == nil {
		t.Fatal("RemoveOverlay left the device")
	}
	if err := RemoveOverlay(o.cfg.Overlay.Device); err != nil {
		t.Fatalf("removing a missing device: %v", err)
	}
}

// IPv6 containers across nodes over the IPv4 underlay: the inner frame is
// IPv6, the VNI the sender's identity, and the receiver judges by it.
func TestOverlay6CarriesTheSendersIdentityAndIsJudgedByIt(t *testing.T) {
	o := newOverlayEnvOf(t, true)
	evs := o.events()
	r := hostAddr6(o.net, 200).Addr()
	o.peerVXLAN(o.a.Identity)
	run(t, "ip", "-n", o.peerNS, "addr", "add", netip.PrefixFrom(r, o.net.Subnet6.Bits()).String(), "dev", "vx0", "nodad")
	o.remote(r, 777)

	sent := o.metric(ReasonToOverlay, policy.Egress)
	if !ping(o.aNS, r) {
		t.Fatal("a -> the peer node's IPv6 address over the overlay: no answer")
	}
	if o.metric(ReasonToOverlay, policy.Egress) <= sent {
		t.Error("the IPv6 echo request was not counted as sent to the overlay")
	}
	if !ping(o.peerNS, o.a.IPv6.Addr()) {
		t.Error("the peer node's IPv6 address -> a: no answer")
	}
	// The peer's device takes one VNI: 777's traffic must carry it as
	// the source identity, which a's ingress policy sees.
	o.setPolicy(o.a, FlagEnforceIngress)
	if ping(o.peerNS, o.a.IPv6.Addr(), "-s", "64") {
		t.Fatal("peer -> a over IPv6 passed a's ingress policy, which allows nothing")
	}
	if _, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventPolicyVerdict && ev.Verdict == VerdictDenied && ev.EndpointID == o.a.ID &&
			ev.SrcIdentity == o.a.Identity && ev.Src == r && ev.Direction == policy.Ingress
	}); !ok {
		t.Error("no denied verdict naming the identity of the VNI and the peer's IPv6 address")
	}
	o.setPolicy(o.a, FlagEnforceIngress, policy.Key{Identity: o.a.Identity, Direction: policy.Ingress})
	if !ping(o.peerNS, o.a.IPv6.Addr(), "-s", "65") {
		t.Error("peer -> a over IPv6 denied with the VNI's identity allowed")
	}
	// A source outside a's IPv6 subnet does not cross.
	outside := netip.MustParseAddr("2001:db8:ffff::77")
	run(t, "ip", "-n", o.peerNS, "addr", "add", outside.String()+"/128", "dev", "vx0", "nodad")
	before := o.metric(DropNotSameNetwork, policy.Ingress)
	_ = ping(o.peerNS, o.a.IPv6.Addr(), "-I", outside.String())
	if o.metric(DropNotSameNetwork, policy.Ingress) <= before {
		t.Error("an IPv6 source outside a's network was not dropped as another network's")
	}
}
