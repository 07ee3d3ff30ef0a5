package datapath

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// network6 returns a dual-stack network: a fresh /24 (as network does) and
// a fresh ULA /64, neither covered by any route of the machine but the
// default. With v4 false it has IPv6 only.
func (e *testEnv) network6(index uint32, v4 bool) Network {
	e.t.Helper()
	var n Network
	for i := 0; i < 50 && !n.Subnet6.IsValid(); i++ {
		var a [16]byte
		_, _ = rand.Read(a[1:8])
		a[0] = 0xfd
		p := netip.PrefixFrom(netip.AddrFrom16(a), 64)
		if onlyDefaultRoute6(p) {
			n.Subnet6, n.Gateway6 = p, p.Addr().Next()
		}
	}
	if !n.Subnet6.IsValid() {
		e.t.Fatal("no free IPv6 subnet found")
	}
	for i := 0; v4 && i < 50 && !n.Subnet.IsValid(); i++ {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200 + b[0]%50, b[1], 0}), 24)
		if onlyDefaultRoute(p) {
			n.Subnet, n.Gateway = p, p.Addr().Next()
		}
	}
	if v4 && !n.Subnet.IsValid() {
		e.t.Fatal("no free IPv4 subnet found")
	}
	n.Index = index
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

// onlyDefaultRoute6 tells whether nothing but a default route covers p.
func onlyDefaultRoute6(p netip.Prefix) bool {
	out, err := exec.Command("ip", "-6", "route", "show", "match", p.String()).Output()
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

func hostAddr6(n Network, host byte) netip.Prefix {
	a := n.Subnet6.Addr().As16()
	a[15] = host
	return netip.PrefixFrom(netip.AddrFrom16(a), n.Subnet6.Bits())
}

// endpoint6 makes an endpoint with an address of each family n has.
func (e *testEnv) endpoint6(n Network, host byte) *Endpoint {
	e.t.Helper()
	ep := &Endpoint{
		DockerEndpointID: fmt.Sprintf("%s-%d-%d-%s", e.suffix, n.Index, host, randHex(e.t, 4)),
		DockerNetworkID:  fmt.Sprintf("net%d", n.Index),
		IPv6:             hostAddr6(n, host),
		Network:          n,
		Identity:         256 + uint32(host),
		Labels:           map[string]string{"id": fmt.Sprintf("app%d", host)},
	}
	if n.Subnet.IsValid() {
		ep.IPv4 = hostAddr(n, host)
	}
	if err := e.dp.CreateEndpoint(ep); err != nil {
		e.t.Fatalf("CreateEndpoint: %v", err)
	}
	e.links = append(e.links, ep.IfName)
	return ep
}

// container6 does what Docker does after Join for a dual-stack or an
// IPv6-only endpoint: its addresses (without duplicate address detection,
// as Docker adds them) and default routes through the gateways.
func (e *testEnv) container6(ep *Endpoint) string {
	e.t.Helper()
	ns := fmt.Sprintf("ebt-%s-%d", e.suffix, ep.ID)
	run(e.t, "ip", "netns", "add", ns)
	e.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run(e.t, "ip", "link", "set", ep.PeerName, "netns", ns)
	run(e.t, "ip", "-n", ns, "link", "set", ep.PeerName, "name", "eth0")
	run(e.t, "ip", "-n", ns, "link", "set", "lo", "up")
	run(e.t, "ip", "-n", ns, "link", "set", "eth0", "up")
	if ep.IPv4.IsValid() {
		run(e.t, "ip", "-n", ns, "addr", "add", ep.IPv4.String(), "dev", "eth0")
		run(e.t, "ip", "-n", ns, "route", "add", "default", "via", ep.Network.Gateway.String())
	}
	run(e.t, "ip", "-n", ns, "addr", "add", ep.IPv6.String(), "dev", "eth0", "nodad")
	run(e.t, "ip", "-n", ns, "-6", "route", "add", "default", "via", ep.Network.Gateway6.String(), "dev", "eth0")
	return ns
}

// dial6 connects to addr:port from ns over TCP and exchanges a few bytes
// with a server listen6 started.
func tcpConnect6(t *testing.T, serverNS string, server netip.Addr, clientNS string) error {
	var ln net.Listener
	if err := testutil.InNetns(serverNS, func() (err error) {
		ln, err = net.Listen("tcp6", netip.AddrPortFrom(server, 8080).String())
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
		c, err := net.DialTimeout("tcp6", netip.AddrPortFrom(server, 8080).String(), 2*time.Second)
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

// neighbour is what ns's neighbour table holds for addr on eth0.
func neighbour(t *testing.T, ns string, addr netip.Addr) string {
	t.Helper()
	return run(t, "ip", "-n", ns, "neigh", "show", addr.String(), "dev", "eth0")
}

// TestIPv6LocalDelivery: the program answers neighbour solicitations (the
// gateway at the node MAC, a peer at its own), containers reach the
// gateway, each other (by redirect, ICMPv6 and TCP) and the host reaches
// them, over IPv6, on a dual-stack network whose IPv4 keeps working.
func TestIPv6LocalDelivery(t *testing.T) {
	e := newTestEnv(t)
	n := e.network6(1, true)
	a, b := e.endpoint6(n, 10), e.endpoint6(n, 11)
	nsA, nsB := e.container6(a), e.container6(b)

	answered := e.metric(ReasonNDPReply, policy.Egress)
	if !ping(nsA, n.Gateway6) {
		t.Fatal("container -> IPv6 gateway: no reply")
	}
	if neigh := neighbour(t, nsA, n.Gateway6); !strings.Contains(neigh, a.NodeMAC.String()) || !strings.Contains(neigh, "router") {
		t.Errorf("IPv6 gateway neighbour in the container is %q, want the node MAC %s, a router", neigh, a.NodeMAC)
	}
	if e.metric(ReasonNDPReply, policy.Egress) == answered {
		t.Error("no NDP reply counted")
	}
	fwd := e.metric(ReasonForwarded, policy.Ingress)
	if !ping(nsA, b.IPv6.Addr()) {
		t.Fatal("container -> container over IPv6: no reply")
	}
	if err := tcpConnect6(t, nsB, b.IPv6.Addr(), nsA); err != nil {
		t.Fatalf("container -> container TCP over IPv6: %v", err)
	}
	if got := e.metric(ReasonForwarded, policy.Ingress); got < fwd+4 {
		t.Errorf("forwarded by redirect: %d -> %d, want at least 4 more", fwd, got)
	}
	if neigh := neighbour(t, nsA, b.IPv6.Addr()); !strings.Contains(neigh, b.LXCMAC.String()) || strings.Contains(neigh, "router") {
		t.Errorf("peer neighbour in the container is %q, want the peer's MAC %s, no router", neigh, b.LXCMAC)
	}
	if !ping("", a.IPv6.Addr()) {
		t.Error("host -> container over IPv6: no reply")
	}
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("container -> container over IPv4 on the dual-stack network: no reply")
	}
}

// TestIPv6NeighborDiscovery: the advertisements the program builds, byte
// by byte (checksum included), and the solicitations it must not answer.
func TestIPv6NeighborDiscovery(t *testing.T) {
	e := newTestEnv(t)
	n := e.network6(1, false)
	a, b := e.endpoint6(n, 10), e.endpoint6(n, 11)
	from := e.fromContainer(a)
	A := a.IPv6.Addr()
	ll := netip.MustParseAddr("fe80::1234")

	for _, c := range []struct {
		what        string
		src, target netip.Addr
		mac         HardwareAddr
		router      bool
	}{
		{"the gateway, from the container's address", A, n.Gateway6, a.NodeMAC, true},
		{"a peer, from the link-local address", ll, b.IPv6.Addr(), b.LXCMAC, false},
		{"an address of nobody", A, hostAddr6(n, 200).Addr(), a.NodeMAC, true},
	} {
		ret, out := runOut(t, c.what, from, neighborSolicit(a.LXCMAC, c.src, c.target, 255, a.LXCMAC))
		if ret != tcActRedirect {
			t.Errorf("%s: verdict %d, want the answer sent back (%d)", c.what, ret, tcActRedirect)
			continue
		}
		if len(out) != 14+40+32 {
			t.Errorf("%s: answer of %d bytes", c.what, len(out))
			continue
		}
		ip, icmp := out[14:54], out[54:]
		tgt := c.target.As16()
		want := map[string]bool{
			"to the container's MAC":   HardwareAddr(out[0:6]).String() == a.LXCMAC.String(),
			"from the answered MAC":    HardwareAddr(out[6:12]).String() == c.mac.String(),
			"IPv6":                     out[12] == 0x86 && out[13] == 0xdd && ip[0]>>4 == 6,
			"hop limit 255":            ip[7] == 255 && ip[6] == protoICMPv6,
			"payload 32":               binary.BigEndian.Uint16(ip[4:]) == 32,
			"from the target":          netip.AddrFrom16([16]byte(ip[8:24])) == c.target,
			"to the solicitor":         netip.AddrFrom16([16]byte(ip[24:40])) == c.src,
			"an advertisement":         icmp[0] == 136 && icmp[1] == 0,
			"solicited and override":   icmp[4]&0x60 == 0x60,
			"router flag":              (icmp[4]&0x80 != 0) == c.router,
			"the target":               [16]byte(icmp[8:24]) == tgt,
			"target link-layer option": icmp[24] == 2 && icmp[25] == 1 && HardwareAddr(icmp[26:32]).String() == c.mac.String(),
			"a valid checksum":         icmp6Checksum(c.target, c.src, zeroChecksum(icmp)) == binary.BigEndian.Uint16(icmp[2:]),
		}
		for what, ok := range want {
			if !ok {
				t.Errorf("%s: the advertisement is not %s: % x", c.what, what, out)
			}
		}
	}

	for _, c := range []struct {
		what  string
		frame []byte
		want  uint32
	}{
		{"duplicate address detection", neighborSolicit(a.LXCMAC, netip.IPv6Unspecified(), A, 255, nil), tcActOK},
		{"a solicitation for its own address", neighborSolicit(a.LXCMAC, A, A, 255, a.LXCMAC), tcActOK},
		{"a hop limit below 255", neighborSolicit(a.LXCMAC, A, n.Gateway6, 64, a.LXCMAC), tcActShot},
		{"another link-layer address in the option", neighborSolicit(a.LXCMAC, A, n.Gateway6, 255, b.LXCMAC), tcActShot},
		{"a multicast target", neighborSolicit(a.LXCMAC, A, netip.MustParseAddr("ff02::1"), 255, a.LXCMAC), tcActShot},
		{"from another endpoint's address", neighborSolicit(a.LXCMAC, b.IPv6.Addr(), n.Gateway6, 255, a.LXCMAC), tcActShot},
		{"a router advertisement", icmp6Frame(a.LXCMAC, a.NodeMAC, ll, netip.MustParseAddr("ff02::1"), 255, 134, 0, make([]byte, 12)), tcActShot},
		{"a router solicitation", icmp6Frame(a.LXCMAC, a.NodeMAC, ll, netip.MustParseAddr("ff02::2"), 255, 133, 0, make([]byte, 4)), tcActOK},
		{"an MLD report", icmp6Frame(a.LXCMAC, a.NodeMAC, ll, netip.MustParseAddr("ff02::16"), 1, 143, 0, make([]byte, 4)), tcActOK},
		{"an MLD report to a global address", icmp6Frame(a.LXCMAC, a.NodeMAC, A, n.Gateway6, 1, 143, 0, make([]byte, 4)), tcActShot},
	} {
		send(t, c.what, from, c.frame, c.want)
	}
}

// zeroChecksum is an ICMPv6 message with its checksum field zero.
func zeroChecksum(icmp []byte) []byte {
	c := append([]byte(nil), icmp...)
	c[2], c[3] = 0, 0
	return c
}

// TestIPv6DropsSpoofing: a container that forges its IPv6 source, even
// with an address of its own subnet, or its MAC, is dropped; so is a
// router advertisement it sends.
func TestIPv6DropsSpoofing(t *testing.T) {
	e := newTestEnv(t)
	n := e.network6(1, true)
	a, b := e.endpoint6(n, 20), e.endpoint6(n, 21)
	nsA, _ := e.container6(a), e.container6(b)
	if !ping(nsA, b.IPv6.Addr()) {
		t.Fatal("baseline ping over IPv6 failed")
	}
	spoofed := hostAddr6(n, 99)
	run(t, "ip", "-n", nsA, "addr", "add", spoofed.String(), "dev", "eth0", "nodad")
	sip := e.metric(DropInvalidSIP, policy.Egress)
	if ping(nsA, b.IPv6.Addr(), "-I", spoofed.Addr().String()) {
		t.Error("ping from a spoofed IPv6 source was answered")
	}
	if e.metric(DropInvalidSIP, policy.Egress) == sip {
		t.Error("no DROP_INVALID_SIP counted")
	}
	// b's address, claimed by a: its entry names b, not a. A crafted
	// frame, since a real one would meet the solicitation check first.
	from := e.fromContainer(a)
	sip = e.metric(DropInvalidSIP, policy.Egress)
	send(t, "UDP from b's address out of a", from, udp6Packet(a.LXCMAC, a.NodeMAC, b.IPv6.Addr(), n.Gateway6, 5000, 53, 8), tcActShot)
	send(t, "UDP from a link-local address", from, udp6Packet(a.LXCMAC, a.NodeMAC, netip.MustParseAddr("fe80::1"), n.Gateway6, 5000, 53, 8), tcActShot)
	send(t, "UDP from a's own address", from, udp6Packet(a.LXCMAC, a.NodeMAC, a.IPv6.Addr(), n.Gateway6, 5000, 53, 8), tcActOK)
	if got := e.metric(DropInvalidSIP, policy.Egress); got != sip+2 {
		t.Errorf("DROP_INVALID_SIP counted %d of the 2 forged sources", got-sip)
	}
	run(t, "ip", "-n", nsA, "addr", "del", spoofed.String(), "dev", "eth0")

	run(t, "ip", "-n", nsA, "link", "set", "eth0", "address", "02:00:00:00:00:99")
	smac := e.metric(DropInvalidSMAC, policy.Egress)
	if ping(nsA, b.IPv6.Addr()) {
		t.Error("ping from a spoofed source MAC was answered over IPv6")
	}
	if e.metric(DropInvalidSMAC, policy.Egress) == smac {
		t.Error("no DROP_INVALID_SMAC counted over IPv6")
	}
}

// TestIPv6IsolatesNetworks: an IPv6 peer of another network is not
// reached, and the unused addresses of a network are unreachable.
func TestIPv6IsolatesNetworks(t *testing.T) {
	e := newTestEnv(t)
	n1, n2 := e.network6(1, false), e.network6(2, false)
	a, b := e.endpoint6(n1, 30), e.endpoint6(n2, 31)
	nsA, nsB := e.container6(a), e.container6(b)
	if !ping(nsA, n1.Gateway6) || !ping(nsB, n2.Gateway6) {
		t.Fatal("IPv6-only containers cannot reach their gateways")
	}
	before := e.metric(DropNotSameNetwork, policy.Egress)
	if ping(nsA, b.IPv6.Addr()) {
		t.Error("container reached a container of another network over IPv6")
	}
	if e.metric(DropNotSameNetwork, policy.Egress) == before {
		t.Error("no DROP_NOT_SAME_NETWORK counted")
	}
	out, _ := exec.Command("ip", "-6", "route", "get", hostAddr6(n1, 200).Addr().String()).CombinedOutput()
	if !strings.Contains(string(out), "unreachable") && !strings.Contains(string(out), "No route to host") {
		t.Errorf("unused IPv6 address routes as %q", out)
	}
}

// TestIPv6OnlyEndpointHasNoIPv4: an endpoint without IPv4 sends no IPv4
// at all: not from 0.0.0.0, which its (zero) address would otherwise
// match, and no ARP.
func TestIPv6OnlyEndpointHasNoIPv4(t *testing.T) {
	e := newTestEnv(t)
	n := e.network6(1, false)
	a, b := e.endpoint6(n, 40), e.endpoint6(n, 41)
	if a.IPv4.IsValid() || b.IPv4.IsValid() {
		t.Fatal("endpoints of an IPv6-only network got IPv4 addresses")
	}
	from := e.fromContainer(a)
	zero := netip.IPv4Unspecified()
	peer := netip.MustParseAddr("10.255.0.1")
	sip := e.metric(DropInvalidSIP, policy.Egress)
	send(t, "IPv4 from 0.0.0.0", from, udpPacket(a.LXCMAC, a.NodeMAC, zero, peer, 68, 67, 8), tcActShot)
	send(t, "ARP from 0.0.0.0", from, arpRequest(a.LXCMAC, zero, peer), tcActShot)
	if got := e.metric(DropInvalidSIP, policy.Egress); got != sip+2 {
		t.Errorf("DROP_INVALID_SIP counted %d of the 2 packets", got-sip)
	}
	nsA, _ := e.container6(a), e.container6(b)
	if !ping(nsA, b.IPv6.Addr()) {
		t.Error("IPv6-only container -> container: no reply")
	}
}

// arpRequest builds "who has target, tell sender" from mac.
func arpRequest(mac HardwareAddr, sender, target netip.Addr) []byte {
	pkt := make([]byte, 14+28)
	for i := 0; i < 6; i++ {
		pkt[i] = 0xff
	}
	copy(pkt[6:12], mac)
	pkt[12], pkt[13] = 0x08, 0x06
	arp := pkt[14:]
	arp[1] = 1            // Ethernet
	arp[2], arp[3] = 8, 0 // IPv4
	arp[4], arp[5] = 6, 4
	arp[7] = 1 // request
	copy(arp[8:14], mac)
	s, d := sender.As4(), target.As4()
	copy(arp[14:18], s[:])
	copy(arp[24:28], d[:])
	return pkt
}

// TestIPv6Policy: identity-based policy over IPv6 with the same keys as
// IPv4 (one identity for both families): an L3 rule lets ICMPv6 and TCP
// through, an L4 rule TCP to its port only; the replies of an allowed
// connection pass the other end's enforced egress (conntrack); drops and
// verdicts are reported with the IPv6 addresses; Neighbor Discovery goes
// on under deny-all.
func TestIPv6Policy(t *testing.T) {
	e := newTestEnv(t)
	evs := e.events()
	n := e.network6(1, true)
	a, b, c := e.endpoint6(n, 60), e.endpoint6(n, 61), e.endpoint6(n, 62)
	nsA, nsB, nsC := e.container6(a), e.container6(b), e.container6(c)
	B := b.IPv6.Addr()
	listen(t, nsB, B, 8080)

	// b: ingress from a only, anything; b's egress denies every new flow.
	e.setPolicy(b, FlagEnforceIngress|FlagEnforceEgress, policy.Key{Identity: a.Identity, Direction: policy.Ingress})
	if !ping(nsA, B) {
		t.Error("allowed a -> b over ICMPv6 denied")
	}
	if !canConnect(nsA, B, 8080) {
		t.Error("allowed a -> b TCP over IPv6 denied (or its replies, b's egress)")
	}
	if ping(nsC, B) {
		t.Error("c -> b passed b's ingress policy over IPv6")
	}
	ev, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventDrop && ev.Reason == DropPolicy && ev.Src == c.IPv6.Addr() && ev.Dst == B
	})
	if !ok {
		t.Error("no drop event with c's and b's IPv6 addresses")
	} else if ev.SrcIdentity != c.Identity || ev.DstIdentity != b.Identity || ev.Proto != protoICMPv6 || ev.EndpointID != b.ID {
		t.Errorf("drop event %v: want identities %d -> %d, ICMPv6, endpoint %d", ev, c.Identity, b.Identity, b.ID)
	}
	if ping(nsB, a.IPv6.Addr()) {
		t.Error("b -> a passed b's egress policy over IPv6")
	}

	// L4: from a, TCP 8080 only.
	e.setPolicy(b, FlagEnforceIngress|FlagEnforceEgress)
	if _, _, err := e.dp.ApplyPolicy(b.ID, policy.EndpointPolicy{IngressEnforced: true, EgressEnforced: true,
		Entries: keys(policy.Key{Identity: a.Identity, Port: 8080, Proto: protoTCP, Direction: policy.Ingress})}); err != nil {
		t.Fatal(err)
	}
	if !canConnect(nsA, B, 8080) {
		t.Error("a -> b TCP 8080 denied under the L4 rule")
	}
	if ping(nsA, B) {
		t.Error("a -> b ICMPv6 passed an L4 rule for TCP 8080")
	}
	if canConnect(nsC, B, 8080) {
		t.Error("c -> b TCP 8080 passed a rule for a only")
	}
	// Deny-all both ways still resolves neighbours: the solicitation is
	// never policy's to judge.
	e.setPolicy(a, FlagEnforceIngress|FlagEnforceEgress)
	run(t, "ip", "-n", nsA, "neigh", "flush", "dev", "eth0")
	_ = ping(nsA, n.Gateway6)
	if neigh := neighbour(t, nsA, n.Gateway6); !strings.Contains(neigh, a.NodeMAC.String()) {
		t.Errorf("no neighbour entry for the gateway under deny-all: %q", neigh)
	}
	flows, err := e.dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range flows {
		if f.Proto == protoTCP && f.Src.Addr() == a.IPv6.Addr() && f.Dst == netip.AddrPortFrom(B, 8080) {
			found = f.SrcEndpoint == a.ID && f.DstEndpoint == b.ID
		}
	}
	if !found {
		t.Errorf("the conntrack listing lacks a's TCP flow to [%s]:8080 with both endpoints: %+v", B, flows)
	}
}

// TestIPv6RelatedICMPErrors: an ICMPv6 error about a packet of a live
// flow passes both ends' policy; one about another flow, or one that does
// not go back to the quoted packet's sender, meets policy, except Packet
// Too Big, which policy never denies; none creates a flow.
func TestIPv6RelatedICMPErrors(t *testing.T) {
	e := newTestEnv(t)
	n := e.network6(1, false)
	a, b := e.endpoint6(n, 10), e.endpoint6(n, 11)
	fromA, fromB := e.fromContainer(a), e.fromContainer(b)
	A, B := a.IPv6.Addr(), b.IPv6.Addr()
	e.setPolicy(a, FlagEnforceIngress|FlagEnforceEgress,
		policy.Key{Identity: b.Identity, Port: 8080, Proto: protoUDP, Direction: policy.Egress},
		policy.Key{Identity: b.Identity, Port: 8080, Proto: protoTCP, Direction: policy.Egress})
	e.setPolicy(b, FlagEnforceIngress|FlagEnforceEgress,
		policy.Key{Identity: a.Identity, Port: 8080, Proto: protoUDP, Direction: policy.Ingress},
		policy.Key{Identity: a.Identity, Port: 8080, Proto: protoTCP, Direction: policy.Ingress})
	datagram := udp6Packet(a.LXCMAC, b.LXCMAC, A, B, 4000, 8080, 16)
	send(t, "datagram a -> b:8080", fromA, datagram, tcActRedirect)
	syn := tcp6Packet(a.LXCMAC, b.LXCMAC, A, B, 41000, 8080, 0x02)
	send(t, "SYN a -> b:8080", fromA, syn, tcActRedirect)

	errFromB := func(typ, code uint8, quoted []byte) []byte {
		return icmp6Error(b.LXCMAC, a.LXCMAC, B, A, typ, code, 1280, quoted)
	}
	send(t, "port unreachable about the datagram", fromB, errFromB(1, 4, datagram), tcActRedirect)
	send(t, "time exceeded about the SYN", fromB, errFromB(3, 0, syn), tcActRedirect)
	send(t, "packet too big about the SYN", fromB, errFromB(2, 0, syn), tcActRedirect)

	denied := e.metric(DropPolicy, policy.Egress)
	other := udp6Packet(a.LXCMAC, b.LXCMAC, A, B, 4000, 9999, 16)
	send(t, "port unreachable about a flow that does not exist", fromB, errFromB(1, 4, other), tcActShot)
	reversed := udp6Packet(b.LXCMAC, a.LXCMAC, B, A, 8080, 4000, 16)
	send(t, "port unreachable that does not go back to the quoted sender", fromB, errFromB(1, 4, reversed), tcActShot)
	send(t, "echo reply", fromB, icmp6Echo(b.LXCMAC, a.LXCMAC, B, A, true, 99), tcActShot)
	if got := e.metric(DropPolicy, policy.Egress); got != denied+3 {
		t.Errorf("policy denied %d of the 3 unrelated packets", got-denied)
	}
	send(t, "packet too big about a flow that does not exist", fromB, errFromB(2, 0, other), tcActRedirect)

	flows, err := e.dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Proto == protoICMPv6 {
			t.Errorf("an ICMPv6 error was recorded as a flow: %+v", f)
		}
	}
}

// TestIPv6FragmentsTakeTheirFirstFragmentsPorts: the later fragments of a
// datagram (Fragment header, no L4 header) pass with their first
// fragment's verdict and not without it, under an L4 rule.
func TestIPv6FragmentsTakeTheirFirstFragmentsPorts(t *testing.T) {
	e := newTestEnv(t)
	n := e.network6(1, false)
	a, b := e.endpoint6(n, 40), e.endpoint6(n, 41)
	fromA := e.fromContainer(a)
	A, B := a.IPv6.Addr(), b.IPv6.Addr()
	e.setPolicy(b, FlagEnforceIngress, policy.Key{Identity: a.Identity, Port: 9000, Proto: protoUDP, Direction: policy.Ingress})
	allowed := fragments6(udp6Packet(a.LXCMAC, b.LXCMAC, A, B, 4000, 9000, 3000), 0x12345678, 1448)
	if len(allowed) != 3 {
		t.Fatalf("%d fragments", len(allowed))
	}
	send(t, "a later fragment before its first", fromA, allowed[1], tcActShot)
	send(t, "first fragment", fromA, allowed[0], tcActRedirect)
	send(t, "second fragment", fromA, allowed[1], tcActRedirect)
	send(t, "last fragment", fromA, allowed[2], tcActRedirect)
	denied := fragments6(udp6Packet(a.LXCMAC, b.LXCMAC, A, B, 4001, 9001, 3000), 0x12345679, 1448)
	send(t, "first fragment to a denied port", fromA, denied[0], tcActShot)
	send(t, "later fragment to a denied port", fromA, denied[1], tcActShot)
}

// TestIPv6PMTUDiscoveryUnderL4Policy: an IPv6 container whose ingress
// takes nothing new and whose egress allows TCP 8080 only uploads to a
// server behind a router whose next link has IPv6's minimum MTU; the
// router's Packet Too Big must reach the container for the upload to
// finish (IPv6 routers never fragment).
//
//	container --veth-- host --1500-- router --1280-- server
func TestIPv6PMTUDiscoveryUnderL4Policy(t *testing.T) {
	e := newTestEnv(t)
	testutil.RequireCommand(t, "ip6tables")
	if fwd, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil || strings.TrimSpace(string(fwd)) != "1" {
		testutil.Missing(t, "the host forwards no IPv6 (net.ipv6.conf.all.forwarding=%q, %v): the test routes through it", fwd, err)
	}
	n := e.network6(1, false)
	c := e.endpoint6(n, 50)
	nsC := e.container6(c)
	up, down := e.routerSubnets6()
	hostIP, routerUp := hostAddr6InPrefix(up, 1), hostAddr6InPrefix(up, 2)
	routerDown, serverIP := hostAddr6InPrefix(down, 1), hostAddr6InPrefix(down, 2)

	router := fmt.Sprintf("ebt-%s-r", e.suffix)
	server := fmt.Sprintf("ebt-%s-s", e.suffix)
	uplink := "ebr" + e.suffix
	for _, ns := range []string{router, server} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	run(t, "ip", "link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", router)
	t.Cleanup(func() { _ = deleteLinkByName(uplink) })
	run(t, "ip", "addr", "add", netip.PrefixFrom(hostIP, 64).String(), "dev", uplink, "nodad")
	run(t, "ip", "link", "set", uplink, "up")
	run(t, "ip", "-6", "route", "add", serverIP.String()+"/128", "via", routerUp.String(), "dev", uplink)
	inR := func(args ...string) { run(t, append([]string{"ip", "-n", router}, args...)...) }
	inR("link", "set", "lo", "up")
	inR("addr", "add", netip.PrefixFrom(routerUp, 64).String(), "dev", "eth0", "nodad")
	inR("link", "set", "eth0", "up")
	inR("link", "add", "eth1", "mtu", "1280", "type", "veth", "peer", "name", "eth0", "netns", server)
	inR("addr", "add", netip.PrefixFrom(routerDown, 64).String(), "dev", "eth1", "nodad")
	inR("link", "set", "eth1", "up")
	inR("-6", "route", "add", "default", "via", hostIP.String(), "dev", "eth0")
	run(t, "ip", "netns", "exec", router, "sh", "-c", "echo 1 >/proc/sys/net/ipv6/conf/all/forwarding")
	inS := func(args ...string) { run(t, append([]string{"ip", "-n", server}, args...)...) }
	inS("link", "set", "lo", "up")
	inS("addr", "add", netip.PrefixFrom(serverIP, 64).String(), "dev", "eth0", "nodad")
	inS("link", "set", "eth0", "up")
	inS("-6", "route", "add", "default", "via", routerDown.String(), "dev", "eth0")
	for _, r := range [][]string{{"-i", c.IfName, "-o", uplink}, {"-i", uplink, "-o", c.IfName}} {
		rule := append([]string{"FORWARD"}, append(r, "-j", "ACCEPT")...)
		run(t, append([]string{"ip6tables", "-I"}, rule...)...)
		t.Cleanup(func() { _ = exec.Command("ip6tables", append([]string{"-D"}, rule...)...).Run() })
	}

	// The links' neighbours first (a solicitation sent while the far
	// end was still down is retried only after a second), and the path
	// before policy closes it to ICMPv6.
	reachable := false
	for i := 0; i < 5 && !reachable; i++ {
		reachable = ping(nsC, serverIP)
	}
	if !reachable {
		t.Fatal("the container cannot reach the server before any policy")
	}
	e.setPolicy(c, FlagEnforceIngress|FlagEnforceEgress,
		policy.Key{Identity: uint32(identity.World), Port: 8080, Proto: protoTCP, Direction: policy.Egress})

	var ln net.Listener
	if err := testutil.InNetns(server, func() (err error) {
		ln, err = net.Listen("tcp6", netip.AddrPortFrom(serverIP, 8080).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		n, _ := io.Copy(io.Discard, s)
		fmt.Fprintf(s, "%d", n)
	}()
	const upload = 256 << 10
	var reply string
	err := testutil.InNetns(nsC, func() error {
		conn, err := net.DialTimeout("tcp6", netip.AddrPortFrom(serverIP, 8080).String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(make([]byte, upload)); err != nil {
			return err
		}
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		b, err := io.ReadAll(conn)
		reply = string(b)
		return err
	})
	if err != nil || reply != fmt.Sprint(upload) {
		t.Fatalf("upload of %d bytes across the 1280-byte link: server got %q, %v", upload, reply, err)
	}
	if route := run(t, "ip", "-n", nsC, "-6", "route", "get", serverIP.String()); !strings.Contains(route, "mtu 1280") {
		t.Errorf("the container did not learn the path MTU: %s", route)
	}
}

// routerSubnets6 picks two /64s of the documentation prefix 2001:db8::/32
// that no route of the machine covers.
func (e *testEnv) routerSubnets6() (up, down netip.Prefix) {
	e.t.Helper()
	for i := 0; i < 50; i++ {
		var a [16]byte
		a[0], a[1], a[2], a[3] = 0x20, 0x01, 0x0d, 0xb8
		_, _ = rand.Read(a[4:7])
		up = netip.PrefixFrom(netip.AddrFrom16(a), 64)
		a[7] = 1
		down = netip.PrefixFrom(netip.AddrFrom16(a), 64)
		if onlyDefaultRoute6(up) && onlyDefaultRoute6(down) {
			return up, down
		}
	}
	e.t.Fatal("no free /64 of 2001:db8::/32")
	return
}

func hostAddr6InPrefix(p netip.Prefix, host byte) netip.Addr {
	a := p.Addr().As16()
	a[15] = host
	return netip.AddrFrom16(a)
}

// flowKey6 is the conntrack key of an IPv6 flow between two ends, ordered.
func flowKey6(a netip.Addr, aport uint16, b netip.Addr, bport uint16, proto uint8) ct6Key {
	k := ct6Key{Saddr: a.As16(), Daddr: b.As16(), Proto: proto}
	binary.BigEndian.PutUint16(k.Sport[:], aport)
	binary.BigEndian.PutUint16(k.Dport[:], bport)
	if !k.ordered() {
		k = ct6Key{Saddr: k.Daddr, Daddr: k.Saddr, Sport: k.Dport, Dport: k.Sport, Proto: proto}
	}
	return k
}

// TestIPv6ConntrackOneKeyPerFlow: the programs record an IPv6 flow under
// the key ct6Key.ordered describes, whichever end is lower and in which of
// the address's two words they differ, and the reply finds it.
func TestIPv6ConntrackOneKeyPerFlow(t *testing.T) {
	e := newTestEnv(t)
	n := e.network6(1, false)
	a, b := e.endpoint6(n, 10), e.endpoint6(n, 11)
	fromA, fromB := e.fromContainer(a), e.fromContainer(b)
	// The first words compare as little-endian loads: their eighth
	// bytes decide, 0x00 below the container's and 0xff above it.
	world := []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8:0:ff::1")}
	for i, c := range []struct {
		src     *Endpoint
		dst     netip.Addr
		from    *ebpf.Program
		dstMAC  HardwareAddr
		verdict uint32
	}{
		{a, b.IPv6.Addr(), fromA, b.LXCMAC, tcActRedirect},
		{b, a.IPv6.Addr(), fromB, a.LXCMAC, tcActRedirect},
		{a, world[0], fromA, a.NodeMAC, tcActOK},
		{a, world[1], fromA, a.NodeMAC, tcActOK},
	} {
		sport := uint16(41000 + i)
		src := c.src.IPv6.Addr()
		send(t, fmt.Sprintf("SYN %d", i), c.from, tcp6Packet(c.src.LXCMAC, c.dstMAC, src, c.dst, sport, 80, 0x02), c.verdict)
		k := flowKey6(src, sport, c.dst, 80, protoTCP)
		var v ctEntry
		if err := e.dp.nodeMaps[CT6MapName].Lookup(k, &v); err != nil || v.Expires == 0 {
			t.Errorf("flow %d: no entry under %+v (%v)", i, k, err)
		}
		swapped := ct6Key{Saddr: k.Daddr, Daddr: k.Saddr, Sport: k.Dport, Dport: k.Sport, Proto: k.Proto}
		if err := e.dp.nodeMaps[CT6MapName].Lookup(swapped, &v); err == nil {
			t.Errorf("flow %d: also recorded under the other order", i)
		}
	}
	// The reply of a's flow to b is established: with ingress enforced
	// on a and egress on b, nothing allowed, only conntrack lets it in.
	e.setPolicy(a, FlagEnforceIngress)
	e.setPolicy(b, FlagEnforceEgress)
	send(t, "reply b -> a", fromB, tcp6Packet(b.LXCMAC, a.LXCMAC, b.IPv6.Addr(), a.IPv6.Addr(), 80, 41000, 0x12), tcActRedirect)
	send(t, "a new flow b -> a", fromB, tcp6Packet(b.LXCMAC, a.LXCMAC, b.IPv6.Addr(), a.IPv6.Addr(), 80, 41999, 0x02), tcActShot)
}

// TestIPv6ConntrackGarbageCollector: a sweep deletes the expired IPv6
// flows too, counts both tables, and deleting an endpoint deletes its
// IPv6 flows.
func TestIPv6ConntrackGarbageCollector(t *testing.T) {
	e := newTestEnv(t)
	m := e.dp.nodeMaps[CT6MapName]
	now := monotonicNow()
	x, y := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	live := flowKey6(x, 1000, y, 80, protoTCP)
	dead := flowKey6(x, 1001, y, 53, protoUDP)
	for k, exp := range map[ct6Key]uint64{live: now + uint64(time.Hour), dead: now - 1} {
		if err := m.Put(k, ctEntry{Expires: exp, Timeout: 60}); err != nil {
			t.Fatal(err)
		}
	}
	g := NewCTGC(e.dp, time.Minute, logrus.New())
	if err := g.Sweep(); err != nil {
		t.Fatal(err)
	}
	s := g.Stats()
	if s.IPv6.MaxEntries != 65536 || s.IPv6.Alive[CTClassTCP] != 1 || s.IPv6.Deleted[CTClassNonTCP] != 1 {
		t.Errorf("IPv6 stats after a sweep: %+v", s.IPv6)
	}
	var v ctEntry
	if err := m.Lookup(dead, &v); err == nil {
		t.Error("the expired IPv6 flow outlived the sweep")
	}
	if err := m.Lookup(live, &v); err != nil {
		t.Errorf("the live IPv6 flow is gone: %v", err)
	}

	n := e.network6(1, false)
	a := e.endpoint6(n, 10)
	mine := flowKey6(a.IPv6.Addr(), 1000, y, 80, protoTCP)
	if err := m.Put(mine, ctEntry{Expires: now + uint64(time.Hour), Timeout: 60}); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.DeleteEndpoint(a.DockerEndpointID); err != nil {
		t.Fatal(err)
	}
	e.dp.waitDeleted(a.IfName)
	if err := m.Lookup(mine, &v); err == nil {
		t.Error("a deleted endpoint's IPv6 flow outlived it")
	}
}

// TestIPv6Restore: IPv6-only and dual-stack endpoints come back after a
// restart with their IPv6 entries and the flags a policy engine set, and
// keep their traffic; deleting one removes its IPv6 entry and route.
func TestIPv6Restore(t *testing.T) {
	e := newTestEnv(t)
	n6, n46 := e.network6(1, false), e.network6(2, true)
	a, b := e.endpoint6(n6, 10), e.endpoint6(n6, 11)
	c := e.endpoint6(n46, 12)
	nsA, _ := e.container6(a), e.container6(b)
	e.setPolicy(b, FlagEnforceIngress, policy.Key{Identity: a.Identity, Direction: policy.Ingress})
	if !ping(nsA, b.IPv6.Addr()) {
		t.Fatal("a -> b: no reply")
	}
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	e.dp = e.open()
	eps, err := e.dp.Restore()
	if err != nil || len(eps) != 3 {
		t.Fatalf("Restore: %d endpoints, %v", len(eps), err)
	}
	for _, ep := range eps {
		want := map[uint16]*Endpoint{a.ID: a, b.ID: b, c.ID: c}[ep.ID]
		if want == nil || ep.IPv6 != want.IPv6 || ep.IPv4 != want.IPv4 {
			t.Errorf("restored %d with %v %v", ep.ID, ep.IPv4, ep.IPv6)
		}
	}
	if got, _ := e.dp.EndpointByID(b.ID); got.PolicyFlags != FlagEnforceIngress {
		t.Errorf("b's flags after the restart: %#x", got.PolicyFlags)
	}
	var info endpointInfo
	if err := e.dp.nodeMaps[Endpoints6MapName].Lookup(endpoint6Key(c.IPv6.Addr()), &info); err != nil || info.EPID != uint32(c.ID) {
		t.Errorf("the dual-stack endpoint's IPv6 entry after the restart: %+v, %v", info, err)
	}
	if !ping(nsA, b.IPv6.Addr()) {
		t.Error("a -> b after the restart: no reply")
	}
	if err := e.dp.DeleteEndpoint(b.DockerEndpointID); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.nodeMaps[Endpoints6MapName].Lookup(endpoint6Key(b.IPv6.Addr()), &info); err == nil {
		t.Error("a deleted endpoint's IPv6 entry is still there")
	}
	if out := run(t, "ip", "-6", "route", "show", b.IPv6.Addr().String()+"/128"); strings.Contains(out, b.IfName) {
		t.Errorf("a deleted endpoint's /128 route is still there: %s", out)
	}
}

// TestIPv6CIDRIdentity: an IPv6 prefix's identity in ebpfnet_ipcache6 is
// what an address within it gets (longest prefix), and an egress rule for
// that identity lets a container reach it and nothing else of the world.
func TestIPv6CIDRIdentity(t *testing.T) {
	e := newTestEnv(t)
	n := e.network6(1, false)
	a := e.endpoint6(n, 10)
	from := e.fromContainer(a)
	const wide, narrow = 16777217, 16777218
	for p, id := range map[string]identity.ID{"2001:db8::/32": wide, "2001:db8:1::/48": narrow} {
		if err := e.dp.PutIPCache(netip.MustParsePrefix(p), IPCacheEntry{Identity: id}); err != nil {
			t.Fatal(err)
		}
	}
	cache, err := e.dp.IPCache()
	if err != nil || cache[netip.MustParsePrefix("2001:db8:1::/48")].Identity != narrow {
		t.Fatalf("IPCache lists %v, %v", cache, err)
	}
	e.setPolicy(a, FlagEnforceEgress, policy.Key{Identity: wide, Direction: policy.Egress})
	A := a.IPv6.Addr()
	send(t, "UDP to the /32's identity", from, udp6Packet(a.LXCMAC, a.NodeMAC, A, netip.MustParseAddr("2001:db8:2::5"), 5000, 53, 8), tcActOK)
	send(t, "UDP into the /48 (another identity)", from, udp6Packet(a.LXCMAC, a.NodeMAC, A, netip.MustParseAddr("2001:db8:1::5"), 5001, 53, 8), tcActShot)
	send(t, "UDP to the world", from, udp6Packet(a.LXCMAC, a.NodeMAC, A, netip.MustParseAddr("2001:db9::5"), 5002, 53, 8), tcActShot)
	if err := e.dp.DeleteIPCache(netip.MustParsePrefix("2001:db8:1::/48")); err != nil {
		t.Fatal(err)
	}
	send(t, "UDP into the /48, deleted: the /32's now", from, udp6Packet(a.LXCMAC, a.NodeMAC, A, netip.MustParseAddr("2001:db8:1::5"), 5003, 53, 8), tcActOK)
}
