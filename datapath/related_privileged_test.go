package datapath

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// TestRelatedICMPErrors: an ICMP error about a packet of a live flow
// passes both ends' policy, as the flow's own packets do; one about
// another flow, one that does not go back to the quoted packet's sender,
// or one about an expired flow meets policy (and is denied here).
func TestRelatedICMPErrors(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 10), e.endpoint(n, 11)
	fromA, fromB := e.fromContainer(a), e.fromContainer(b)
	A, B := a.IPv4.Addr(), b.IPv4.Addr()
	// Both deny everything new but a's UDP and TCP to b's port 8080.
	e.setPolicy(a, FlagEnforceIngress|FlagEnforceEgress,
		policy.Key{Identity: b.Identity, Port: 8080, Proto: protoUDP, Direction: policy.Egress},
		policy.Key{Identity: b.Identity, Port: 8080, Proto: protoTCP, Direction: policy.Egress})
	e.setPolicy(b, FlagEnforceIngress|FlagEnforceEgress,
		policy.Key{Identity: a.Identity, Port: 8080, Proto: protoUDP, Direction: policy.Ingress},
		policy.Key{Identity: a.Identity, Port: 8080, Proto: protoTCP, Direction: policy.Ingress})
	datagram := udpPacket(a.LXCMAC, b.LXCMAC, A, B, 4000, 8080, 16)
	send(t, "datagram a -> b:8080", fromA, datagram, tcActRedirect)
	syn := tcpPacket(a.LXCMAC, b.LXCMAC, A, B, 41000, 8080, 0x02)
	send(t, "SYN a -> b:8080", fromA, syn, tcActRedirect)

	errFromB := func(typ, code uint8, quoted []byte) []byte {
		return icmpError(b.LXCMAC, a.LXCMAC, B, A, typ, code, quoted)
	}
	send(t, "port unreachable about the datagram", fromB, errFromB(3, 3, datagram), tcActRedirect)
	send(t, "fragmentation needed about the SYN", fromB, errFromB(3, 4, syn), tcActRedirect)
	send(t, "time exceeded about the SYN", fromB, errFromB(11, 0, syn), tcActRedirect)

	denied := e.metric(DropPolicy, policy.Egress)
	other := udpPacket(a.LXCMAC, b.LXCMAC, A, B, 4000, 9999, 16)
	send(t, "port unreachable about a flow that does not exist", fromB, errFromB(3, 3, other), tcActShot)
	// Quoting the flow from the wrong end: b's own packet, "returned" to a.
	reversed := udpPacket(b.LXCMAC, a.LXCMAC, B, A, 8080, 4000, 16)
	send(t, "port unreachable that does not go back to the quoted sender", fromB, errFromB(3, 3, reversed), tcActShot)
	// An echo reply is no error: it meets policy as any new flow.
	send(t, "echo reply", fromB, icmpEcho(b.LXCMAC, a.LXCMAC, B, A, true, 99), tcActShot)
	if got := e.metric(DropPolicy, policy.Egress); got != denied+3 {
		t.Errorf("policy denied %d of the 3 unrelated packets", got-denied)
	}

	// Expired, the flow has nothing related any more.
	k := flowKey(A, 4000, B, 8080, protoUDP)
	v, _ := e.flow(k)
	v.Expires = monotonicNow() - uint64(time.Second)
	if err := e.dp.shared[CTMapName].Put(k, v); err != nil {
		t.Fatal(err)
	}
	send(t, "port unreachable about an expired flow", fromB, errFromB(3, 3, datagram), tcActShot)
	// The errors created no flow of their own.
	flows, err := e.dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Proto == protoICMP {
			t.Errorf("an ICMP error was recorded as a flow: %+v", f)
		}
	}
}

// TestRelatedPortUnreachableBetweenContainers: a connected UDP socket
// learns that nobody listens (ECONNREFUSED) through the ICMP error the
// receiver's kernel sends, under a policy that lets neither end's ICMP out
// or in.
func TestRelatedPortUnreachableBetweenContainers(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 20), e.endpoint(n, 21)
	nsA, _ := e.container(a), e.container(b)
	e.setPolicy(a, FlagEnforceIngress)
	e.setPolicy(b, FlagEnforceIngress|FlagEnforceEgress,
		policy.Key{Identity: a.Identity, Proto: protoUDP, Direction: policy.Ingress})
	var readErr error
	if err := testutil.InNetns(nsA, func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(b.IPv4.Addr(), 9001).String())
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("anyone?")); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, readErr = c.Read(make([]byte, 16))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(readErr, syscall.ECONNREFUSED) {
		t.Errorf("read from a port nobody listens on: %v, want connection refused", readErr)
	}
}

// TestFragmentsOfAllowedFlow: a datagram larger than the MTU arrives in
// fragments, and all of them pass an L4 rule that only the first one
// carries the ports for, from a container and from the host; a datagram to
// a port the rule does not allow is lost whole.
func TestFragmentsOfAllowedFlow(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 30), e.endpoint(n, 31)
	nsA, nsB := e.container(a), e.container(b)
	e.setPolicy(b, FlagEnforceIngress, policy.Key{Port: 9000, Proto: protoUDP, Direction: policy.Ingress})
	const size = 4000 // three fragments at an MTU of 1500
	payload := []byte(strings.Repeat("0123456789abcdef", size/16))
	recv := func(port uint16) <-chan int {
		got := make(chan int, 1)
		var c net.PacketConn
		if err := testutil.InNetns(nsB, func() (err error) {
			c, err = net.ListenPacket("udp4", netip.AddrPortFrom(b.IPv4.Addr(), port).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, _, err := c.ReadFrom(make([]byte, 2*size))
			if err != nil {
				n = -1
			}
			got <- n
		}()
		return got
	}
	sendFrom := func(ns string, port uint16) {
		err := testutil.InNetns(ns, func() error {
			c, err := net.Dial("udp4", netip.AddrPortFrom(b.IPv4.Addr(), port).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write(payload)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, from := range []struct{ name, ns string }{{"container", nsA}, {"host", ""}} {
		got := recv(9000)
		if from.ns == "" {
			c, err := net.Dial("udp4", netip.AddrPortFrom(b.IPv4.Addr(), 9000).String())
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Write(payload)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
		} else {
			sendFrom(from.ns, 9000)
		}
		if n := <-got; n != size {
			t.Errorf("%d-byte datagram from the %s to an allowed port: received %d bytes", size, from.name, n)
		}
	}
	denied := recv(9001)
	sendFrom(nsA, 9001)
	if n := <-denied; n != -1 {
		t.Errorf("a datagram to a port the rule does not allow arrived (%d bytes)", n)
	}
}

// TestFragmentsTakeTheirFirstFragmentsPorts: a later fragment passes with
// its first fragment's verdict and not without it.
func TestFragmentsTakeTheirFirstFragmentsPorts(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 40), e.endpoint(n, 41)
	fromA := e.fromContainer(a)
	A, B := a.IPv4.Addr(), b.IPv4.Addr()
	e.setPolicy(b, FlagEnforceIngress, policy.Key{Identity: a.Identity, Port: 9000, Proto: protoUDP, Direction: policy.Ingress})
	allowed := fragments(udpPacket(a.LXCMAC, b.LXCMAC, A, B, 4000, 9000, 3000), 0x1234, 1480)
	if len(allowed) != 3 {
		t.Fatalf("%d fragments", len(allowed))
	}
	send(t, "a later fragment before its first", fromA, allowed[1], tcActShot)
	send(t, "first fragment", fromA, allowed[0], tcActRedirect)
	send(t, "second fragment", fromA, allowed[1], tcActRedirect)
	send(t, "last fragment", fromA, allowed[2], tcActRedirect)
	denied := fragments(udpPacket(a.LXCMAC, b.LXCMAC, A, B, 4001, 9001, 3000), 0x1235, 1480)
	send(t, "first fragment to a denied port", fromA, denied[0], tcActShot)
	send(t, "later fragment to a denied port", fromA, denied[1], tcActShot)
}

// TestRelatedPMTUDiscoveryUnderL4Policy: a container whose ingress takes
// nothing new and whose egress allows TCP 8080 only uploads to a server
// behind a router whose next link has a lower MTU. Its full-size segments
// are dropped there, and the router's "fragmentation needed" must reach
// the container for the upload to finish: path MTU discovery.
//
//	container --veth-- host --1500-- router --1280-- server
func TestRelatedPMTUDiscoveryUnderL4Policy(t *testing.T) {
	e := newTestEnv(t)
	testutil.RequireCommand(t, "iptables")
	if fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(fwd)) != "1" {
		testutil.Missing(t, "the host forwards no IPv4 (net.ipv4.ip_forward=%q, %v): the test routes through it", fwd, err)
	}
	n := e.network(1)
	c := e.endpoint(n, 50)
	nsC := e.container(c)
	hostIP, routerUp, routerDown, serverIP := e.routerAddresses()

	router := fmt.Sprintf("ebt-%s-r", e.suffix)
	server := fmt.Sprintf("ebt-%s-s", e.suffix)
	uplink := "ebr" + e.suffix
	for _, ns := range []string{router, server} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	run(t, "ip", "link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", router)
	t.Cleanup(func() { _ = deleteLinkByName(uplink) })
	run(t, "ip", "addr", "add", hostIP.String()+"/30", "dev", uplink)
	run(t, "ip", "link", "set", uplink, "up")
	run(t, "ip", "route", "add", serverIP.String()+"/32", "via", routerUp.String())
	inR := func(args ...string) { run(t, append([]string{"ip", "-n", router}, args...)...) }
	inR("link", "set", "lo", "up")
	inR("addr", "add", routerUp.String()+"/30", "dev", "eth0")
	inR("link", "set", "eth0", "up")
	inR("link", "add", "eth1", "mtu", "1280", "type", "veth", "peer", "name", "eth0", "netns", server)
	inR("addr", "add", routerDown.String()+"/30", "dev", "eth1")
	inR("link", "set", "eth1", "up")
	inR("route", "add", "default", "via", hostIP.String())
	run(t, "ip", "netns", "exec", router, "sh", "-c", "echo 1 >/proc/sys/net/ipv4/ip_forward")
	inS := func(args ...string) { run(t, append([]string{"ip", "-n", server}, args...)...) }
	inS("link", "set", "lo", "up")
	inS("addr", "add", serverIP.String()+"/30", "dev", "eth0")
	inS("link", "set", "eth0", "up")
	inS("route", "add", "default", "via", routerDown.String())
	// Docker's FORWARD policy is DROP: let this one path through.
	for _, r := range [][]string{{"-i", c.IfName, "-o", uplink}, {"-i", uplink, "-o", c.IfName}} {
		rule := append([]string{"FORWARD"}, append(r, "-j", "ACCEPT")...)
		run(t, append([]string{"iptables", "-I"}, rule...)...)
		t.Cleanup(func() { _ = exec.Command("iptables", append([]string{"-D"}, rule...)...).Run() })
	}

	e.setPolicy(c, FlagEnforceIngress|FlagEnforceEgress,
		policy.Key{Identity: uint32(identity.World), Port: 8080, Proto: protoTCP, Direction: policy.Egress})

	var ln net.Listener
	if err := testutil.InNetns(server, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(serverIP, 8080).String())
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
		conn, err := net.DialTimeout("tcp4", netip.AddrPortFrom(serverIP, 8080).String(), 2*time.Second)
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
	if route := run(t, "ip", "-n", nsC, "route", "get", serverIP.String()); !strings.Contains(route, "mtu 1280") {
		t.Errorf("the container did not learn the path MTU: %s", route)
	}
}

// routerAddresses picks two /30 links from TEST-NET-3 (203.0.113.0/24)
// that no route of the machine covers: host and router on the first,
// router and server on the second.
func (e *testEnv) routerAddresses() (host, routerUp, routerDown, server netip.Addr) {
	e.t.Helper()
	for i := 0; i < 50; i++ {
		b := randHex(e.t, 1)
		var x byte
		_, _ = fmt.Sscanf(b, "%02x", &x)
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, x &^ 7}), 29)
		if !onlyDefaultRoute(block) {
			continue
		}
		a := block.Addr()
		host = a.Next()
		routerUp = host.Next()
		routerDown = routerUp.Next().Next().Next()
		server = routerDown.Next()
		return host, routerUp, routerDown, server
	}
	e.t.Fatal("no free block of 203.0.113.0/24")
	return
}
