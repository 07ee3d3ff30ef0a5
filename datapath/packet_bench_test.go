package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// BenchmarkProgramRun measures what the attached programs cost per packet,
// alone, with BPF_PROG_RUN on a crafted TCP packet of an established flow
// (the steady state of every connection): far less noisy than a round trip,
// and it says which path costs what. One op is one run of the program; the
// kernel times them. Cases:
//
//	local-forward  from_container of the client, the flow's own direction,
//	               with its tail call into node_from_container
//	local-reply    from_container of the server, a reply, same
//	to-stack       from_container, an established flow to the gateway
//	to-world       from_container, an established flow off the node
//	to-overlay     from_container, an established flow to another node's
//	               endpoint (the overlay is on, as in a cluster)
//	to-container   to_container, the host stack's reply to it
func BenchmarkProgramRun(b *testing.B) {
	e := newTestEnv(b, func(c *Config) {
		c.Overlay = &OverlayConfig{Device: "ebv" + c.HostDevice[3:], Port: 20000 + int(randByte(b))*30, UplinkMTU: 1500}
	})
	b.Cleanup(func() { _ = RemoveOverlay(e.cfg.Overlay.Device) })
	n := e.network(1)
	epA, epB := e.endpoint(n, 10), e.endpoint(n, 11)
	progs := func(ep *Endpoint) (from, to *ebpf.Program) {
		in, eg, err := tcPrograms(ep.IfIndex)
		if err != nil || in == 0 || eg == 0 {
			b.Fatalf("programs of %s: %d %d %v", ep.IfName, in, eg, err)
		}
		if from, err = ebpf.NewProgramFromID(in); err != nil {
			b.Fatal(err)
		}
		if to, err = ebpf.NewProgramFromID(eg); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { from.Close(); to.Close() })
		return from, to
	}
	fromA, toA := progs(epA)
	fromB, _ := progs(epB)
	a, bb, gw := epA.IPv4.Addr(), epB.IPv4.Addr(), n.Gateway
	world, remote := netip.MustParseAddr("198.51.100.9"), hostAddr(n, 200).Addr()
	if err := e.dp.PutIPCache(netip.PrefixFrom(remote, 32), IPCacheEntry{Identity: 900, TunnelEndpoint: netip.MustParseAddr("198.18.0.2")}); err != nil {
		b.Fatal(err)
	}
	const synFlag, ackFlag = 0x02, 0x10
	// The first packets of the flows, to create their conntrack entries.
	for _, open := range []struct {
		p   *ebpf.Program
		pkt []byte
	}{
		{fromA, tcpPacket(epA.LXCMAC, epB.LXCMAC, a, bb, 40000, 80, synFlag)},
		{fromA, tcpPacket(epA.LXCMAC, epA.NodeMAC, a, gw, 40001, 80, synFlag)},
		{fromA, tcpPacket(epA.LXCMAC, epA.NodeMAC, a, world, 40002, 80, synFlag)},
		{fromA, tcpPacket(epA.LXCMAC, epA.NodeMAC, a, remote, 40003, 80, synFlag)},
	} {
		if _, err := open.p.Run(&ebpf.RunOptions{Data: open.pkt}); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		p    *ebpf.Program
		pkt  []byte
		want uint32
	}{
		{"local-forward", fromA, tcpPacket(epA.LXCMAC, epB.LXCMAC, a, bb, 40000, 80, ackFlag), tcActRedirect},
		{"local-reply", fromB, tcpPacket(epB.LXCMAC, epA.LXCMAC, bb, a, 80, 40000, ackFlag), tcActRedirect},
		{"to-stack", fromA, tcpPacket(epA.LXCMAC, epA.NodeMAC, a, gw, 40001, 80, ackFlag), tcActOK},
		{"to-world", fromA, tcpPacket(epA.LXCMAC, epA.NodeMAC, a, world, 40002, 80, ackFlag), tcActOK},
		{"to-overlay", fromA, tcpPacket(epA.LXCMAC, epA.NodeMAC, a, remote, 40003, 80, ackFlag), tcActRedirect},
		{"to-container", toA, tcpPacket(epA.NodeMAC, epA.LXCMAC, gw, a, 80, 40001, ackFlag), tcActOK},
	} {
		b.Run(c.name, func(b *testing.B) {
			ret, d, err := c.p.Benchmark(c.pkt, b.N, b.ResetTimer)
			if err != nil {
				b.Fatal(err)
			}
			if ret != c.want {
				b.Fatalf("verdict %d, want %d", ret, c.want)
			}
			b.ReportMetric(float64(d.Nanoseconds()), "ns/pkt")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkProgramRun6 is BenchmarkProgramRun over IPv6, on a dual-stack
// network: the same cases, the same established TCP flows.
func BenchmarkProgramRun6(b *testing.B) {
	e := newTestEnv(b, func(c *Config) {
		c.Overlay = &OverlayConfig{Device: "ebv" + c.HostDevice[3:], Port: 20000 + int(randByte(b))*30, UplinkMTU: 1500}
	})
	b.Cleanup(func() { _ = RemoveOverlay(e.cfg.Overlay.Device) })
	n := e.network6(1, true)
	epA, epB := e.endpoint6(n, 10), e.endpoint6(n, 11)
	fromA, toA := e.programs(epA)
	fromB, _ := e.programs(epB)
	a, bb, gw := epA.IPv6.Addr(), epB.IPv6.Addr(), n.Gateway6
	world, remote := netip.MustParseAddr("2001:db8::9"), hostAddr6(n, 200).Addr()
	if err := e.dp.PutIPCache(netip.PrefixFrom(remote, 128), IPCacheEntry{Identity: 900, TunnelEndpoint: netip.MustParseAddr("198.18.0.2")}); err != nil {
		b.Fatal(err)
	}
	const synFlag, ackFlag = 0x02, 0x10
	for _, open := range []struct {
		p   *ebpf.Program
		pkt []byte
	}{
		{fromA, tcp6Packet(epA.LXCMAC, epB.LXCMAC, a, bb, 40000, 80, synFlag)},
		{fromA, tcp6Packet(epA.LXCMAC, epA.NodeMAC, a, gw, 40001, 80, synFlag)},
		{fromA, tcp6Packet(epA.LXCMAC, epA.NodeMAC, a, world, 40002, 80, synFlag)},
		{fromA, tcp6Packet(epA.LXCMAC, epA.NodeMAC, a, remote, 40003, 80, synFlag)},
	} {
		if _, err := open.p.Run(&ebpf.RunOptions{Data: open.pkt}); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		p    *ebpf.Program
		pkt  []byte
		want uint32
	}{
		{"local-forward", fromA, tcp6Packet(epA.LXCMAC, epB.LXCMAC, a, bb, 40000, 80, ackFlag), tcActRedirect},
		{"local-reply", fromB, tcp6Packet(epB.LXCMAC, epA.LXCMAC, bb, a, 80, 40000, ackFlag), tcActRedirect},
		{"to-stack", fromA, tcp6Packet(epA.LXCMAC, epA.NodeMAC, a, gw, 40001, 80, ackFlag), tcActOK},
		{"to-world", fromA, tcp6Packet(epA.LXCMAC, epA.NodeMAC, a, world, 40002, 80, ackFlag), tcActOK},
		{"to-overlay", fromA, tcp6Packet(epA.LXCMAC, epA.NodeMAC, a, remote, 40003, 80, ackFlag), tcActRedirect},
		{"to-container", toA, tcp6Packet(epA.NodeMAC, epA.LXCMAC, gw, a, 80, 40001, ackFlag), tcActOK},
	} {
		b.Run(c.name, func(b *testing.B) {
			ret, d, err := c.p.Benchmark(c.pkt, b.N, b.ResetTimer)
			if err != nil {
				b.Fatal(err)
			}
			if ret != c.want {
				b.Fatalf("verdict %d, want %d", ret, c.want)
			}
			b.ReportMetric(float64(d.Nanoseconds()), "ns/pkt")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// programs opens the programs attached to ep's veth.
func (e *testEnv) programs(ep *Endpoint) (from, to *ebpf.Program) {
	e.t.Helper()
	in, eg, err := tcPrograms(ep.IfIndex)
	if err != nil || in == 0 || eg == 0 {
		e.t.Fatalf("programs of %s: %d %d %v", ep.IfName, in, eg, err)
	}
	if from, err = ebpf.NewProgramFromID(in); err != nil {
		e.t.Fatal(err)
	}
	if to, err = ebpf.NewProgramFromID(eg); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { from.Close(); to.Close() })
	return from, to
}

const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

// tcpPacket builds an Ethernet/IPv4/TCP frame with 64 bytes of payload.
// Checksums are left 0: the programs do not check them.
func tcpPacket(src, dst HardwareAddr, saddr, daddr netip.Addr, sport, dport uint16, flags byte) []byte {
	const payload = 64
	pkt := make([]byte, 14+20+20+payload)
	copy(pkt[0:6], dst)
	copy(pkt[6:12], src)
	binary.BigEndian.PutUint16(pkt[12:], 0x0800)
	ip := pkt[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+payload))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = 6
	s, d := saddr.As4(), daddr.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], 1)
	binary.BigEndian.PutUint32(tcp[8:], 1)
	tcp[12] = 0x50
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	return pkt
}
