package cluster

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ebpfnet/ebpfnet/identity"
)

// recSink records what WatchRemote delivers.
type recSink struct {
	mu       sync.Mutex
	state    map[netip.Prefix]RemoteEntry
	replaces int
}

func (s *recSink) Replace(m map[netip.Prefix]RemoteEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = maps.Clone(m)
	s.replaces++
}

func (s *recSink) Upsert(p netip.Prefix, e RemoteEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state[p] = e
}

func (s *recSink) Delete(p netip.Prefix) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.state, p)
}

func (s *recSink) snapshot() (map[netip.Prefix]RemoteEntry, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.state), s.replaces
}

func (s *recSink) equals(want map[netip.Prefix]RemoteEntry) bool {
	got, _ := s.snapshot()
	return maps.Equal(got, want)
}

func watchRemote(t *testing.T, n *Node) *recSink {
	t.Helper()
	s := &recSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.WatchRemote(ctx, s) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s
}

var (
	ipA = netip.MustParseAddr("192.0.2.1")
	ipB = netip.MustParseAddr("192.0.2.2")
)

func host(s string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(s), 32) }

func TestRemoteViewHoldsOtherNodesEndpointsAndBlocks(t *testing.T) {
	e := startEtcd(t)
	grace := func(c *Config) { c.RemoteGrace = 3 * time.Second }
	a := connectNode(t, nodeOpts{name: "a", ip: ipA.String(), endpoint: e.client})
	b := connectNode(t, nodeOpts{name: "b", ip: ipB.String(), endpoint: e.client, mutate: grace})
	waitConnected(t, a)
	waitConnected(t, b)
	sink := watchRemote(t, b)
	blockA, blockB := claim(t, a, net1), claim(t, b, net1)
	for _, p := range []struct {
		n  *Node
		ip string
	}{{a, "10.90.0.5"}, {a, "10.90.0.6"}, {b, "10.90.1.5"}} {
		if err := p.n.PublishEndpoint(netip.MustParseAddr(p.ip), 300); err != nil {
			t.Fatal(err)
		}
	}
	want := map[netip.Prefix]RemoteEntry{
		blockA:            {Identity: identity.World, Node: "a", NodeIP: ipA},
		host("10.90.0.5"): {Identity: 300, Node: "a", NodeIP: ipA},
		host("10.90.0.6"): {Identity: 300, Node: "a", NodeIP: ipA},
	}
	eventually(t, "b's view of a", func() bool { return sink.equals(want) })
	if _, ok := want[blockB]; ok {
		t.Fatal("test is wrong")
	}

	// An identity change and a withdrawal apply at once.
	if err := a.PublishEndpoint(netip.MustParseAddr("10.90.0.6"), 301); err != nil {
		t.Fatal(err)
	}
	a.WithdrawEndpoint(netip.MustParseAddr("10.90.0.5"))
	start := time.Now()
	delete(want, host("10.90.0.5"))
	want[host("10.90.0.6")] = RemoteEntry{Identity: 301, Node: "a", NodeIP: ipA}
	eventually(t, "the withdrawal", func() bool { return sink.equals(want) })
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("a withdrawal took %s to apply: it waited for the grace", took)
	}

	// a dies: its entries stay for the grace, then go.
	lease := clientv3.LeaseID(a.Status().LeaseID)
	a.Close()
	cli := e.newClient()
	defer cli.Close()
	if _, err := cli.Revoke(ctxT(t), lease); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	time.Sleep(time.Second)
	if !sink.equals(want) {
		got, _ := sink.snapshot()
		t.Fatalf("a second after a died, b's view is %v; want a's entries kept for the grace", got)
	}
	eventually(t, "a's entries to go", func() bool { return sink.equals(map[netip.Prefix]RemoteEntry{}) })
	if took := time.Since(died); took < 3*time.Second {
		t.Fatalf("a's entries went %s after it died, before the grace of 3s", took)
	}
	if _, replaces := sink.snapshot(); replaces != 1 {
		t.Fatalf("%d full replaces, want only the first", replaces)
	}
}

func TestRemoteViewListsAgainAfterACompaction(t *testing.T) {
	e := startEtcd(t)
	p := newProxy(t, e.client[len("http://"):])
	a := connectNode(t, nodeOpts{name: "a", ip: ipA.String(), endpoint: e.client})
	b := connectNode(t, nodeOpts{name: "b", ip: ipB.String(), endpoint: p.url(),
		mutate: func(c *Config) { c.LeaseTTL = 10 * time.Second }})
	waitConnected(t, a)
	waitConnected(t, b)
	sink := watchRemote(t, b)
	if err := a.PublishEndpoint(netip.MustParseAddr("10.90.0.5"), 300); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first endpoint", func() bool {
		got, _ := sink.snapshot()
		_, ok := got[host("10.90.0.5")]
		return ok
	})

	// b is cut off while a changes its endpoints and etcd compacts
	// what b has not seen.
	p.setCut(true)
	eventually(t, "b to lose etcd", func() bool { return !b.Status().Connected })
	a.WithdrawEndpoint(netip.MustParseAddr("10.90.0.5"))
	if err := a.PublishEndpoint(netip.MustParseAddr("10.90.0.6"), 302); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a's writes", func() bool { return a.Status().Queued == 0 })
	cli := e.newClient()
	defer cli.Close()
	resp, err := cli.Get(ctxT(t), "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctxT(t), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	p.setCut(false)
	want := map[netip.Prefix]RemoteEntry{host("10.90.0.6"): {Identity: 302, Node: "a", NodeIP: ipA}}
	eventually(t, "b to list again", func() bool {
		_, replaces := sink.snapshot()
		return sink.equals(want) && replaces == 2
	})
	got, replaces := sink.snapshot()
	if fmt.Sprint(got) != fmt.Sprint(want) || replaces != 2 {
		t.Fatalf("view %v after %d replaces", got, replaces)
	}
}

// IPv6 endpoints and blocks of another node reach the remote view, /128
// and /112, with that node's IPv4 tunnel endpoint.
func TestRemoteViewHoldsIPv6EndpointsAndBlocks(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: ipA.String(), endpoint: e.client})
	b := connectNode(t, nodeOpts{name: "b", ip: ipB.String(), endpoint: e.client})
	waitConnected(t, a)
	waitConnected(t, b)
	sink := watchRemote(t, b)
	net6 := netip.MustParsePrefix("fd00:93::/64")
	blockA := claim(t, a, net6)
	claim(t, b, net6)
	ep := netip.MustParseAddr("fd00:93::5")
	if err := a.PublishEndpoint(ep, 300); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"fe80::1", "ff02::1", "::"} {
		if err := a.PublishEndpoint(netip.MustParseAddr(bad), 300); err == nil {
			t.Errorf("%s was published as an endpoint", bad)
		}
	}
	want := map[netip.Prefix]RemoteEntry{
		blockA:                    {Identity: identity.World, Node: "a", NodeIP: ipA},
		netip.PrefixFrom(ep, 128): {Identity: 300, Node: "a", NodeIP: ipA},
	}
	eventually(t, "b's view of a's IPv6 endpoint and block", func() bool { return sink.equals(want) })
	a.WithdrawEndpoint(ep)
	delete(want, netip.PrefixFrom(ep, 128))
	eventually(t, "the withdrawal of an IPv6 endpoint", func() bool { return sink.equals(want) })
}
