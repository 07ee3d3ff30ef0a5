package ipam

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
)

// fakeBlocks hands out the third /24 of every subnet (the third /112 of an
// IPv6 one), as a cluster whose first two blocks other nodes hold would,
// and a subnet no bigger than a block whole.
type fakeBlocks struct {
	claimed  map[netip.Prefix]netip.Prefix
	networks []netip.Prefix
	failNext error
}

func newFakeBlocks() *fakeBlocks { return &fakeBlocks{claimed: map[netip.Prefix]netip.Prefix{}} }

func (f *fakeBlocks) ClaimBlock(_ context.Context, subnet netip.Prefix) (netip.Prefix, error) {
	if err := f.failNext; err != nil {
		f.failNext = nil
		return netip.Prefix{}, err
	}
	block := subnet
	switch {
	case subnet.Addr().Is6() && subnet.Bits() < 112:
		a := subnet.Addr().As16()
		a[13] += 2
		block = netip.PrefixFrom(netip.AddrFrom16(a), 112)
	case subnet.Addr().Is4() && subnet.Bits() < 24:
		a := subnet.Addr().As4()
		a[2] += 2
		block = netip.PrefixFrom(netip.AddrFrom4(a), 24)
	}
	f.claimed[subnet] = block
	return block, nil
}

func (f *fakeBlocks) ReleaseBlock(_ context.Context, subnet netip.Prefix) error {
	if err := f.failNext; err != nil {
		f.failNext = nil
		return err
	}
	delete(f.claimed, subnet)
	return nil
}

func (f *fakeBlocks) Networks(context.Context) ([]netip.Prefix, error) { return f.networks, nil }

func TestClusterPoolHandsOutFromItsBlock(t *testing.T) {
	blocks := newFakeBlocks()
	path := filepath.Join(t.TempDir(), "ipam.json")
	d := newTestDriver(t, Config{StatePath: path, Blocks: blocks})
	pool := requestPool(t, d, "10.90.0.0/16", "")
	if blocks.claimed[netip.MustParsePrefix("10.90.0.0/16")] != netip.MustParsePrefix("10.90.2.0/24") {
		t.Fatalf("claimed %v", blocks.claimed)
	}
	// The gateway is the network's, the same on every node; containers
	// get addresses of the block.
	mustAddr(t, d, pool.PoolID, "", true, "10.90.0.1/16")
	// The block's first address is kept back: it looks like a network's.
	mustAddr(t, d, pool.PoolID, "", false, "10.90.2.1/16")
	mustAddr(t, d, pool.PoolID, "10.90.2.77", false, "10.90.2.77/16")
	if _, err := requestAddr(d, pool.PoolID, "10.90.1.5", false); err == nil || !strings.Contains(err.Error(), "outside this node's block 10.90.2.0/24") {
		t.Fatalf("an address of another node's block: %v", err)
	}
	// An --ip-range has no place in a cluster network.
	if _, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.91.0.0/16", SubPool: "10.91.1.0/24"}); err == nil {
		t.Fatal("an ip-range was accepted on a cluster network")
	}
	// Restarted, with or without the cluster, the pool keeps its block.
	again := newTestDriver(t, Config{StatePath: path})
	if _, err := requestAddr(again, pool.PoolID, "10.90.1.5", false); err == nil {
		t.Fatal("after a restart an address of another node's block was handed out")
	}
	mustAddr(t, again, pool.PoolID, "", false, "10.90.2.2/16")
}

func TestClusterPoolRelease(t *testing.T) {
	blocks := newFakeBlocks()
	d := newTestDriver(t, Config{Blocks: blocks})
	pool := requestPool(t, d, "10.90.0.0/16", "")
	blocks.failNext = errors.New("etcd unreachable")
	if err := d.ReleasePool(&ipamapi.ReleasePoolRequest{PoolID: pool.PoolID}); err == nil {
		t.Fatal("the release succeeded although the block could not be given back")
	}
	if len(d.Pools()) != 1 {
		t.Fatal("the pool went although its block stayed claimed")
	}
	if err := d.ReleasePool(&ipamapi.ReleasePoolRequest{PoolID: pool.PoolID}); err != nil {
		t.Fatal(err)
	}
	if len(d.Pools()) != 0 || len(blocks.claimed) != 0 {
		t.Fatalf("after the release: pools %v, blocks %v", d.Pools(), blocks.claimed)
	}
}

func TestClusterPoolClaimFailureChangesNothing(t *testing.T) {
	blocks := newFakeBlocks()
	d := newTestDriver(t, Config{Blocks: blocks})
	blocks.failNext = errors.New("subnet 10.90.0.0/16 overlaps cluster network 10.90.0.0/15")
	if _, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.90.0.0/16"}); err == nil ||
		!strings.Contains(err.Error(), "overlaps cluster network") {
		t.Fatalf("err = %v", err)
	}
	if len(d.Pools()) != 0 {
		t.Fatal("a pool was registered without its block")
	}
	// A local overlap is refused before the cluster is asked.
	requestPool(t, d, "10.92.0.0/16", "")
	delete(blocks.claimed, netip.MustParsePrefix("10.92.0.0/16"))
	if _, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.92.0.0/24"}); err == nil {
		t.Fatal("an overlapping subnet was accepted")
	}
	if len(blocks.claimed) != 0 {
		t.Fatalf("a block was claimed for a refused pool: %v", blocks.claimed)
	}
}

// A pool without --subnet avoids the cluster's networks, even those this
// node does not have.
func TestCarvedClusterPoolAvoidsClusterNetworks(t *testing.T) {
	blocks := newFakeBlocks()
	blocks.networks = []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}
	d := newTestDriver(t, Config{Blocks: blocks, DefaultPools: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/16")}})
	res, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace})
	if err != nil {
		t.Fatal(err)
	}
	if res.Pool != "10.200.1.0/24" {
		t.Fatalf("carved %s, want 10.200.1.0/24 past the cluster's 10.200.0.0/24", res.Pool)
	}
}

// An IPv6 cluster network: the gateway is the network's, containers get
// addresses of the node's /112 block, its edges kept back.
func TestClusterIPv6PoolHandsOutFromItsBlock(t *testing.T) {
	blocks := newFakeBlocks()
	d := newTestDriver(t, Config{StatePath: filepath.Join(t.TempDir(), "ipam.json"), Blocks: blocks})
	pool := requestPool6(t, d, "fd00:90::/64", "")
	if blocks.claimed[netip.MustParsePrefix("fd00:90::/64")] != netip.MustParsePrefix("fd00:90::2:0/112") {
		t.Fatalf("claimed %v", blocks.claimed)
	}
	mustAddr(t, d, pool.PoolID, "", true, "fd00:90::1/64")
	mustAddr(t, d, pool.PoolID, "", false, "fd00:90::2:1/64")
	if _, err := requestAddr(d, pool.PoolID, "fd00:90::1:5", false); err == nil || !strings.Contains(err.Error(), "outside this node's block fd00:90::2:0/112") {
		t.Fatalf("an address of another node's IPv6 block: %v", err)
	}
}
