package cluster

import (
	"net/netip"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

var net1 = netip.MustParsePrefix("10.90.0.0/16")

func claim(t *testing.T, n *Node, subnet netip.Prefix) netip.Prefix {
	t.Helper()
	b, err := n.ClaimBlock(ctxT(t), subnet)
	if err != nil {
		t.Fatalf("%s: claim in %s: %v", n.Name(), subnet, err)
	}
	return b
}

func TestBlocksAreDistinctAndKeptAcrossRestarts(t *testing.T) {
	e := startEtcd(t)
	dir := t.TempDir()
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client, dir: dir})
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client})
	waitConnected(t, a)
	waitConnected(t, b)
	ba, bb := claim(t, a, net1), claim(t, b, net1)
	if ba != netip.MustParsePrefix("10.90.0.0/24") || bb != netip.MustParsePrefix("10.90.1.0/24") {
		t.Fatalf("blocks a %s, b %s; want the first two /24s", ba, bb)
	}
	if again := claim(t, a, netip.MustParsePrefix("10.90.3.4/16")); again != ba {
		t.Fatalf("claiming again gave %s, want %s", again, ba)
	}
	a.Close()
	a2 := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client, dir: dir})
	waitConnected(t, a2)
	if again := claim(t, a2, net1); again != ba {
		t.Fatalf("after a restart a claims %s, want its %s", again, ba)
	}
	nets, err := b.Networks(ctxT(t))
	if err != nil || len(nets) != 1 || nets[0] != net1 {
		t.Fatalf("Networks = %v, %v", nets, err)
	}

	// Released blocks go back; the network goes with the last one.
	if err := a2.ReleaseBlock(ctxT(t), net1); err != nil {
		t.Fatal(err)
	}
	if nets, _ := b.Networks(ctxT(t)); len(nets) != 1 {
		t.Fatalf("the network went while b still has a block: %v", nets)
	}
	if err := b.ReleaseBlock(ctxT(t), net1); err != nil {
		t.Fatal(err)
	}
	if nets, _ := b.Networks(ctxT(t)); len(nets) != 0 {
		t.Fatalf("the network stayed with no block left: %v", nets)
	}
	if got := claim(t, b, net1); got != ba {
		t.Fatalf("after the release b claims %s, want the first block %s", got, ba)
	}
}

func TestOverlappingSubnetIsRefused(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	waitConnected(t, a)
	claim(t, a, net1)
	for _, s := range []string{"10.90.5.0/24", "10.0.0.0/8"} {
		_, err := a.ClaimBlock(ctxT(t), netip.MustParsePrefix(s))
		if err == nil || !strings.Contains(err.Error(), s) || !strings.Contains(err.Error(), net1.String()) {
			t.Fatalf("claim in %s: %v; want a refusal naming both subnets", s, err)
		}
	}
	if nets, _ := a.Networks(ctxT(t)); len(nets) != 1 {
		t.Fatalf("a refused subnet was registered: %v", nets)
	}
	if _, err := a.ClaimBlock(ctxT(t), netip.MustParsePrefix("::ffff:10.90.0.0/112")); err == nil {
		t.Fatal("an IPv4-mapped subnet was accepted")
	}
}

func TestSmallSubnetIsOneBlockAndAFullSubnetIsAnError(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client})
	waitConnected(t, a)
	waitConnected(t, b)
	small := netip.MustParsePrefix("10.91.0.16/28")
	if got := claim(t, a, small); got != small {
		t.Fatalf("a /28 gave block %s, want the subnet itself", got)
	}
	if _, err := b.ClaimBlock(ctxT(t), small); err == nil || !strings.Contains(err.Error(), "every /28 block is owned") {
		t.Fatalf("claim in a full subnet: %v", err)
	}
}

func TestRemoveNodeRefusesALiveNodeAndFreesADeadOne(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client})
	waitConnected(t, a)
	waitConnected(t, b)
	ba := claim(t, a, net1)
	bb := claim(t, b, net1)
	cli := e.newClient()
	defer cli.Close()

	if err := b.RemoveNode(ctxT(t), "a"); err == nil || !strings.Contains(err.Error(), "alive") {
		t.Fatalf("removing a live node: %v", err)
	}
	if err := b.RemoveNode(ctxT(t), "b"); err == nil {
		t.Fatal("a node removed itself")
	}
	if err := b.RemoveNode(ctxT(t), "nobody"); err == nil {
		t.Fatal("removing an unknown node succeeded")
	}
	nodes, err := b.Nodes(ctxT(t))
	if err != nil || len(nodes) != 2 || nodes[0].State != NodeAlive || nodes[0].IP != netip.MustParseAddr("192.0.2.1") ||
		len(nodes[0].Blocks) != 1 || nodes[0].Blocks[0] != (Block{Subnet: net1, Prefix: ba}) || nodes[0].Heartbeat.IsZero() {
		t.Fatalf("Nodes = %+v, %v", nodes, err)
	}

	// a dies: its lease goes (revoked here rather than waited for), its
	// block stays its own, and no claim takes it.
	lease := clientv3.LeaseID(a.Status().LeaseID)
	a.Close()
	if _, err := cli.Revoke(ctxT(t), lease); err != nil {
		t.Fatal(err)
	}
	nodes, err = b.Nodes(ctxT(t))
	if err != nil || len(nodes) != 2 || nodes[0].Name != "a" || nodes[0].State != NodeDead || len(nodes[0].Blocks) != 1 ||
		nodes[0].IP != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("Nodes after a died = %+v, %v; want a dead with its block and the IP it claimed it from", nodes, err)
	}
	c := connectNode(t, nodeOpts{name: "c", ip: "192.0.2.3", endpoint: e.client})
	waitConnected(t, c)
	if got := claim(t, c, net1); got == ba || got == bb {
		t.Fatalf("c got %s, a block of a dead node or of b", got)
	}

	if err := b.RemoveNode(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	nodes, _ = b.Nodes(ctxT(t))
	for _, n := range nodes {
		if n.Name == "a" {
			t.Fatalf("a is still listed: %+v", n)
		}
	}
	if err := c.ReleaseBlock(ctxT(t), net1); err != nil {
		t.Fatal(err)
	}
	if got := claim(t, c, net1); got != ba {
		t.Fatalf("after node remove, c claims %s, want a's old %s", got, ba)
	}
	if err := b.RemoveNode(ctxT(t), "a"); err == nil {
		t.Fatal("removing a again succeeded; nothing of it is left")
	}
}

// IPv6 cluster networks: blocks of /112 by default, distinct per node and
// found without walking the 2^48 of a /64; an IPv6 subnet never overlaps
// an IPv4 one; an overlapping IPv6 subnet is refused.
func TestIPv6Blocks(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client})
	waitConnected(t, a)
	waitConnected(t, b)
	net6 := netip.MustParsePrefix("fd00:90::/64")
	claim(t, a, net1)
	ba, bb := claim(t, a, net6), claim(t, b, net6)
	if ba != netip.MustParsePrefix("fd00:90::/112") || bb != netip.MustParsePrefix("fd00:90::1:0/112") {
		t.Fatalf("IPv6 blocks a %s, b %s; want the first two /112s", ba, bb)
	}
	if again := claim(t, a, net6); again != ba {
		t.Fatalf("claiming again gave %s, want %s", again, ba)
	}
	if _, err := a.ClaimBlock(ctxT(t), netip.MustParsePrefix("fd00:90::/48")); err == nil || !strings.Contains(err.Error(), net6.String()) {
		t.Fatalf("an overlapping IPv6 subnet: %v", err)
	}
	nets, err := b.Networks(ctxT(t))
	if err != nil || len(nets) != 2 {
		t.Fatalf("Networks = %v, %v; want the IPv4 and the IPv6 one", nets, err)
	}
	if err := a.ReleaseBlock(ctxT(t), net6); err != nil {
		t.Fatal(err)
	}
	if got := claim(t, a, net6); got != ba {
		t.Fatalf("after the release a claims %s, want the first block %s again", got, ba)
	}
}

func TestFirstFreeBlockOfAnIPv6Subnet(t *testing.T) {
	subnet := netip.MustParsePrefix("fd00:91::/64")
	owned := map[netip.Prefix]bool{}
	for i := 0; i < 1000; i++ {
		b, ok := firstFree(subnet, 112, owned)
		if !ok || !subnet.Contains(b.Addr()) || b.Bits() != 112 || owned[b] {
			t.Fatalf("block %d: %v %v", i, b, ok)
		}
		owned[b] = true
	}
	if b, _ := firstFree(subnet, 112, owned); b != netip.MustParsePrefix("fd00:91::3e8:0/112") {
		t.Fatalf("the 1001st block is %s", b)
	}
	small := netip.MustParsePrefix("fd00:92::/127")
	if _, ok := firstFree(small, 127, map[netip.Prefix]bool{small: true}); ok {
		t.Fatal("a full subnet gave a block")
	}
}
