package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
		"ipv6": {&network.CreateNetworkRequest{NetworkID: "net6",
			IPv4Data: []*network.IPAMData{{Pool: "10.82.0.0/16", Gateway: "10.82.0.1/16"}},
			IPv6Data: []*network.IPAMData{{Pool: "fd00::/64"}}}, "IPv6"},
		// Docker 29's --ipv4=false: no IPv4 pool, and the option says why.
		"no ipv4": {&network.CreateNetworkRequest{NetworkID: "net7",
			Options: map[string]interface{}{optionEnableIPv4: false, "com.docker.network.enable_ipv6": false}},
			"ebpfnet needs IPv4 and does not support IPv6 yet; drop --ipv4=false"},
		"no ipv4 with a pool": {&network.CreateNetworkRequest{NetworkID: "net8",
			Options:  map[string]interface{}{optionEnableIPv4: false},
			IPv4Data: []*network.IPAMData{{Pool: "10.83.0.0/16", Gateway: "10.83.0.1/16"}}}, "drop --ipv4=false"},
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
	_, _, err := d.GwAllocCheck(map[string]interface{}{optionEnableIPv4: false, "com.docker.network.enable_ipv6": true})
	if err == nil || err.Error() != "create network: ebpfnet needs IPv4 and does not support IPv6 yet; drop --ipv4=false" {
		t.Errorf("GwAllocCheck with enable_ipv4=false: %v", err)
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
	if resp.Interface == nil || resp.Interface.Address != "" || resp.Interface.MacAddress != "02:00:00:00:00:01" {
		t.Fatalf("CreateEndpoint answered %+v: want only the MAC we chose", resp.Interface)
	}
	ep := fake.endpoints[epID]
	if ep.IPv4 != netip.MustParsePrefix("10.77.0.2/16") || ep.Network.Index != 1 || ep.Identity != 5 {
		t.Errorf("datapath endpoint %+v", ep)
	}
	// Docker retries: same answer, no second endpoint.
	if _, err := d.CreateEndpoint(&network.CreateEndpointRequest{
		NetworkID: "net1", EndpointID: epID, Interface: &network.EndpointInterface{Address: "10.77.0.2/16"},
	}); err != nil || len(fake.endpoints) != 1 {
		t.Errorf("retried CreateEndpoint: %v, %d endpoints", err, len(fake.endpoints))
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
	fake.failNext = errors.New("veth: file exists")
	_, err := d.CreateEndpoint(&network.CreateEndpointRequest{NetworkID: "net1", EndpointID: epID, Interface: &network.EndpointInterface{Address: "10.77.0.2/16"}})
	if err == nil || !strings.Contains(err.Error(), "veth: file exists") {
		t.Errorf("datapath failure: %v", err)
	}
	if len(fake.endpoints) != 0 {
		t.Errorf("failed creates left %d endpoints", len(fake.endpoints))
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
