package plugin

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// testDaemon runs a real daemon in-process on private paths (its own
// sockets, state, bpffs directory and host device), so that it never meets a
// production daemon, and stops it when the test ends.
type testDaemon struct {
	cfg    Config
	client *http.Client
	daemon *Daemon
	// stop stops the daemon before the test ends; it runs at cleanup too,
	// and only once.
	stop func()
}

// testConfig is a daemon's Config on private paths: sockets, state and
// library under a temporary directory, and a bpffs directory and host
// device of a random name, so that it never meets a production daemon nor
// another test's.
func testConfig(tb testing.TB) Config {
	tb.Helper()
	suffix := randomHex(tb, 4)
	dir := tb.TempDir()
	return Config{
		PluginSocket:    filepath.Join(dir, "plugins", "ebpfnet-test.sock"),
		APISocket:       filepath.Join(dir, "run", "ebpfnet.sock"),
		StateDir:        filepath.Join(dir, "run", "state"),
		LibDir:          filepath.Join(dir, "lib"),
		PinDir:          "/sys/fs/bpf/ebpfnet-test-" + suffix,
		HostDevice:      "ebt" + suffix,
		DefaultPools:    []netip.Prefix{netip.MustParsePrefix("10.201.0.0/16")},
		DefaultPoolSize: 24,
		Version:         "test",
	}
}

// startTestDaemon starts a testDaemon; configure adjusts its Config first.
func startTestDaemon(tb testing.TB, configure ...func(*Config)) *testDaemon {
	tb.Helper()
	testutil.RequireRoot(tb)
	cfg := testConfig(tb)
	for _, c := range configure {
		c(&cfg)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	d, err := start(cfg, log)
	if err != nil {
		tb.Fatalf("start daemon: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("serve: %v", err)
			}
			removeHostSide(tb, d)
			d.close()
			os.RemoveAll(cfg.PinDir)
		})
	}
	tb.Cleanup(stop)
	td := &testDaemon{cfg: cfg, daemon: d, stop: stop, client: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", cfg.PluginSocket)
		},
	}}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(cfg.PluginSocket); err == nil {
			return td
		}
		if time.Now().After(deadline) {
			tb.Fatal("plugin socket did not appear")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// removeHostSide removes what the daemon still holds on the host, which
// Datapath.Close keeps (it outlives a daemon restart): the veths of live
// endpoints, and each network's gateway address on the host device and
// unreachable route, then the host device itself. A test that ran to its
// end removed them through the socket already; one that failed half-way
// must not leave them to the next.
func removeHostSide(tb testing.TB, d *Daemon) {
	tb.Helper()
	for _, ep := range d.datapath.Endpoints() {
		if err := deleteLink(ep.IfName); err != nil {
			tb.Errorf("remove endpoint %d's veth: %v", ep.ID, err)
		}
	}
	for _, n := range d.driver.Networks() {
		dn := datapath.Network{Index: n.Index}
		// Either family may be absent ("").
		dn.Subnet, _ = netip.ParsePrefix(n.Subnet)
		dn.Gateway, _ = netip.ParseAddr(n.Gateway)
		dn.Subnet6, _ = netip.ParsePrefix(n.Subnet6)
		dn.Gateway6, _ = netip.ParseAddr(n.Gateway6)
		if err := d.datapath.RemoveNetwork(dn); err != nil {
			tb.Errorf("remove network %s from the host: %v", n.ID, err)
		}
	}
	// RemoveNetwork deletes it with the last network's address; also
	// when a network could not be removed.
	if err := deleteLink(d.cfg.HostDevice); err != nil {
		tb.Errorf("remove the host device: %v", err)
	}
}

// deleteLink deletes a network device; one already gone is fine.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func randomHex(tb testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// call posts one Docker call and returns the HTTP status and decoded body.
func (td *testDaemon) call(tb testing.TB, path string, req any) (int, map[string]any) {
	tb.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := td.client.Post("http://plugin"+path, "application/vnd.docker.plugins.v1.1+json", bytes.NewReader(body))
	if err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		tb.Fatalf("%s: decode answer: %v", path, err)
	}
	return resp.StatusCode, out
}

// mustCall is call that fails the test on a non-200 answer.
func (td *testDaemon) mustCall(tb testing.TB, path string, req any) map[string]any {
	tb.Helper()
	code, out := td.call(tb, path, req)
	if code != http.StatusOK {
		tb.Fatalf("%s: HTTP %d %v", path, code, out)
	}
	return out
}

func TestActivateAnnouncesBothDrivers(t *testing.T) {
	td := startTestDaemon(t)
	out := td.mustCall(t, "/Plugin.Activate", nil)
	impl := fmt.Sprint(out["Implements"])
	if impl != "[NetworkDriver IpamDriver]" {
		t.Fatalf("Activate implements %s, want [NetworkDriver IpamDriver]", impl)
	}
}

// TestEveryCallIsAnswered: each call of both Docker APIs gets a JSON answer,
// "{}" where there is nothing to do, and errors come back as HTTP 500 with
// Err (which both halves of Docker read).
func TestEveryCallIsAnswered(t *testing.T) {
	td := startTestDaemon(t)
	empty := map[string]any{}
	for _, path := range []string{
		"/NetworkDriver.GetCapabilities", "/NetworkDriver.AllocateNetwork", "/NetworkDriver.FreeNetwork",
		"/NetworkDriver.DeleteNetwork", "/NetworkDriver.DeleteEndpoint", "/NetworkDriver.Leave",
		"/NetworkDriver.DiscoverNew", "/NetworkDriver.DiscoverDelete", "/NetworkDriver.ProgramExternalConnectivity",
		"/NetworkDriver.RevokeExternalConnectivity", "/NetworkDriver.GwAllocCheck",
		"/IpamDriver.GetCapabilities", "/IpamDriver.GetDefaultAddressSpaces", "/IpamDriver.ReleasePool",
	} {
		td.mustCall(t, path, empty)
	}
	// Releasing what is not allocated is fine: Docker retries releases.
	td.mustCall(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "ebpfnet-local/10.9.0.0/24", "Address": "10.9.0.5"})
	caps := td.mustCall(t, "/NetworkDriver.GetCapabilities", nil)
	if caps["Scope"] != "local" || caps["ConnectivityScope"] != "local" {
		t.Errorf("capabilities %v, want local scope", caps)
	}
	spaces := td.mustCall(t, "/IpamDriver.GetDefaultAddressSpaces", nil)
	if spaces["LocalDefaultAddressSpace"] != "ebpfnet-local" {
		t.Errorf("address spaces %v", spaces)
	}
	code, out := td.call(t, "/NetworkDriver.Join", map[string]any{"NetworkID": "n", "EndpointID": "nope"})
	if code != http.StatusInternalServerError || !strings.Contains(fmt.Sprint(out["Err"]), "unknown endpoint") {
		t.Errorf("Join of an unknown endpoint: HTTP %d %v; want 500 with Err", code, out)
	}
	code, out = td.call(t, "/IpamDriver.RequestPool", map[string]any{"AddressSpace": "ebpfnet-local", "Pool": "10.0.0.0/31"})
	if code != http.StatusInternalServerError || !nonEmptyString(out["Err"]) || !nonEmptyString(out["Error"]) {
		t.Errorf("RequestPool of a /31: HTTP %d %v; want 500 with Err and Error", code, out)
	}
}

// TestGwAllocCheck: the capability is announced, so Docker 28+ asks before
// it requests pools; the gateway is never skipped, an IPv6-only network is
// taken, and a network without any family is refused with the reason.
func TestGwAllocCheck(t *testing.T) {
	td := startTestDaemon(t)
	if caps := td.mustCall(t, "/NetworkDriver.GetCapabilities", nil); caps["GwAllocChecker"] != true {
		t.Errorf("capabilities %v, want GwAllocChecker", caps)
	}
	out := td.mustCall(t, "/NetworkDriver.GwAllocCheck", map[string]any{"Options": map[string]any{
		"com.docker.network.enable_ipv4": true, "com.docker.network.enable_ipv6": false}})
	if out["SkipIPv4"] != false || out["SkipIPv6"] != false {
		t.Errorf("GwAllocCheck of an IPv4 network: %v, want no skip", out)
	}
	out = td.mustCall(t, "/NetworkDriver.GwAllocCheck", map[string]any{"Options": map[string]any{
		"com.docker.network.enable_ipv4": false, "com.docker.network.enable_ipv6": true}})
	if out["SkipIPv4"] != false || out["SkipIPv6"] != false {
		t.Errorf("GwAllocCheck of an IPv6-only network: %v, want no skip", out)
	}
	code, out := td.call(t, "/NetworkDriver.GwAllocCheck", map[string]any{"Options": map[string]any{
		"com.docker.network.enable_ipv4": false, "com.docker.network.enable_ipv6": false}})
	if code != http.StatusInternalServerError || !strings.Contains(fmt.Sprint(out["Err"]), "drop --ipv4=false") {
		t.Errorf("GwAllocCheck with --ipv4=false and no --ipv6: HTTP %d %v; want 500 saying to drop --ipv4=false", code, out)
	}
}

// nonEmptyString tells whether a decoded JSON value is a string with
// something in it: a missing key or another type is not.
func nonEmptyString(v any) bool {
	s, ok := v.(string)
	return ok && s != ""
}

// isMAC tells whether s is an Ethernet MAC address.
func isMAC(s string) bool {
	mac, err := net.ParseMAC(s)
	return err == nil && len(mac) == 6
}

// createTestNetwork walks Docker's order of calls for `docker network create`.
func createTestNetwork(tb testing.TB, td *testDaemon, netID, subnet string) (poolID, gateway string) {
	tb.Helper()
	pool := td.mustCall(tb, "/IpamDriver.RequestPool", map[string]any{"AddressSpace": "ebpfnet-local", "Pool": subnet})
	poolID = pool["PoolID"].(string)
	gw := td.mustCall(tb, "/IpamDriver.RequestAddress", map[string]any{
		"PoolID": poolID, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})
	gateway = gw["Address"].(string)
	td.mustCall(tb, "/NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": netID, "Options": map[string]any{},
		"IPv4Data": []map[string]any{{"AddressSpace": "ebpfnet-local", "Pool": subnet, "Gateway": gateway}},
	})
	return poolID, gateway
}

func TestEndpointThroughTheSocket(t *testing.T) {
	td := startTestDaemon(t)
	poolID, gateway := createTestNetwork(t, td, "net-a", "10.202.0.0/24")
	if gateway != "10.202.0.1/24" {
		t.Fatalf("gateway %s, want 10.202.0.1/24", gateway)
	}
	addr := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
	epID := randomHex(t, 32)
	created := td.mustCall(t, "/NetworkDriver.CreateEndpoint", map[string]any{
		"NetworkID": "net-a", "EndpointID": epID, "Interface": map[string]any{"Address": addr}})
	iface, _ := created["Interface"].(map[string]any)
	if mac, _ := iface["MacAddress"].(string); iface == nil || !isMAC(mac) || iface["Address"] != nil && iface["Address"] != "" {
		t.Errorf("CreateEndpoint answered %v: want only a MAC", created)
	}
	join := td.mustCall(t, "/NetworkDriver.Join", map[string]any{"NetworkID": "net-a", "EndpointID": epID, "SandboxKey": "/x"})
	names := join["InterfaceName"].(map[string]any)
	if names["DstPrefix"] != "eth" || join["Gateway"] != "10.202.0.1" {
		t.Errorf("Join answered %v", join)
	}
	// The host end has the contract's name; SrcName is its peer's,
	// whatever the datapath named it (a spare pair keeps its own).
	host := datapath.HostIfName(epID)
	if hostLink, err := netlink.LinkByName(host); err != nil {
		t.Errorf("host veth %s: %v", host, err)
	} else if peer, err := netlink.LinkByName(names["SrcName"].(string)); err != nil || peer.Attrs().ParentIndex != hostLink.Attrs().Index {
		t.Errorf("Join's SrcName %v is not the peer of %s: %v", names["SrcName"], host, err)
	}
	td.mustCall(t, "/NetworkDriver.Leave", map[string]any{"NetworkID": "net-a", "EndpointID": epID})
	td.mustCall(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "net-a", "EndpointID": epID})
	// The veth goes in the background (deleting a device waits for an RCU
	// barrier); it must be gone soon after, not at once.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := net.InterfaceByName(host); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("host veth %s survived DeleteEndpoint by 5 s", host)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	td.mustCall(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": addr})
	td.mustCall(t, "/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": "net-a"})
	td.mustCall(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": gateway})
	td.mustCall(t, "/IpamDriver.ReleasePool", map[string]any{"PoolID": poolID})
}

// A dual-stack network through the socket, as Docker 20.10 drives one
// created with --ipv6 and no IPv6 --subnet: an IPv6 pool carved from the
// default ULA pool, both gateways, an endpoint with an address of each
// family, a route to each, and Join's two gateways; everything goes with
// the network.
func TestDualStackThroughTheSocket(t *testing.T) {
	td := startTestDaemon(t)
	pool4, gw4 := createTestNetworkPools(t, td, "10.203.0.0/24")
	pool6 := td.mustCall(t, "/IpamDriver.RequestPool", map[string]any{"AddressSpace": "ebpfnet-local", "V6": true})
	subnet6 := pool6["Pool"].(string)
	if p, err := netip.ParsePrefix(subnet6); err != nil || p.Bits() != 64 || !netip.MustParsePrefix("fd00:ebbf::/48").Contains(p.Addr()) {
		t.Fatalf("IPv6 pool %q, want a /64 of fd00:ebbf::/48", subnet6)
	}
	gw6 := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{
		"PoolID": pool6["PoolID"], "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})["Address"].(string)
	td.mustCall(t, "/NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": "net-6", "Options": map[string]any{},
		"IPv4Data": []map[string]any{{"AddressSpace": "ebpfnet-local", "Pool": "10.203.0.0/24", "Gateway": gw4}},
		"IPv6Data": []map[string]any{{"AddressSpace": "ebpfnet-local", "Pool": subnet6, "Gateway": gw6}},
	})
	addr4 := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": pool4})["Address"].(string)
	addr6 := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": pool6["PoolID"]})["Address"].(string)
	epID := randomHex(t, 32)
	td.mustCall(t, "/NetworkDriver.CreateEndpoint", map[string]any{
		"NetworkID": "net-6", "EndpointID": epID, "Interface": map[string]any{"Address": addr4, "AddressIPv6": addr6}})
	join := td.mustCall(t, "/NetworkDriver.Join", map[string]any{"NetworkID": "net-6", "EndpointID": epID, "SandboxKey": "/x"})
	gwAddr6 := netip.MustParsePrefix(gw6).Addr()
	if join["Gateway"] != netip.MustParsePrefix(gw4).Addr().String() || join["GatewayIPv6"] != gwAddr6.String() {
		t.Errorf("Join answered %v, want gateways %s and %s", join, gw4, gw6)
	}
	host := datapath.HostIfName(epID)
	routes, err := netlink.RouteGet(net.IP(netip.MustParsePrefix(addr6).Addr().AsSlice()))
	if err != nil || len(routes) == 0 {
		t.Fatalf("route to %s: %v", addr6, err)
	}
	if l, err := netlink.LinkByIndex(routes[0].LinkIndex); err != nil || l.Attrs().Name != host {
		t.Errorf("%s routes through %v, want %s", addr6, routes[0].LinkIndex, host)
	}
	dev, err := netlink.LinkByName(td.cfg.HostDevice)
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := netlink.AddrList(dev, netlink.FAMILY_V6)
	found := false
	for _, a := range addrs {
		found = found || a.IP.Equal(net.IP(gwAddr6.AsSlice()))
	}
	if !found {
		t.Errorf("the host device lacks the IPv6 gateway %s: %v", gwAddr6, addrs)
	}
	td.mustCall(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "net-6", "EndpointID": epID})
	td.mustCall(t, "/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": "net-6"})
	if _, err := netlink.LinkByName(td.cfg.HostDevice); err == nil {
		t.Error("the host device outlived the last network")
	}
}

// createTestNetworkPools requests an IPv4 pool and its gateway.
func createTestNetworkPools(tb testing.TB, td *testDaemon, subnet string) (poolID, gateway string) {
	tb.Helper()
	pool := td.mustCall(tb, "/IpamDriver.RequestPool", map[string]any{"AddressSpace": "ebpfnet-local", "Pool": subnet})
	poolID = pool["PoolID"].(string)
	gw := td.mustCall(tb, "/IpamDriver.RequestAddress", map[string]any{
		"PoolID": poolID, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})
	return poolID, gw["Address"].(string)
}
