package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
)

// fakeDatapath records what the driver asks of the kernel side and of the
// endpoint manager.
type fakeDatapath struct {
	networks  map[uint32]datapath.Network
	endpoints map[string]datapath.Endpoint
	nextID    uint16
	failNext  error
	// gate, when set, holds CreateEndpoint until it is closed.
	gate chan struct{}
}

func newFake() *fakeDatapath {
	return &fakeDatapath{networks: map[uint32]datapath.Network{}, endpoints: map[string]datapath.Endpoint{}}
}

func (f *fakeDatapath) fail() error {
	err := f.failNext
	f.failNext = nil
	return err
}

func (f *fakeDatapath) AddNetwork(n datapath.Network) error {
	if err := f.fail(); err != nil {
		return err
	}
	f.networks[n.Index] = n
	return nil
}

func (f *fakeDatapath) RemoveNetwork(n datapath.Network) error {
	delete(f.networks, n.Index)
	return nil
}

func (f *fakeDatapath) CreateEndpoint(_ context.Context, ep *datapath.Endpoint) error {
	if f.gate != nil {
		<-f.gate
	}
	if err := f.fail(); err != nil {
		return err
	}
	f.nextID++
	ep.ID = f.nextID
	ep.IfName = "lxc" + ep.DockerEndpointID[:12]
	ep.PeerName = "tmp" + ep.DockerEndpointID[:12]
	if ep.LXCMAC == nil {
		ep.LXCMAC = datapath.HardwareAddr{0x02, 0, 0, 0, 0, byte(ep.ID)}
	}
	f.endpoints[ep.DockerEndpointID] = *ep
	return nil
}

func (f *fakeDatapath) DeleteEndpoint(_ context.Context, id string) error {
	delete(f.endpoints, id)
	return nil
}

func (f *fakeDatapath) Endpoint(id string) (datapath.Endpoint, bool) {
	ep, ok := f.endpoints[id]
	return ep, ok
}

func newTestDriver(t *testing.T) (*Driver, *fakeDatapath, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "networks.json")
	fake := newFake()
	d, err := New(path, fake, fake, logrus.New())
	if err != nil {
		t.Fatal(err)
	}
	return d, fake, path
}

func createNetwork(id, pool, gw string, generic map[string]interface{}) *network.CreateNetworkRequest {
	opts := map[string]interface{}{}
	if generic != nil {
		opts[optionGeneric] = generic
	}
	return &network.CreateNetworkRequest{
		NetworkID: id,
		Options:   opts,
		IPv4Data:  []*network.IPAMData{{AddressSpace: "ebpfnet-local", Pool: pool, Gateway: gw}},
	}
}

const epID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestCreateNetworkPersistsAndRestores(t *testing.T) {
	d, fake, path := newTestDriver(t)
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	want := datapath.Network{Index: 1, Subnet: netip.MustParsePrefix("10.77.0.0/16"), Gateway: netip.MustParseAddr("10.77.0.1")}
	if fake.networks[1] != want {
		t.Fatalf("datapath got %+v, want %+v", fake.networks[1], want)
	}
	// A new driver on the same file gives the datapath the network again.
	fake2 := newFake()
	if _, err := New(path, fake2, fake2, logrus.New()); err != nil {
		t.Fatal(err)
	}
	if fake2.networks[1] != want {
		t.Fatalf("after restart the datapath got %+v, want %+v", fake2.networks, want)
	}
}

func TestCreateNetworkRefusesBadInputAndChangesNothing(t *testing.T) {
	d, fake, path := newTestDriver(t)
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		req  *network.CreateNetworkRequest
		want string
	}{
		"overlap":        {createNetwork("net2", "10.77.128.0/17", "10.77.128.1/17", nil), "overlaps 10.77.0.0/16"},
		"unknown option": {createNetwork("net3", "10.78.0.0/16", "10.78.0.1/16", map[string]interface{}{"ebpfnet.typo": "x"}), "unknown option ebpfnet.typo"},
		"bad pool":       {createNetwork("net4", "nonsense", "10.79.0.1/16", nil), `pool "nonsense"`},
		"gw outside":     {createNetwork("net5", "10.80.0.0/16", "10.81.0.1/16", nil), "outside subnet"},
		"ipv6 without gateway": {&network.CreateNetworkRequest{NetworkID: "net6",
			IPv4Data: []*network.IPAMData{{Pool: "10.82.0.0/16", Gateway: "10.82.0.1/16"}},
			IPv6Data: []*network.IPAMData{{Pool: "fd00::/64"}}}, "no gateway"},
		"ipv4 pool as ipv6": {&network.CreateNetworkRequest{NetworkID: "net6",
			IPv6Data: []*network.IPAMData{{Pool: "10.84.0.0/16", Gateway: "10.84.0.1/16"}}}, `pool "10.84.0.0/16" is not an IPv6 CIDR`},
		"two ipv6 pools": {&network.CreateNetworkRequest{NetworkID: "net6",
			IPv6Data: []*network.IPAMData{{Pool: "fd00:1::/64", Gateway: "fd00:1::1/64"}, {Pool: "fd00:2::/64", Gateway: "fd00:2::1/64"}}},
			"one subnet of each family, got 0 IPv4 and 2 IPv6"},
		// Docker 29's --ipv4=false without --ipv6: no address at all.
		"no ipv4": {&network.CreateNetworkRequest{NetworkID: "net7",
			Options: map[string]interface{}{optionEnableIPv4: false, optionEnableIPv6: false}},
			"a network without IPv4 needs IPv6: add --ipv6, or drop --ipv4=false"},
		"no pool": {&network.CreateNetworkRequest{NetworkID: "net7"}, "ebpfnet needs an IPv4 or an IPv6 subnet, got none"},
		"no ipv4 with a pool": {&network.CreateNetworkRequest{NetworkID: "net8",
			Options:  map[string]interface{}{optionEnableIPv4: false, optionEnableIPv6: true},
			IPv4Data: []*network.IPAMData{{Pool: "10.83.0.0/16", Gateway: "10.83.0.1/16"}}}, "--ipv4=false, but Docker sent an IPv4 pool"},
	}
	before, _ := os.ReadFile(path)
	for name, c := range cases {
		err := d.CreateNetwork(c.req)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, c.want)
		}
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) || len(fake.networks) != 1 || len(d.Networks()) != 1 {
		t.Errorf("refused networks changed state: %d datapath networks, %d driver networks", len(fake.networks), len(d.Networks()))
	}
}

// TestCreateNetworkTakesEnableIPv4True: Docker 28+ always sends
// enable_ipv4, true for every network that has IPv4.
func TestCreateNetworkTakesEnableIPv4True(t *testing.T) {
	d, _, _ := newTestDriver(t)
	req := createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)
	req.Options[optionEnableIPv4] = true
	req.Options["com.docker.network.enable_ipv6"] = false
	if err := d.CreateNetwork(req); err != nil {
		t.Fatal(err)
	}
}

// TestGwAllocCheck: the gateway is always allocated; a network without
// IPv4 is refused before Docker asks for any pool.
func TestGwAllocCheck(t *testing.T) {
	d, _, _ := newTestDriver(t)
	for _, opts := range []map[string]interface{}{
		nil,
		{optionEnableIPv4: true, "com.docker.network.enable_ipv6": false},
		{optionEnableIPv4: true, optionInternal: true},
	} {
		if skip4, skip6, err := d.GwAllocCheck(opts); skip4 || skip6 || err != nil {
			t.Errorf("GwAllocCheck(%v) = %v, %v, %v; want false, false, nil", opts, skip4, skip6, err)
		}
	}
	if _, _, err := d.GwAllocCheck(map[string]interface{}{optionEnableIPv4: false, optionEnableIPv6: true}); err != nil {
		t.Errorf("GwAllocCheck of an IPv6-only network: %v", err)
	}
	_, _, err := d.GwAllocCheck(map[string]interface{}{optionEnableIPv4: false, optionEnableIPv6: false})
	if err == nil || err.Error() != "create network: a network without IPv4 needs IPv6: add --ipv6, or drop --ipv4=false" {
		t.Errorf("GwAllocCheck with neither family: %v", err)
	}
}

func TestCreateNetworkUndoesPlumbingWhenPersistFails(t *testing.T) {
	dir := t.TempDir()
	fake := newFake()
	d, err := New(filepath.Join(dir, "gone", "networks.json"), fake, fake, logrus.New())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err == nil {
		t.Fatal("persisting into a missing directory succeeded")
	}
	if len(fake.networks) != 0 || len(d.Networks()) != 0 {
		t.Fatalf("failed create left %d datapath and %d driver networks", len(fake.networks), len(d.Networks()))
	}
}

func TestEndpointLifecycle(t *testing.T) {
	d, fake, _ := newTestDriver(t)
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	resp, err := d.CreateEndpoint(&network.CreateEndpointRequest{
		NetworkID: "net1", EndpointID: epID, Interface: &network.EndpointInterface{Address: "10.77.0.2/16"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Interface == nil || resp.Interface.Address != "" || resp.Interface.MacAddress != net.HardwareAddr(datapath.LXCMACFor(epID)).String() {
		t.Fatalf("CreateEndpoint answered %+v: want only the MAC we chose", resp.Interface)
	}
	waitBuilds(t, d)
	ep := fake.endpoints[epID]
	if ep.IPv4 != netip.MustParsePrefix("10.77.0.2/16") || ep.Network.Index != 1 || ep.Identity != 5 {
		t.Errorf("datapath endpoint %+v", ep)
	}
	// Docker retries: same answer, no second endpoint.
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{
		NetworkID: "net1", EndpointID: epID, Interface: &network.EndpointInterface{Address: "10.77.0.2/16"},
	}); err != nil {
		t.Errorf("retried CreateEndpoint: %v", err)
	}
	if waitBuilds(t, d); len(fake.endpoints) != 1 {
		t.Errorf("retried CreateEndpoint: %d endpoints", len(fake.endpoints))
	}
	join, err := d.Join(&network.JoinRequest{NetworkID: "net1", EndpointID: epID, SandboxKey: "/var/run/docker/netns/x"})
	if err != nil {
		t.Fatal(err)
	}
	if join.InterfaceName.SrcName != "tmp"+epID[:12] || join.InterfaceName.DstPrefix != "eth" || join.Gateway != "10.77.0.1" {
		t.Errorf("Join answered %+v", join)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: "net1", EndpointID: epID}); err != nil {
		t.Fatal(err)
	}
	if len(fake.endpoints) != 0 {
		t.Error("endpoint survived DeleteEndpoint")
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: "net1", EndpointID: epID}); err != nil {
		t.Errorf("second DeleteEndpoint: %v", err)
	}
}

func TestCreateEndpointWithUserMACAnswersEmptyInterface(t *testing.T) {
	d, fake, _ := newTestDriver(t)
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	resp, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: "net1", EndpointID: epID,
		Interface: &network.EndpointInterface{Address: "10.77.0.9/16", MacAddress: "02:42:0a:4d:00:09"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Interface != nil {
		t.Errorf("answered %+v; Docker refuses a response that resets what it sent", resp.Interface)
	}
	waitBuilds(t, d)
	if got := fake.endpoints[epID].LXCMAC; got.String() != "02:42:0a:4d:00:09" {
		t.Errorf("container MAC %s, want the user's", got)
	}
}

func TestCreateEndpointErrors(t *testing.T) {
	d, fake, _ := newTestDriver(t)
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		req  *network.CreateEndpointRequest
		want string
	}{
		"no address":      {&network.CreateEndpointRequest{NetworkID: "net1", EndpointID: epID}, "no IPv4 address"},
		"unknown network": {&network.CreateEndpointRequest{NetworkID: "nope", EndpointID: epID, Interface: &network.EndpointInterface{Address: "10.77.0.2/16"}}, "not an ebpfnet network"},
		"outside subnet":  {&network.CreateEndpointRequest{NetworkID: "net1", EndpointID: epID, Interface: &network.EndpointInterface{Address: "10.99.0.2/16"}}, "outside the network's subnet"},
	}
	for name, c := range cases {
		if _, err := d.CreateEndpoint(c.req); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want error containing %q", name, err, c.want)
		}
	}
	if waitBuilds(t, d); len(fake.endpoints) != 0 {
		t.Errorf("refused creates left %d endpoints", len(fake.endpoints))
	}
}

// The endpoint is built after CreateEndpoint answers; Join waits for the
// build and reports its failure, which Docker answers with DeleteEndpoint.
func TestJoinWaitsForTheBuildAndReportsItsFailure(t *testing.T) {
	d, fake, _ := newTestDriver(t)
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	req := &network.CreateEndpointRequest{NetworkID: "net1", EndpointID: epID, Interface: &network.EndpointInterface{Address: "10.77.0.2/16"}}

	// A slow build: CreateEndpoint answers before it, Join after it.
	fake.gate = make(chan struct{})
	if _, err := d.CreateEndpoint(req); err != nil {
		t.Fatal(err)
	}
	joined := make(chan error, 1)
	go func() {
		_, err := d.Join(&network.JoinRequest{NetworkID: "net1", EndpointID: epID})
		joined <- err
	}()
	select {
	case err := <-joined:
		t.Fatalf("Join answered (%v) before the endpoint was built", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(fake.gate)
	if err := <-joined; err != nil {
		t.Fatalf("Join after the build: %v", err)
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: "net1", EndpointID: epID}); err != nil {
		t.Fatal(err)
	}

	// A failed build: Join and EndpointInfo say why, DeleteEndpoint
	// succeeds, and the same endpoint can be asked for again.
	fake.gate = nil
	fake.failNext = errors.New("veth: file exists")
	if _, err := d.CreateEndpoint(req); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(&network.JoinRequest{NetworkID: "net1", EndpointID: epID}); err == nil || !strings.Contains(err.Error(), "veth: file exists") {
		t.Errorf("Join of a failed build: %v", err)
	}
	if _, err := d.EndpointInfo(&network.InfoRequest{NetworkID: "net1", EndpointID: epID}); err == nil || !strings.Contains(err.Error(), "veth: file exists") {
		t.Errorf("EndpointInfo of a failed build: %v", err)
	}
	if len(fake.endpoints) != 0 {
		t.Errorf("a failed build left %d endpoints", len(fake.endpoints))
	}
	if err := d.DeleteEndpoint(&network.DeleteEndpointRequest{NetworkID: "net1", EndpointID: epID}); err != nil {
		t.Errorf("DeleteEndpoint of a failed build: %v", err)
	}
	if _, err := d.CreateEndpoint(req); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(&network.JoinRequest{NetworkID: "net1", EndpointID: epID}); err != nil {
		t.Errorf("Join after the failed build was deleted and asked for again: %v", err)
	}
}

// A failed build is built again when Docker retries CreateEndpoint
// without deleting it first.
func TestRetriedCreateAfterAFailedBuild(t *testing.T) {
	d, fake, _ := newTestDriver(t)
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	req := &network.CreateEndpointRequest{NetworkID: "net1", EndpointID: epID, Interface: &network.EndpointInterface{Address: "10.77.0.2/16"}}
	fake.failNext = errors.New("no space left")
	if _, err := d.CreateEndpoint(req); err != nil {
		t.Fatal(err)
	}
	waitBuilds(t, d)
	if _, err := d.CreateEndpoint(req); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(&network.JoinRequest{NetworkID: "net1", EndpointID: epID}); err != nil {
		t.Errorf("Join after the retried build: %v", err)
	}
}

// waitBuilds waits for the endpoints CreateEndpoint accepted to be built.
func waitBuilds(t *testing.T, d *Driver) {
	t.Helper()
	if !d.WaitBuilds(5 * time.Second) {
		t.Fatal("endpoint builds still under way after 5 s")
	}
}

func TestDeleteNetworkIsIdempotent(t *testing.T) {
	d, fake, _ := newTestDriver(t)
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: "net1"}); err != nil {
			t.Fatal(err)
		}
	}
	if len(fake.networks) != 0 || len(d.Networks()) != 0 {
		t.Error("network survived DeleteNetwork")
	}
	// Its index is free again.
	if err := d.CreateNetwork(createNetwork("net2", "10.78.0.0/16", "10.78.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	if d.Networks()[0].Index != 1 {
		t.Errorf("index %d, want the freed 1", d.Networks()[0].Index)
	}
}

func TestPolicyOptionsAreValidated(t *testing.T) {
	d, _, _ := newTestDriver(t)
	bad := map[string]interface{}{OptionPolicyEnforcement: "sometimes"}
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", bad)); err == nil || !strings.Contains(err.Error(), "want default, always or never") {
		t.Errorf("bad enforcement mode: %v", err)
	}
	bad = map[string]interface{}{OptionPolicyAudit: "maybe"}
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", bad)); err == nil || !strings.Contains(err.Error(), "want true or false") {
		t.Errorf("bad audit flag: %v", err)
	}
	good := map[string]interface{}{OptionPolicyEnforcement: "always", OptionPolicyAudit: "true"}
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16", good)); err != nil {
		t.Fatal(err)
	}
	opts := d.Networks()[0].Options
	if opts[OptionPolicyEnforcement] != "always" || opts[OptionPolicyAudit] != "true" {
		t.Errorf("options kept: %v", opts)
	}
}

// The observer learns every network after each change, in order.
func TestOnNetworksSeesEveryChange(t *testing.T) {
	d, _, _ := newTestDriver(t)
	var seen [][]string
	d.OnNetworks(func(ns []Network) {
		var ids []string
		for _, n := range ns {
			ids = append(ids, n.ID+"/"+string(n.PolicyMode()))
		}
		seen = append(seen, ids)
	})
	if err := d.CreateNetwork(createNetwork("net1", "10.77.0.0/16", "10.77.0.1/16",
		map[string]interface{}{OptionPolicyEnforcement: "always", OptionPolicyAudit: "true"})); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateNetwork(createNetwork("net2", "10.78.0.0/16", "10.78.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateNetwork(createNetwork("bad", "10.77.1.0/24", "10.77.1.1/24", nil)); err == nil {
		t.Fatal("an overlapping network was created")
	}
	if err := d.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: "net1"}); err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"net1/always"}, {"net1/always", "net2/"}, {"net2/"}}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("observer saw %v, want %v", seen, want)
	}
	if n := d.Networks(); len(n) != 1 || n[0].PolicyAudit() {
		t.Fatalf("networks %+v", n)
	}
}

func TestNetworkMTU(t *testing.T) {
	d, fake, _ := newTestDriver(t)
	d.SetMaxMTU(1450)
	if err := d.CreateNetwork(createNetwork("n1", "10.77.0.0/16", "10.77.0.1/16", nil)); err != nil {
		t.Fatal(err)
	}
	if got := fake.networks[1].MTU; got != 1450 {
		t.Fatalf("MTU %d, want the overlay's 1450", got)
	}
	if err := d.CreateNetwork(createNetwork("n2", "10.78.0.0/16", "10.78.0.1/16", map[string]interface{}{OptionMTU: "1400"})); err != nil {
		t.Fatal(err)
	}
	if got := fake.networks[2].MTU; got != 1400 {
		t.Fatalf("MTU %d, want the asked 1400", got)
	}
	for _, bad := range []string{"1500", "x", "100"} {
		if err := d.CreateNetwork(createNetwork("n3", "10.79.0.0/16", "10.79.0.1/16", map[string]interface{}{OptionMTU: bad})); err == nil {
			t.Errorf("MTU %q accepted", bad)
		}
	}
}

// Dual-stack and IPv6-only networks: their subnets reach the datapath and
// the record; endpoints take an address of each family the network has;
// Join hands Docker both gateways.
func TestIPv6Networks(t *testing.T) {
	d, fake, path := newTestDriver(t)
	dual := createNetwork("dual", "10.77.0.0/16", "10.77.0.1/16", nil)
	dual.IPv6Data = []*network.IPAMData{{AddressSpace: "ebpfnet-local", Pool: "fd00:77::/64", Gateway: "fd00:77::1/64"}}
	if err := d.CreateNetwork(dual); err != nil {
		t.Fatal(err)
	}
	only6 := &network.CreateNetworkRequest{NetworkID: "only6",
		Options:  map[string]interface{}{optionEnableIPv4: false, optionEnableIPv6: true},
		IPv6Data: []*network.IPAMData{{Pool: "fd00:78::/64", Gateway: "fd00:78::1"}}}
	if err := d.CreateNetwork(only6); err != nil {
		t.Fatal(err)
	}
	want := datapath.Network{Index: 1, Subnet: netip.MustParsePrefix("10.77.0.0/16"), Gateway: netip.MustParseAddr("10.77.0.1"),
		Subnet6: netip.MustParsePrefix("fd00:77::/64"), Gateway6: netip.MustParseAddr("fd00:77::1")}
	want6 := datapath.Network{Index: 2, Subnet6: netip.MustParsePrefix("fd00:78::/64"), Gateway6: netip.MustParseAddr("fd00:78::1")}
	if fake.networks[1] != want || fake.networks[2] != want6 {
		t.Fatalf("datapath got %+v", fake.networks)
	}
	overlap := &network.CreateNetworkRequest{NetworkID: "overlap",
		IPv6Data: []*network.IPAMData{{Pool: "fd00:77::/48", Gateway: "fd00:77::1/48"}}}
	if err := d.CreateNetwork(overlap); err == nil || !strings.Contains(err.Error(), "overlaps fd00:77::/64") {
		t.Errorf("an overlapping IPv6 subnet: %v", err)
	}
	if nets := d.Networks(); len(nets) != 2 || nets[1].Subnet != "" || nets[1].Subnet6 != "fd00:78::/64" || nets[0].Gateway6 != "fd00:77::1" {
		t.Errorf("Networks() = %+v", nets)
	}

	const ep6 = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	for _, c := range []struct {
		net, id, v4, v6 string
		gw, gw6         string
	}{
		{"dual", epID, "10.77.0.2/16", "fd00:77::2/64", "10.77.0.1", "fd00:77::1"},
		{"only6", ep6, "", "fd00:78::2/64", "", "fd00:78::1"},
	} {
		_, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: c.net, EndpointID: c.id,
			Interface: &network.EndpointInterface{Address: c.v4, AddressIPv6: c.v6}})
		if err != nil {
			t.Fatal(err)
		}
		waitBuilds(t, d)
		ep := fake.endpoints[c.id]
		if ep.IPv6.String() != c.v6 || (c.v4 != "" && ep.IPv4.String() != c.v4) || (c.v4 == "" && ep.IPv4.IsValid()) {
			t.Errorf("%s: endpoint %v %v", c.net, ep.IPv4, ep.IPv6)
		}
		join, err := d.Join(&network.JoinRequest{NetworkID: c.net, EndpointID: c.id})
		if err != nil || join.Gateway != c.gw || join.GatewayIPv6 != c.gw6 {
			t.Errorf("%s: Join answered %+v, %v", c.net, join, err)
		}
	}
	for name, c := range map[string]struct{ net, v4, v6, want string }{
		"dual without IPv6":   {"dual", "10.77.0.3/16", "", "no IPv6 address from Docker"},
		"only6 with IPv4":     {"only6", "10.77.0.3/16", "fd00:78::3/64", "the network has no IPv4 subnet"},
		"IPv6 outside subnet": {"dual", "10.77.0.3/16", "fd00:79::3/64", "outside the network's subnet fd00:77::/64"},
		"IPv4 as IPv6":        {"only6", "", "10.0.0.1/24", `address "10.0.0.1/24" is not an IPv6 CIDR`},
	} {
		_, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: c.net, EndpointID: strings.Repeat("9", 64),
			Interface: &network.EndpointInterface{Address: c.v4, AddressIPv6: c.v6}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// The record reads back.
	fake2 := newFake()
	if _, err := New(path, fake2, fake2, logrus.New()); err != nil {
		t.Fatal(err)
	}
	if fake2.networks[1] != want || fake2.networks[2] != want6 {
		t.Fatalf("after restart the datapath got %+v", fake2.networks)
	}
}
