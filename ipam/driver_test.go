package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/ebpfnet/ebpfnet/atomicfile"
)

func newTestDriver(t *testing.T, cfg Config) *Driver {
	t.Helper()
	if cfg.StatePath == "" {
		cfg.StatePath = filepath.Join(t.TempDir(), "ipam.json")
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func requestPool(t *testing.T, d *Driver, pool, sub string) *ipamapi.RequestPoolResponse {
	t.Helper()
	res, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: pool, SubPool: sub})
	if err != nil {
		t.Fatalf("RequestPool(%q, %q): %v", pool, sub, err)
	}
	return res
}

func requestAddr(d *Driver, id, addr string, gateway bool) (string, error) {
	req := &ipamapi.RequestAddressRequest{PoolID: id, Address: addr}
	if gateway {
		req.Options = map[string]string{RequestAddressTypeOption: GatewayAddressType}
	}
	res, err := d.RequestAddress(req)
	if err != nil {
		return "", err
	}
	return res.Address, nil
}

func mustAddr(t *testing.T, d *Driver, id, addr string, gateway bool, want string) {
	t.Helper()
	got, err := requestAddr(d, id, addr, gateway)
	if err != nil {
		t.Fatalf("RequestAddress(%q, %q, gateway=%v): %v", id, addr, gateway, err)
	}
	if got != want {
		t.Fatalf("RequestAddress(%q, %q, gateway=%v) = %s, want %s", id, addr, gateway, got, want)
	}
}

func release(t *testing.T, d *Driver, id, addr string) {
	t.Helper()
	if err := d.ReleaseAddress(&ipamapi.ReleaseAddressRequest{PoolID: id, Address: addr}); err != nil {
		t.Fatalf("ReleaseAddress(%q, %q): %v", id, addr, err)
	}
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %q", want)
	}
	if err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}

func addrs(ss ...string) []netip.Addr {
	out := []netip.Addr{}
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestCapabilitiesAndAddressSpaces(t *testing.T) {
	d := newTestDriver(t, Config{})
	caps, err := d.GetCapabilities()
	if err != nil || caps.RequiresMACAddress {
		t.Fatalf("GetCapabilities = %+v, %v", caps, err)
	}
	as, err := d.GetDefaultAddressSpaces()
	if err != nil {
		t.Fatal(err)
	}
	want := ipamapi.AddressSpacesResponse{LocalDefaultAddressSpace: "ebpfnet-local", GlobalDefaultAddressSpace: "ebpfnet-global"}
	if *as != want {
		t.Fatalf("GetDefaultAddressSpaces = %+v, want %+v", *as, want)
	}
}

func TestRequestPoolBoundsAndValidation(t *testing.T) {
	d := newTestDriver(t, Config{})
	res := requestPool(t, d, "10.0.0.0/8", "")
	if res.PoolID != "ebpfnet-local/10.0.0.0/8" || res.Pool != "10.0.0.0/8" {
		t.Fatalf("RequestPool /8 = %+v", res)
	}
	res = requestPool(t, d, "192.168.7.4/30", "")
	if res.PoolID != "ebpfnet-local/192.168.7.4/30" || res.Pool != "192.168.7.4/30" {
		t.Fatalf("RequestPool /30 = %+v", res)
	}

	cases := []struct {
		req  ipamapi.RequestPoolRequest
		want string
	}{
		{ipamapi.RequestPoolRequest{Pool: "12.0.0.0/7"}, "subnet 12.0.0.0/7 is not supported: the prefix length must be between /8 and /30"},
		{ipamapi.RequestPoolRequest{Pool: "192.168.8.0/31"}, "subnet 192.168.8.0/31 is not supported: the prefix length must be between /8 and /30"},
		{ipamapi.RequestPoolRequest{Pool: "192.168.8.1/32"}, "subnet 192.168.8.1/32 is not supported: the prefix length must be between /8 and /30"},
		{ipamapi.RequestPoolRequest{Pool: "10.77.0.5/16"}, "invalid subnet 10.77.0.5/16: it should be 10.77.0.0/16"},
		{ipamapi.RequestPoolRequest{Pool: "fd00::/64"}, "subnet fd00::/64 is not an IPv4 subnet, which Docker asked for"},
		{ipamapi.RequestPoolRequest{Pool: "10.9.0.0/16", V6: true}, "subnet 10.9.0.0/16 is not an IPv6 subnet, which Docker asked for"},
		{ipamapi.RequestPoolRequest{Pool: "fd00::/8", V6: true}, "subnet fd00::/8 is not supported: the prefix length must be between /16 and /126"},
		{ipamapi.RequestPoolRequest{Pool: "fd00::/127", V6: true}, "subnet fd00::/127 is not supported: the prefix length must be between /16 and /126"},
		{ipamapi.RequestPoolRequest{Pool: "::ffff:10.0.0.0/104", V6: true}, "invalid subnet ::ffff:10.0.0.0/104: an IPv4-mapped prefix is neither an IPv4 nor an IPv6 pool"},
		{ipamapi.RequestPoolRequest{Pool: "fd00:1::/64", SubPool: "10.0.0.0/24", V6: true}, "ip-range 10.0.0.0/24 is not within subnet fd00:1::/64"},
		{ipamapi.RequestPoolRequest{Pool: "bogus"}, `invalid subnet "bogus": netip.ParsePrefix("bogus"): no '/'`},
		{ipamapi.RequestPoolRequest{AddressSpace: "LocalDefault", Pool: "172.30.0.0/16"}, `unknown address space "LocalDefault": ebpfnet serves ebpfnet-local and ebpfnet-global`},
		{ipamapi.RequestPoolRequest{Pool: "172.30.0.0/16", SubPool: "172.31.0.0/24"}, "ip-range 172.31.0.0/24 is not within subnet 172.30.0.0/16"},
		{ipamapi.RequestPoolRequest{Pool: "172.30.0.0/16", SubPool: "172.30.0.0/15"}, "ip-range 172.30.0.0/15 is not within subnet 172.30.0.0/16"},
		{ipamapi.RequestPoolRequest{Pool: "172.30.0.0/16", SubPool: "172.30.0.0/8"}, "invalid ip-range 172.30.0.0/8: it should be 172.0.0.0/8"},
		{ipamapi.RequestPoolRequest{Pool: "172.30.0.0/16", SubPool: "172.28.0.0/14"}, "ip-range 172.28.0.0/14 is not within subnet 172.30.0.0/16"},
		{ipamapi.RequestPoolRequest{Pool: "172.30.0.0/16", SubPool: "172.30.1.5/24"}, "invalid ip-range 172.30.1.5/24: it should be 172.30.1.0/24"},
		{ipamapi.RequestPoolRequest{SubPool: "172.30.1.0/24"}, "ip-range 172.30.1.0/24 needs a subnet"},
	}
	for _, c := range cases {
		if c.req.AddressSpace == "" {
			c.req.AddressSpace = LocalAddressSpace
		}
		_, err := d.RequestPool(&c.req)
		wantErr(t, err, c.want)
	}
	if got := len(d.Pools()); got != 2 {
		t.Fatalf("%d pools after refused requests, want 2", got)
	}
}

func TestSlash8Addresses(t *testing.T) {
	d := newTestDriver(t, Config{})
	id := requestPool(t, d, "10.0.0.0/8", "").PoolID
	mustAddr(t, d, id, "", true, "10.0.0.1/8")
	mustAddr(t, d, id, "", false, "10.0.0.2/8")
	mustAddr(t, d, id, "10.255.255.254", false, "10.255.255.254/8")
	_, err := requestAddr(d, id, "10.255.255.255", false)
	wantErr(t, err, "address 10.255.255.255 is the broadcast address of pool 10.0.0.0/8")
	_, err = requestAddr(d, id, "10.0.0.0", false)
	wantErr(t, err, "address 10.0.0.0 is the network address of pool 10.0.0.0/8")
	mustAddr(t, d, id, "", false, "10.0.0.3/8")
}

func TestGatewayDefaultAndExplicit(t *testing.T) {
	d := newTestDriver(t, Config{})
	id := requestPool(t, d, "10.77.0.0/16", "").PoolID
	mustAddr(t, d, id, "", true, "10.77.0.1/16")
	mustAddr(t, d, id, "", false, "10.77.0.2/16")
	if gw := d.Pools()[0].Gateway; gw != netip.MustParseAddr("10.77.0.1") {
		t.Fatalf("gateway = %s, want 10.77.0.1", gw)
	}

	id2 := requestPool(t, d, "10.78.0.0/16", "").PoolID
	mustAddr(t, d, id2, "10.78.0.254", true, "10.78.0.254/16")
	// An explicit reservation does not move the sequence, so the first
	// container gets the first usable address.
	mustAddr(t, d, id2, "", false, "10.78.0.1/16")
	if gw := d.Pools()[1].Gateway; gw != netip.MustParseAddr("10.78.0.254") {
		t.Fatalf("gateway = %s, want 10.78.0.254", gw)
	}
	// The default gateway is taken by a container here: a clear error.
	id3 := requestPool(t, d, "10.79.0.0/16", "").PoolID
	mustAddr(t, d, id3, "", false, "10.79.0.1/16")
	_, err := requestAddr(d, id3, "", true)
	wantErr(t, err, "address 10.79.0.1 is already in use on pool 10.79.0.0/16")
}

func TestSpecificAndAuxAddresses(t *testing.T) {
	d := newTestDriver(t, Config{})
	id := requestPool(t, d, "10.77.0.0/24", "").PoolID
	mustAddr(t, d, id, "", true, "10.77.0.1/24")
	mustAddr(t, d, id, "10.77.0.2", false, "10.77.0.2/24") // --aux-address
	mustAddr(t, d, id, "10.77.0.5", false, "10.77.0.5/24") // --ip
	mustAddr(t, d, id, "10.77.0.9/24", false, "10.77.0.9/24")

	for _, c := range []struct{ addr, want string }{
		{"10.77.0.5", "address 10.77.0.5 is already in use on pool 10.77.0.0/24"},
		{"10.77.0.1", "address 10.77.0.1 is already in use on pool 10.77.0.0/24"},
		{"10.78.0.5", "address 10.78.0.5 is not in pool 10.77.0.0/24"},
		{"fd00::5", "address fd00::5 is not in pool 10.77.0.0/24"},
		{"10.77.0.0", "address 10.77.0.0 is the network address of pool 10.77.0.0/24"},
		{"10.77.0.255", "address 10.77.0.255 is the broadcast address of pool 10.77.0.0/24"},
		{"nonsense", `invalid address "nonsense"`},
	} {
		_, err := requestAddr(d, id, c.addr, false)
		wantErr(t, err, c.want)
	}
	// Dynamic allocation skips the reserved addresses.
	mustAddr(t, d, id, "", false, "10.77.0.3/24")
	mustAddr(t, d, id, "", false, "10.77.0.4/24")
	mustAddr(t, d, id, "", false, "10.77.0.6/24")
	want := addrs("10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4", "10.77.0.5", "10.77.0.6", "10.77.0.9")
	if got := d.Pools()[0].Addresses; !reflect.DeepEqual(got, want) {
		t.Fatalf("addresses = %v, want %v", got, want)
	}
	_, err := requestAddr(d, "ebpfnet-local/10.99.0.0/16", "", false)
	wantErr(t, err, `unknown pool ID "ebpfnet-local/10.99.0.0/16"`)
}

func TestIPRange(t *testing.T) {
	d := newTestDriver(t, Config{})
	res := requestPool(t, d, "10.77.0.0/16", "10.77.1.0/24")
	if res.PoolID != "ebpfnet-local/10.77.0.0/16/10.77.1.0/24" || res.Pool != "10.77.0.0/16" {
		t.Fatalf("RequestPool = %+v", res)
	}
	// The gateway is the subnet's first address, outside the range.
	mustAddr(t, d, res.PoolID, "", true, "10.77.0.1/16")
	mustAddr(t, d, res.PoolID, "", false, "10.77.1.0/16")
	mustAddr(t, d, res.PoolID, "", false, "10.77.1.1/16")
	// --ip may lie outside the range but inside the subnet.
	mustAddr(t, d, res.PoolID, "10.77.200.7", false, "10.77.200.7/16")
	info := d.Pools()[0]
	if info.SubPool != netip.MustParsePrefix("10.77.1.0/24") {
		t.Fatalf("SubPool = %s", info.SubPool)
	}

	small := requestPool(t, d, "10.88.0.0/24", "10.88.0.4/31")
	mustAddr(t, d, small.PoolID, "", false, "10.88.0.4/24")
	mustAddr(t, d, small.PoolID, "", false, "10.88.0.5/24")
	_, err := requestAddr(d, small.PoolID, "", false)
	wantErr(t, err, "no free address left in ip-range 10.88.0.4/31 of pool 10.88.0.0/24")
	mustAddr(t, d, small.PoolID, "10.88.0.6", false, "10.88.0.6/24")

	// A range at the end of the pool never yields the broadcast address.
	edge := requestPool(t, d, "10.89.0.0/24", "10.89.0.254/31")
	mustAddr(t, d, edge.PoolID, "", false, "10.89.0.254/24")
	_, err = requestAddr(d, edge.PoolID, "", false)
	wantErr(t, err, "no free address left in ip-range 10.89.0.254/31 of pool 10.89.0.0/24")
}

func TestSlash30ExhaustionAndRelease(t *testing.T) {
	d := newTestDriver(t, Config{})
	id := requestPool(t, d, "10.77.0.0/30", "").PoolID
	mustAddr(t, d, id, "", true, "10.77.0.1/30")
	mustAddr(t, d, id, "", false, "10.77.0.2/30")
	_, err := requestAddr(d, id, "", false)
	wantErr(t, err, "no free address left in pool 10.77.0.0/30")
	release(t, d, id, "10.77.0.2")
	mustAddr(t, d, id, "", false, "10.77.0.2/30")
}

func TestSequentialWithWrap(t *testing.T) {
	d := newTestDriver(t, Config{})
	id := requestPool(t, d, "10.77.0.0/29", "").PoolID // usable .1 to .6
	mustAddr(t, d, id, "", true, "10.77.0.1/29")
	mustAddr(t, d, id, "", false, "10.77.0.2/29")
	mustAddr(t, d, id, "", false, "10.77.0.3/29")
	mustAddr(t, d, id, "", false, "10.77.0.4/29")
	release(t, d, id, "10.77.0.3/29")
	// A released address is not handed out again at once.
	mustAddr(t, d, id, "", false, "10.77.0.5/29")
	mustAddr(t, d, id, "", false, "10.77.0.6/29")
	// Past the end the search wraps and finds the released one.
	mustAddr(t, d, id, "", false, "10.77.0.3/29")
	_, err := requestAddr(d, id, "", false)
	wantErr(t, err, "no free address left in pool 10.77.0.0/29")
}

func TestReleaseIsIdempotent(t *testing.T) {
	d := newTestDriver(t, Config{})
	id := requestPool(t, d, "10.77.0.0/24", "").PoolID
	mustAddr(t, d, id, "", true, "10.77.0.1/24")
	mustAddr(t, d, id, "", false, "10.77.0.2/24")
	release(t, d, id, "10.77.0.1")
	release(t, d, id, "10.77.0.1")
	release(t, d, id, "10.77.0.50")
	release(t, d, "ebpfnet-local/10.99.0.0/16", "10.99.0.1")
	info := d.Pools()[0]
	if info.Gateway.IsValid() || !reflect.DeepEqual(info.Addresses, addrs("10.77.0.2")) {
		t.Fatalf("after releasing the gateway: gateway=%s addresses=%v", info.Gateway, info.Addresses)
	}
	err := d.ReleaseAddress(&ipamapi.ReleaseAddressRequest{PoolID: id, Address: "x"})
	wantErr(t, err, `invalid address "x"`)

	if err := d.ReleasePool(&ipamapi.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatal(err)
	}
	if err := d.ReleasePool(&ipamapi.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatalf("second ReleasePool: %v", err)
	}
	if n := len(d.Pools()); n != 0 {
		t.Fatalf("%d pools after release, want 0", n)
	}
	_, err = requestAddr(d, id, "", false)
	wantErr(t, err, `unknown pool ID "ebpfnet-local/10.77.0.0/24"`)
	// The subnet is free again, with none of its old addresses.
	id = requestPool(t, d, "10.77.0.0/24", "").PoolID
	mustAddr(t, d, id, "10.77.0.2", false, "10.77.0.2/24")
}

func TestOverlapRefused(t *testing.T) {
	d := newTestDriver(t, Config{})
	requestPool(t, d, "10.77.0.0/16", "")
	requestPool(t, d, "10.88.128.0/17", "")
	for _, c := range []struct {
		space, pool, want string
	}{
		{LocalAddressSpace, "10.77.128.0/17", "subnet 10.77.128.0/17 overlaps 10.77.0.0/16 of an existing ebpfnet network"},
		{LocalAddressSpace, "10.88.0.0/16", "subnet 10.88.0.0/16 overlaps 10.88.128.0/17 of an existing ebpfnet network"},
		{LocalAddressSpace, "10.77.0.0/16", "subnet 10.77.0.0/16 overlaps 10.77.0.0/16 of an existing ebpfnet network"},
		{GlobalAddressSpace, "10.77.5.0/24", "subnet 10.77.5.0/24 overlaps 10.77.0.0/16 of an existing ebpfnet network"},
	} {
		_, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: c.space, Pool: c.pool})
		wantErr(t, err, c.want)
	}
	res, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: GlobalAddressSpace, Pool: "10.78.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	if res.PoolID != "ebpfnet-global/10.78.0.0/16" {
		t.Fatalf("PoolID = %s", res.PoolID)
	}
}

func TestDefaultPoolSkipsHostRoutesAndPools(t *testing.T) {
	routes := []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("10.200.0.0/24"),
		netip.MustParsePrefix("10.200.2.0/23"),
		netip.MustParsePrefix("192.168.1.0/24"),
	}
	var routesErr error
	d := newTestDriver(t, Config{
		DefaultPools: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/21"), netip.MustParsePrefix("172.31.0.0/16")},
		HostRoutes:   func() ([]netip.Prefix, error) { return routes, routesErr },
	})
	requestPool(t, d, "10.200.1.0/24", "")
	requestPool(t, d, "10.200.5.0/25", "")
	for _, want := range []string{"10.200.4.0/24", "10.200.6.0/24", "10.200.7.0/24", "172.31.0.0/24"} {
		res := requestPool(t, d, "", "")
		if res.Pool != want || res.PoolID != "ebpfnet-local/"+want {
			t.Fatalf("default pool = %+v, want %s", res, want)
		}
	}
	routesErr = errors.New("netlink down")
	_, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace})
	wantErr(t, err, "list host routes to choose a free subnet: netlink down")
	if n := len(d.Pools()); n != 6 {
		t.Fatalf("%d pools, want 6", n)
	}
}

func TestDefaultPoolExhausted(t *testing.T) {
	d := newTestDriver(t, Config{
		DefaultPools:    []netip.Prefix{netip.MustParsePrefix("10.201.0.0/23")},
		DefaultPoolSize: 24,
		HostRoutes: func() ([]netip.Prefix, error) {
			return []netip.Prefix{netip.MustParsePrefix("10.201.0.0/24")}, nil
		},
	})
	if got := requestPool(t, d, "", "").Pool; got != "10.201.1.0/24" {
		t.Fatalf("default pool = %s, want 10.201.1.0/24", got)
	}
	_, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace})
	wantErr(t, err, "no free /24 left in the default pools 10.201.0.0/23: every block overlaps an ebpfnet network or a host route; pass --subnet")
}

// TestAnyPrefixOfASize: Docker 29 passes `--subnet 0.0.0.0/N` on as it is;
// the pool is a free /N of the default pools, past host routes and pools.
func TestAnyPrefixOfASize(t *testing.T) {
	d := newTestDriver(t, Config{
		DefaultPools: []netip.Prefix{netip.MustParsePrefix("10.202.0.0/16")},
		HostRoutes: func() ([]netip.Prefix, error) {
			return []netip.Prefix{netip.MustParsePrefix("10.202.0.0/24")}, nil
		},
	})
	for _, c := range []struct{ pool, want string }{
		{"0.0.0.0/24", "10.202.1.0/24"},
		{"0.0.0.0/28", "10.202.2.0/28"},
		{"0.0.0.0/20", "10.202.16.0/20"},
		{"", "10.202.3.0/24"},
	} {
		res := requestPool(t, d, c.pool, "")
		if res.Pool != c.want || res.PoolID != "ebpfnet-local/"+c.want {
			t.Errorf("RequestPool(%q) = %+v, want %s", c.pool, res, c.want)
		}
	}
	mustAddr(t, d, "ebpfnet-local/10.202.1.0/24", "", true, "10.202.1.1/24")
	for _, c := range []struct{ pool, sub, want string }{
		{"0.0.0.0/8", "", "no free /8 left in the default pools 10.202.0.0/16: every block overlaps an ebpfnet network or a host route; pass --subnet"},
		{"0.0.0.0/31", "", "subnet 0.0.0.0/31 is not supported: the prefix length must be between /8 and /30"},
		{"0.0.0.0/24", "0.0.0.0/25", "ip-range 0.0.0.0/25 needs a subnet"},
	} {
		_, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: c.pool, SubPool: c.sub})
		wantErr(t, err, c.want)
	}
	if n := len(d.Pools()); n != 4 {
		t.Errorf("%d pools after the refused requests, want 4", n)
	}
}

func TestDefaultPoolDefaults(t *testing.T) {
	d := newTestDriver(t, Config{})
	if got := requestPool(t, d, "", "").Pool; got != "10.200.0.0/24" {
		t.Fatalf("default pool = %s, want 10.200.0.0/24", got)
	}
	if got := requestPool(t, d, "", "").Pool; got != "10.200.1.0/24" {
		t.Fatalf("second default pool = %s, want 10.200.1.0/24", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "ipam: StatePath or Store is required"},
		{Config{StatePath: filepath.Join(dir, "a"), DefaultPoolSize: 31}, "ipam: default pool size /31 must be between /8 and /30"},
		{Config{StatePath: filepath.Join(dir, "a"), DefaultPools: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/16")}}, "ipam: default pool 10.0.0.1/16 must be a canonical IPv4 prefix"},
		{Config{StatePath: filepath.Join(dir, "a"), DefaultPools: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/25")}}, "ipam: default pool 10.0.0.0/25 is smaller than the default pool size /24"},
	} {
		_, err := New(c.cfg)
		wantErr(t, err, c.want)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ipam.json")
	d := newTestDriver(t, Config{StatePath: path})
	a := requestPool(t, d, "10.77.0.0/16", "10.77.1.0/24").PoolID
	mustAddr(t, d, a, "", true, "10.77.0.1/16")
	mustAddr(t, d, a, "", false, "10.77.1.0/16")
	mustAddr(t, d, a, "", false, "10.77.1.1/16")
	mustAddr(t, d, a, "10.77.9.9", false, "10.77.9.9/16")
	release(t, d, a, "10.77.1.1")
	b := requestPool(t, d, "", "").PoolID
	mustAddr(t, d, b, "", false, "10.200.0.1/24")
	before := d.Pools()

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, want 0600", st.Mode().Perm())
	}

	d2 := newTestDriver(t, Config{StatePath: path})
	after := d2.Pools()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("after restart:\n%+v\nwant\n%+v", after, before)
	}
	wantGW := netip.MustParseAddr("10.77.0.1")
	if after[0].Gateway != wantGW || after[1].Gateway.IsValid() {
		t.Fatalf("gateways after restart: %s, %s", after[0].Gateway, after[1].Gateway)
	}
	// The sequence continues where it stopped: the released 10.77.1.1 is
	// not handed out first.
	mustAddr(t, d2, a, "", false, "10.77.1.2/16")
	_, err = d2.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.77.0.0/16"})
	wantErr(t, err, "subnet 10.77.0.0/16 overlaps 10.77.0.0/16 of an existing ebpfnet network")
	if got := requestPool(t, d2, "", "").Pool; got != "10.200.1.0/24" {
		t.Fatalf("default pool after restart = %s, want 10.200.1.0/24", got)
	}
}

func TestCorruptStateIsAnError(t *testing.T) {
	for _, c := range []struct {
		name, content, want string
	}{
		{"garbage", "{not json", "invalid character 'n' looking for beginning of object key string"},
		{"empty", "", "unexpected end of JSON input"},
		{"version", `{"version":2,"pools":[]}`, "version 2, want 1"},
		{"address outside pool", `{"version":1,"pools":[{"id":"ebpfnet-local/10.77.0.0/24","addressSpace":"ebpfnet-local","pool":"10.77.0.0/24","subPool":"","gateway":"","last":"","addresses":["10.78.0.1"]}]}`,
			`pool 0 ("ebpfnet-local/10.77.0.0/24"): address 10.78.0.1 is not in pool 10.77.0.0/24`},
		{"duplicate address", `{"version":1,"pools":[{"id":"ebpfnet-local/10.77.0.0/24","addressSpace":"ebpfnet-local","pool":"10.77.0.0/24","subPool":"","gateway":"","last":"","addresses":["10.77.0.1","10.77.0.1"]}]}`,
			`pool 0 ("ebpfnet-local/10.77.0.0/24"): address 10.77.0.1 is already in use on pool 10.77.0.0/24`},
		{"overlap", `{"version":1,"pools":[{"id":"ebpfnet-local/10.77.0.0/24","addressSpace":"ebpfnet-local","pool":"10.77.0.0/24","subPool":"","gateway":"","last":"","addresses":[]},{"id":"ebpfnet-local/10.77.0.0/16","addressSpace":"ebpfnet-local","pool":"10.77.0.0/16","subPool":"","gateway":"","last":"","addresses":[]}]}`,
			`pool 1 ("ebpfnet-local/10.77.0.0/16"): subnet 10.77.0.0/16 overlaps 10.77.0.0/24 of an existing ebpfnet network`},
		{"wrong id", `{"version":1,"pools":[{"id":"x","addressSpace":"ebpfnet-local","pool":"10.77.0.0/24","subPool":"","gateway":"","last":"","addresses":[]}]}`,
			`pool 0 ("x"): pool ID "x" does not match its pool, want "ebpfnet-local/10.77.0.0/24"`},
		{"gateway not allocated", `{"version":1,"pools":[{"id":"ebpfnet-local/10.77.0.0/24","addressSpace":"ebpfnet-local","pool":"10.77.0.0/24","subPool":"","gateway":"10.77.0.1","last":"","addresses":[]}]}`,
			`pool 0 ("ebpfnet-local/10.77.0.0/24"): gateway 10.77.0.1 is not among the allocated addresses`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ipam.json")
			if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := New(Config{StatePath: path})
			wantErr(t, err, fmt.Sprintf("ipam: IPAM state file %s is corrupt: %s", path, c.want))
			if !errors.Is(err, atomicfile.ErrCorrupt) {
				t.Fatalf("%v is not atomicfile.ErrCorrupt", err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.content {
				t.Fatalf("state file changed to %q", got)
			}
		})
	}
}

func TestFailedPersistChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "ipam.json")
	d := newTestDriver(t, Config{StatePath: path})
	id := requestPool(t, d, "10.77.0.0/29", "").PoolID
	mustAddr(t, d, id, "", false, "10.77.0.1/29")
	mustAddr(t, d, id, "", false, "10.77.0.2/29")
	before := d.Pools()

	// Replace the directory by a regular file: every write now fails with
	// ENOTDIR, even for root, which ignores permission bits.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(op string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "persist IPAM state") {
			t.Fatalf("%s: error %v, want a persist failure", op, err)
		}
		if after := d.Pools(); !reflect.DeepEqual(after, before) {
			t.Fatalf("%s changed memory despite the failed write:\n%+v\nwant\n%+v", op, after, before)
		}
	}
	_, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.78.0.0/16"})
	check("RequestPool", err)
	_, err = d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace})
	check("RequestPool default", err)
	_, err = requestAddr(d, id, "10.77.0.6", true)
	check("RequestAddress gateway", err)
	_, err = requestAddr(d, id, "", false)
	check("RequestAddress", err)
	_, err = requestAddr(d, id, "10.77.0.5", false)
	check("RequestAddress --ip", err)
	check("ReleaseAddress", d.ReleaseAddress(&ipamapi.ReleaseAddressRequest{PoolID: id, Address: "10.77.0.2"}))
	check("ReleasePool", d.ReleasePool(&ipamapi.ReleasePoolRequest{PoolID: id}))

	// Once the directory is back, the sequence continues as if the failed
	// requests never happened: 10.77.0.3 was not consumed.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	mustAddr(t, d, id, "", false, "10.77.0.3/29")
	if gw := d.Pools()[0].Gateway; gw.IsValid() {
		t.Fatalf("gateway %s survived a failed request", gw)
	}
}

func TestConcurrentRequestsGetDistinctAddresses(t *testing.T) {
	d := newTestDriver(t, Config{})
	id := requestPool(t, d, "10.77.0.0/16", "").PoolID
	const workers, each = 16, 16
	results := make(chan string, workers*each)
	errs := make(chan error, workers*each)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				a, err := requestAddr(d, id, "", false)
				if err != nil {
					errs <- err
					continue
				}
				results <- a
			}
		}()
	}
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for a := range results {
		if seen[a] {
			t.Fatalf("address %s handed out twice", a)
		}
		seen[a] = true
	}
	if len(seen) != workers*each {
		t.Fatalf("%d distinct addresses, want %d", len(seen), workers*each)
	}
	// Sequential allocation means the set is exactly .0.1 to .1.0.
	for i := 1; i <= workers*each; i++ {
		want := netip.PrefixFrom(addrPlus(netip.MustParseAddr("10.77.0.0"), i), 16).String()
		if !seen[want] {
			t.Fatalf("%s not allocated", want)
		}
	}
	if n := len(d.Pools()[0].Addresses); n != workers*each {
		t.Fatalf("Pools lists %d addresses, want %d", n, workers*each)
	}
}

// memStore is a Store in memory, to show that the Driver keeps its state
// wherever it is given one.
type memStore struct {
	st    State
	saves int
}

func (m *memStore) Load() (State, error) { return m.st, nil }
func (m *memStore) Save(st State) error  { m.st = st; m.saves++; return nil }

func TestStoreIsPluggable(t *testing.T) {
	store := &memStore{}
	d, err := New(Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.77.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.RequestAddress(&ipamapi.RequestAddressRequest{PoolID: pool.PoolID}); err != nil {
		t.Fatal(err)
	}
	if store.saves != 2 || len(store.st.Pools) != 1 || len(store.st.Pools[0].Addresses) != 1 {
		t.Fatalf("store after a pool and an address: %d saves, %+v", store.saves, store.st)
	}
	again, err := New(Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if pools := again.Pools(); len(pools) != 1 || len(pools[0].Addresses) != 1 {
		t.Fatalf("a driver on the same store holds %+v", pools)
	}
}

func requestPool6(t *testing.T, d *Driver, pool, sub string) *ipamapi.RequestPoolResponse {
	t.Helper()
	res, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: pool, SubPool: sub, V6: true})
	if err != nil {
		t.Fatalf("RequestPool(%q, %q, V6): %v", pool, sub, err)
	}
	return res
}

// IPv6 pools: a given subnet, one carved from the default ULA pool (past
// a host route and another pool), Docker 29's "any /64" (::/64); the
// gateway first, then sequential addresses, --ip6 anywhere in the pool but
// its subnet-router anycast address (there is no broadcast); an --ip-range;
// all of it persisted and read back by the next start beside an IPv4
// pool of the same network.
func TestIPv6Pools(t *testing.T) {
	state := filepath.Join(t.TempDir(), "ipam.json")
	routes := []netip.Prefix{netip.MustParsePrefix("fd00:ebbf::/64"), netip.MustParsePrefix("::/0")}
	cfg := Config{StatePath: state, HostRoutes: func() ([]netip.Prefix, error) { return routes, nil }}
	d := newTestDriver(t, cfg)
	v4 := requestPool(t, d, "10.80.0.0/24", "").PoolID
	given := requestPool6(t, d, "fd00:80::/64", "")
	if given.PoolID != "ebpfnet-local/fd00:80::/64" || given.Pool != "fd00:80::/64" {
		t.Fatalf("RequestPool fd00:80::/64 = %+v", given)
	}
	mustAddr(t, d, v4, "", true, "10.80.0.1/24")
	mustAddr(t, d, given.PoolID, "", true, "fd00:80::1/64")
	mustAddr(t, d, given.PoolID, "", false, "fd00:80::2/64")
	mustAddr(t, d, given.PoolID, "fd00:80::1:5", false, "fd00:80::1:5/64")
	mustAddr(t, d, given.PoolID, "fd00:80::ffff:ffff:ffff:ffff", false, "fd00:80::ffff:ffff:ffff:ffff/64")
	mustAddr(t, d, given.PoolID, "", false, "fd00:80::3/64")
	_, err := requestAddr(d, given.PoolID, "fd00:80::", false)
	wantErr(t, err, "address fd00:80:: is the network address of pool fd00:80::/64")
	_, err = requestAddr(d, given.PoolID, "10.80.0.9", false)
	wantErr(t, err, "address 10.80.0.9 is not in pool fd00:80::/64")
	_, err = d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "fd00:80::/48", V6: true})
	wantErr(t, err, "subnet fd00:80::/48 overlaps fd00:80::/64 of an existing ebpfnet network")

	carved := requestPool6(t, d, "", "")
	if carved.Pool != "fd00:ebbf:0:1::/64" {
		t.Errorf("carved %s, want fd00:ebbf:0:1::/64 (the first /64 is a host route)", carved.Pool)
	}
	anyPrefix := requestPool6(t, d, "::/64", "")
	if anyPrefix.Pool != "fd00:ebbf:0:2::/64" {
		t.Errorf("::/64 gave %s, want fd00:ebbf:0:2::/64", anyPrefix.Pool)
	}
	ranged := requestPool6(t, d, "fd00:81::/64", "fd00:81::100/120")
	mustAddr(t, d, ranged.PoolID, "", true, "fd00:81::1/64")
	mustAddr(t, d, ranged.PoolID, "", false, "fd00:81::100/64")
	release(t, d, given.PoolID, "fd00:80::2")
	mustAddr(t, d, given.PoolID, "", false, "fd00:80::4/64")

	again := newTestDriver(t, cfg)
	want := d.Pools()
	if got := again.Pools(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a restart:\n%+v\nwant\n%+v", got, want)
	}
	mustAddr(t, again, given.PoolID, "", false, "fd00:80::5/64")
	if err := again.ReleasePool(&ipamapi.ReleasePoolRequest{PoolID: carved.PoolID}); err != nil {
		t.Fatal(err)
	}
	if again := requestPool6(t, again, "", ""); again.Pool != carved.Pool {
		t.Errorf("after its release, the carved pool is not carved again: %s", again.Pool)
	}
}

// Default IPv6 pools are checked at start like the IPv4 ones.
func TestIPv6DefaultPoolConfig(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{DefaultPools6: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, "ipam: default IPv6 pool 10.0.0.0/8 must be a canonical IPv6 prefix"},
		{Config{DefaultPools6: []netip.Prefix{netip.MustParsePrefix("fd00:1::/72")}}, "ipam: default IPv6 pool fd00:1::/72 is smaller than the default IPv6 pool size /64"},
		{Config{DefaultPoolSize6: 8}, "ipam: default IPv6 pool size /8 must be between /16 and /126"},
	} {
		c.cfg.StatePath = filepath.Join(dir, "ipam.json")
		_, err := New(c.cfg)
		wantErr(t, err, c.want)
	}
	d := newTestDriver(t, Config{DefaultPools6: []netip.Prefix{netip.MustParsePrefix("fd12:3456::/56")}, DefaultPoolSize6: 80})
	if got := requestPool6(t, d, "", "").Pool; got != "fd12:3456::/80" {
		t.Errorf("carved %s from fd12:3456::/56 by /80", got)
	}
}

// countingStore is a FileStore that counts its durable and volatile saves.
type countingStore struct {
	FileStore
	durable, volatile int
}

func (c *countingStore) Save(st State) error {
	c.durable++
	return c.FileStore.Save(st)
}

func (c *countingStore) SaveVolatile(st State) error {
	c.volatile++
	return c.FileStore.SaveVolatile(st)
}

// Pools and gateways are saved durably, containers' addresses without
// waiting for the disk; both land in the file.
func TestAddressesAreSavedVolatile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	store := &countingStore{FileStore: FileStore{Path: path}}
	d := newTestDriver(t, Config{Store: store})
	pool := requestPool(t, d, "10.77.0.0/24", "")
	mustAddr(t, d, pool.PoolID, "", true, "10.77.0.1/24")
	mustAddr(t, d, pool.PoolID, "", false, "10.77.0.2/24")
	if err := d.ReleaseAddress(&ipamapi.ReleaseAddressRequest{PoolID: pool.PoolID, Address: "10.77.0.2"}); err != nil {
		t.Fatal(err)
	}
	mustAddr(t, d, pool.PoolID, "", false, "10.77.0.3/24")
	if store.durable != 2 || store.volatile != 3 {
		t.Fatalf("%d durable and %d volatile saves, want 2 (pool, gateway) and 3 (addresses)", store.durable, store.volatile)
	}
	again := newTestDriver(t, Config{StatePath: path})
	if pools := again.Pools(); len(pools) != 1 || len(pools[0].Addresses) != 2 {
		t.Fatalf("reloaded %+v", pools)
	}
}
