package plugin

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/ipcache"
	"github.com/ebpfnet/ebpfnet/servicemap"
	"github.com/ebpfnet/ebpfnet/testutil"
)

func TestFlowOfEvent(t *testing.T) {
	resolve := servicemap.NewResolver(map[uint16]uint32{3: 258}, map[netip.Prefix]uint32{netip.MustParsePrefix("10.77.0.1/32"): 1})
	for _, c := range []struct {
		ev   api.MonitorEvent
		want string // flow as "src>dst proto verdict reason"; "" for none
	}{
		{api.MonitorEvent{Type: "drop", Reason: "Policy denied", Source: "10.77.0.4:33928", Destination: "10.77.0.2:80", Protocol: "tcp", SrcIdentity: 258, DstIdentity: 256},
			"10.77.0.4:33928>10.77.0.2:80 6 258>256 denied Policy denied"},
		{api.MonitorEvent{Type: "policy-verdict", Verdict: "allowed", Reason: "Policy", Source: "10.77.0.3:40000", Destination: "10.77.0.2:80", Protocol: "tcp", SrcIdentity: 257, DstIdentity: 256},
			"10.77.0.3:40000>10.77.0.2:80 6 257>256 allowed "},
		{api.MonitorEvent{Type: "policy-verdict", Verdict: "denied", Reason: "Policy denied", Source: "10.77.0.4", Destination: "10.77.0.2", Protocol: "icmp", SrcIdentity: 258, DstIdentity: 256},
			"10.77.0.4:0>10.77.0.2:0 1 258>256 denied Policy denied"},
		{api.MonitorEvent{Type: "policy-verdict", Verdict: "audit", Reason: "Policy audit", Source: "10.77.0.4:53", Destination: "10.77.0.2:53", Protocol: "udp", SrcIdentity: 258, DstIdentity: 256},
			"10.77.0.4:53>10.77.0.2:53 17 258>256 audit Policy audit"},
		// Ends the program could not name: the reporting endpoint's own
		// side is the endpoint, whatever the address; the other side's
		// address is looked up; an address never parsed stays unknown.
		{api.MonitorEvent{Type: "drop", Reason: "Invalid source ip", Direction: "egress", Endpoint: 3, Source: "10.77.0.9", Destination: "10.77.0.1", Protocol: "proto-47"},
			"10.77.0.9:0>10.77.0.1:0 47 258>1 denied Invalid source ip"},
		{api.MonitorEvent{Type: "drop", Reason: "Unsupported L3 protocol", Direction: "egress", Endpoint: 3, Source: "0.0.0.0", Destination: "0.0.0.0", Protocol: "any"},
			"0.0.0.0:0>0.0.0.0:0 0 258>0 denied Unsupported L3 protocol"},
		{api.MonitorEvent{Type: "drop", Reason: "Policy denied", Direction: "ingress", Endpoint: 3, Source: "192.0.2.9:1000", Destination: "10.77.0.4:80", Protocol: "tcp", DstIdentity: 258},
			"192.0.2.9:1000>10.77.0.4:80 6 2>258 denied Policy denied"},
		{api.MonitorEvent{Type: "trace", Source: "10.77.0.9:1", Destination: "10.77.0.1:2", Protocol: "tcp"}, ""},
		{api.MonitorEvent{Type: "drop", Source: "nonsense", Destination: "10.77.0.1:2", Protocol: "tcp"}, ""},
		{api.MonitorEvent{Type: "drop", Source: "10.77.0.9:1", Destination: "10.77.0.1:2", Protocol: "sctp"}, ""},
	} {
		got := ""
		if fl, ok := flowOfEvent(c.ev, resolve); ok {
			got = fmt.Sprintf("%s>%s %d %d>%d %s %s", fl.Src, fl.Dst, fl.Proto, fl.SrcIdentity, fl.DstIdentity, fl.Verdict, fl.Reason)
		}
		if got != c.want {
			t.Errorf("flowOfEvent(%+v) = %q, want %q", c.ev, got, c.want)
		}
	}
}

// The endpoint list's words for enforcement are the service map's.
func TestEnforcementWordsAreTheServiceMaps(t *testing.T) {
	for flags, want := range map[uint32][2]string{
		0:                           {servicemap.EnforceDisabled, servicemap.EnforceDisabled},
		datapath.FlagEnforceIngress: {servicemap.EnforceEnabled, servicemap.EnforceDisabled},
		datapath.FlagEnforceEgress | datapath.FlagAudit: {servicemap.EnforceDisabled, servicemap.EnforceAudit},
	} {
		if in, eg := enforcement(flags); in != want[0] || eg != want[1] {
			t.Errorf("enforcement(%#x) = %s/%s, want %s/%s", flags, in, eg, want[0], want[1])
		}
	}
}

// TestUIBadAddressFailsStart: an address that is not loopback, without
// AllowRemote, or one that is taken, fails the start with an error that
// says why, before the datapath is touched.
func TestUIBadAddressFailsStart(t *testing.T) {
	testutil.RequireRoot(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for addr, want := range map[string]string{
		"0.0.0.0:9966":            "--ui-allow-remote",
		":9966":                   "every interface",
		"127.0.0.1":               "not host:port",
		taken.Addr().String():     "listen for the service map on \"" + taken.Addr().String(),
		"192.0.2.1:9966 (a typo)": "not host:port",
	} {
		cfg := testConfig(t)
		cfg.UI.Addr = addr
		log := logrus.New()
		log.SetOutput(io.Discard)
		d, err := start(cfg, log)
		if err == nil {
			d.close()
			os.RemoveAll(cfg.PinDir)
			t.Errorf("start with UI address %q succeeded", addr)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("start with UI address %q: error %q lacks %q", addr, err, want)
		}
		if _, err := os.Stat(cfg.PinDir); err == nil {
			os.RemoveAll(cfg.PinDir)
			t.Errorf("a start refused for its UI address still created %s", cfg.PinDir)
		}
	}
}

// endpointInNetns makes a network and one endpoint through the plugin
// socket, as Docker would, and puts its peer in a namespace of its own
// with the address and default route Docker would give it. teardown
// undoes it through the socket, as Docker would; it runs at cleanup too.
func endpointInNetns(t *testing.T, td *testDaemon, netID, subnet string) (ns string, addr netip.Prefix, gw netip.Addr, teardown func()) {
	t.Helper()
	poolID, gateway := createTestNetwork(t, td, netID, subnet)
	addrCIDR := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
	epID := randomHex(t, 32)
	td.mustCall(t, "/NetworkDriver.CreateEndpoint", map[string]any{
		"NetworkID": netID, "EndpointID": epID, "Interface": map[string]any{"Address": addrCIDR}})
	td.mustCall(t, "/NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/x"})
	var once sync.Once
	teardown = func() {
		once.Do(func() {
			for _, c := range []struct {
				path string
				req  map[string]any
			}{
				{"/NetworkDriver.Leave", map[string]any{"NetworkID": netID, "EndpointID": epID}},
				{"/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID}},
				{"/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": addrCIDR}},
				{"/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": netID}},
				{"/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": gateway}},
				{"/IpamDriver.ReleasePool", map[string]any{"PoolID": poolID}},
			} {
				if code, out := td.call(t, c.path, c.req); code != http.StatusOK {
					t.Errorf("teardown %s: HTTP %d %v", c.path, code, out)
				}
			}
		})
	}
	t.Cleanup(teardown)
	join := td.mustCall(t, "/NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/x"})
	ns = "ebui-" + randomHex(t, 4)
	runCmd(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	peer := join["InterfaceName"].(map[string]any)["SrcName"].(string)
	gw = netip.MustParsePrefix(gateway).Addr()
	runCmd(t, "ip", "link", "set", peer, "netns", ns)
	runCmd(t, "ip", "-n", ns, "link", "set", peer, "name", "eth0")
	runCmd(t, "ip", "-n", ns, "addr", "add", addrCIDR, "dev", "eth0")
	runCmd(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	runCmd(t, "ip", "-n", ns, "route", "add", "default", "via", gw.String())
	return ns, netip.MustParsePrefix(addrCIDR), gw, teardown
}

// uiGraph asks the daemon's service map for its graph.
func uiGraph(t *testing.T, addr string) servicemap.Graph {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/graph")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var g servicemap.Graph
	if err := json.NewDecoder(resp.Body).Decode(&g); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/graph: %s: %v", resp.Status, err)
	}
	return g
}

func findEdge(g servicemap.Graph, from, to uint32, v servicemap.Verdict) (servicemap.Edge, bool) {
	for _, e := range g.Edges {
		if e.From == from && e.To == to && e.Verdict == v {
			return e, true
		}
	}
	return servicemap.Edge{}, false
}

func findIdentity(ids []servicemap.Identity, id uint32) (servicemap.Identity, bool) {
	for _, i := range ids {
		if i.ID == id {
			return i, true
		}
	}
	return servicemap.Identity{}, false
}

// TestServiceMapThroughTheDaemon: real packets from a real endpoint reach
// the daemon's service map: a datagram to the gateway is an allowed flow
// (from the conntrack table: the endpoint enforces nothing, so no verdict
// reports it), one from a spoofed source a denied one (from its drop
// event); a flow from an address the ipcache knows as another node's
// endpoint is named by that identity and node. The matrix of the policy
// maps follows an import, and the page goes with the daemon.
func TestServiceMapThroughTheDaemon(t *testing.T) {
	testutil.RequireCommand(t, "ip")
	td := startTestDaemon(t, func(cfg *Config) { cfg.UI.Addr = "127.0.0.1:0" })
	d := td.daemon
	addr := d.ui.Addr().String()
	if g := uiGraph(t, addr); len(g.Edges) != 0 || g.Node == "" {
		t.Fatalf("a new daemon's graph: %+v", g)
	}

	ns, ep, gw, teardown := endpointInNetns(t, td, "net-ui", "10.205.0.0/24")
	sendUDP(t, ns, netip.Addr{}, netip.AddrPortFrom(gw, 9))
	runCmd(t, "ip", "-n", ns, "addr", "add", "10.205.0.99/24", "dev", "eth0")
	sendUDP(t, ns, netip.MustParseAddr("10.205.0.99"), netip.AddrPortFrom(gw, 9))

	// A flow from another node's endpoint, as the conntrack table would
	// hold it once it had passed.
	remote := netip.MustParseAddr("10.205.1.7")
	if err := d.ipcache.Upsert(netip.PrefixFrom(remote, 32), ipcache.SourceRemote,
		ipcache.Entry{Identity: 4242, TunnelEndpoint: netip.MustParseAddr("192.0.2.12"), Node: "host-b"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.ipcache.Delete(netip.PrefixFrom(remote, 32), ipcache.SourceRemote) })
	putFlow(t, td.cfg.PinDir, netip.AddrPortFrom(remote, 41000), netip.AddrPortFrom(ep.Addr(), 80))

	init := uint32(identity.Init) // no Docker here to give the labels
	var g servicemap.Graph
	deadline := time.Now().Add(5 * time.Second)
	for {
		time.Sleep(100 * time.Millisecond)
		g = uiGraph(t, addr)
		_, allowed := findEdge(g, init, uint32(identity.Host), servicemap.Allowed)
		_, denied := findEdge(g, init, uint32(identity.Host), servicemap.Denied) // the spoofed source
		_, remoteFlow := findEdge(g, 4242, init, servicemap.Allowed)
		if allowed && denied && remoteFlow {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the graph never showed the three flows: %+v", g.Edges)
		}
	}
	if e, _ := findEdge(g, init, uint32(identity.Host), servicemap.Allowed); e.Flows != 1 || e.Ports[0].Port != "9/UDP" {
		t.Errorf("allowed edge to the gateway: %+v", e)
	}
	if e, _ := findEdge(g, init, uint32(identity.Host), servicemap.Denied); e.Ports[0].Port != "9/UDP" ||
		strings.Join(e.Reasons, ",") != datapath.DropInvalidSIP.String() {
		t.Errorf("denied edge of the spoofed datagram: %+v", e)
	}
	if e, _ := findEdge(g, 4242, init, servicemap.Allowed); e.Ports[0].Port != "80/TCP" {
		t.Errorf("remote edge: %+v", e)
	}
	if id, _ := findIdentity(g.Identities, 4242); id.Endpoints != 1 || strings.Join(id.Nodes, ",") != "host-b" {
		t.Errorf("the remote identity: %+v", id)
	}
	if id, _ := findIdentity(g.Identities, init); id.Endpoints != 1 || len(id.Nodes) != 1 || id.Nodes[0] != g.Node ||
		id.Ingress != servicemap.EnforceDisabled {
		t.Errorf("the local endpoint's identity: %+v", id)
	}

	// The matrix, on the local API (`ebpfnet policy matrix`): no rule,
	// everything may talk; any rule puts the endpoint still at init
	// under deny both ways.
	client := api.NewClient(td.cfg.APISocket)
	matrix := func() servicemap.Matrix {
		var m servicemap.Matrix
		if err := client.Get(context.Background(), "/v1/policy/matrix", &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	cell := func(m servicemap.Matrix, from, to uint32) string {
		for _, c := range m.Cells {
			if c.From == from && c.To == to {
				return strings.Join(c.Ports, ",")
			}
		}
		return "(none)"
	}
	world := uint32(identity.World)
	if m := matrix(); cell(m, world, init) != "any" || cell(m, init, 4242) != "any" {
		t.Errorf("matrix without rules: %+v", m.Cells)
	}
	if _, err := client.ImportPolicy(context.Background(), []byte(`[{"endpointSelector": {"matchLabels": {"id": "app1"}},
		"ingress": [{"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]`)); err != nil {
		t.Fatal(err)
	}
	if m := matrix(); cell(m, world, init) != "" || cell(m, init, world) != "" || cell(m, world, uint32(identity.Host)) != "(none)" {
		t.Errorf("matrix with a rule, the endpoint at init: %+v", m.Cells)
	}

	teardown()
	td.stop()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("the service map is still served on %s after the daemon stopped", addr)
	}
}

// putFlow writes a live TCP flow that src opened to dst into the pinned
// conntrack table, as the programs record one (bpf/lib/maps.h): the end
// that compares lower as the CPU loads it first.
func putFlow(t *testing.T, pinDir string, src, dst netip.AddrPort) {
	t.Helper()
	ct, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, datapath.CTMapName), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	lo, hi, flags := src, dst, byte(1) // CT_F_ESTABLISHED
	a, b := src.Addr().As4(), dst.Addr().As4()
	if sa, da := binary.NativeEndian.Uint32(a[:]), binary.NativeEndian.Uint32(b[:]); sa > da {
		lo, hi, flags = dst, src, flags|1<<4 // CT_F_INIT_HI: the second end opened it
	}
	key := make([]byte, 16)
	la, ha := lo.Addr().As4(), hi.Addr().As4()
	copy(key[0:], la[:])
	copy(key[4:], ha[:])
	binary.BigEndian.PutUint16(key[8:], lo.Port())
	binary.BigEndian.PutUint16(key[10:], hi.Port())
	key[12] = 6
	v := make([]byte, 24)
	binary.LittleEndian.PutUint64(v[0:], uint64(ts.Nano())+uint64(time.Minute))
	binary.LittleEndian.PutUint32(v[8:], 60)
	v[16] = flags
	if err := ct.Put(key, v); err != nil {
		t.Fatal(err)
	}
}
