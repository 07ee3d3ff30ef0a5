package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dockernetwork "github.com/docker/docker/api/types/network"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/endpoint"
	"github.com/ebpfnet/ebpfnet/external"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// testNode runs daemons one after the other on the same paths, as a node
// does across restarts: a restart keeps veths, pins and files. What the
// last daemon holds is removed when the test ends.
type testNode struct {
	cfg Config
	cur *testDaemon
	// logs is every daemon's log, for the lines a fault must leave.
	logs *syncBuffer
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newTestNode(tb testing.TB, configure ...func(*Config)) *testNode {
	tb.Helper()
	testutil.RequireRoot(tb)
	cfg := testConfig(tb)
	for _, c := range configure {
		c(&cfg)
	}
	n := &testNode{cfg: cfg, logs: &syncBuffer{}}
	if err := n.start(tb); err != nil {
		tb.Fatalf("start daemon: %v", err)
	}
	tb.Cleanup(func() {
		if n.cur == nil {
			// A restart failed: what the last daemon left is found
			// from its records.
			removeLeftovers(tb, n.cfg)
			tb.Logf("daemon logs:\n%s", n.logs.String())
			return
		}
		d := n.cur.daemon
		n.cur.stop()
		if d.external != nil {
			for _, net := range d.driver.Networks() {
				if err := d.external.RemoveNetwork(net.ID); err != nil {
					tb.Errorf("remove network %s's iptables rules: %v", net.ID, err)
				}
			}
		}
		removeHostSide(tb, d)
		d.close()
		os.RemoveAll(n.cfg.PinDir)
		if tb.Failed() {
			tb.Logf("daemon logs:\n%s", n.logs.String())
		}
	})
	return n
}

// removeLeftovers removes what daemons on cfg's paths left on the host,
// without a daemon: the veths and networks their records name, our
// iptables chains, the pins.
func removeLeftovers(tb testing.TB, cfg Config) {
	tb.Helper()
	defer os.RemoveAll(cfg.PinDir)
	log := logrus.New()
	log.SetOutput(io.Discard)
	dp, err := datapath.New(datapath.Config{StateDir: cfg.StateDir, PinDir: cfg.PinDir, HostDevice: cfg.HostDevice, Version: cfg.Version}, log)
	if err != nil {
		tb.Errorf("open the datapath to clean up: %v", err)
		return
	}
	defer dp.Close()
	records, err := dp.Records()
	if err != nil {
		tb.Errorf("records: %v", err)
	}
	networks := map[uint32]datapath.Network{}
	for _, ep := range records {
		if err := deleteLink(ep.IfName); err != nil {
			tb.Errorf("remove endpoint %d's veth: %v", ep.ID, err)
		}
		networks[ep.Network.Index] = ep.Network
	}
	for _, net := range networks {
		if err := dp.RemoveNetwork(net); err != nil {
			tb.Errorf("remove network %d: %v", net.Index, err)
		}
	}
	if err := deleteLink(cfg.HostDevice); err != nil {
		tb.Errorf("remove the host device: %v", err)
	}
	if cfg.External {
		m, err := external.New(external.Config{ChainPrefix: chainPrefix(cfg.DriverName), Log: log})
		if err == nil {
			err = m.Restore(nil, nil) // no network: chains and jumps go
		}
		if err != nil {
			tb.Errorf("remove our iptables chains: %v", err)
		}
	}
}

// start starts a daemon on the node's paths and serves it; its stop
// leaves everything in place.
func (n *testNode) start(tb testing.TB) error {
	tb.Helper()
	log := logrus.New()
	log.SetOutput(n.logs)
	log.SetLevel(logrus.DebugLevel)
	d, err := start(n.cfg, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.serve(ctx) }()
	var once sync.Once
	td := &testDaemon{cfg: n.cfg, daemon: d, client: newTestDaemonClient(n.cfg.PluginSocket)}
	td.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("serve: %v", err)
			}
		})
	}
	n.cur = td
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(n.cfg.PluginSocket); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("plugin socket did not appear")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// restart stops the running daemon, keeping its veths, pins and files,
// lets change do what a fault does, and starts another.
func (n *testNode) restart(tb testing.TB, change func()) {
	tb.Helper()
	d := n.cur.daemon
	n.cur.stop()
	d.close()
	n.cur = nil
	if change != nil {
		change()
	}
	if err := n.start(tb); err != nil {
		tb.Fatalf("restart daemon: %v\nlogs:\n%s", err, n.logs.String())
	}
}

func (n *testNode) lib(name string) string { return filepath.Join(n.cfg.LibDir, name) }

// live is ipam.json's live copy, in the run directory (ipam.MirrorStore).
func (n *testNode) live() string { return filepath.Join(filepath.Dir(n.cfg.APISocket), ipamFile) }

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
}

func removeFile(tb testing.TB, path string) {
	tb.Helper()
	if err := os.Remove(path); err != nil {
		tb.Fatal(err)
	}
}

func (n *testNode) corrupt(tb testing.TB, names ...string) {
	tb.Helper()
	for _, name := range names {
		if err := os.WriteFile(n.lib(name), []byte(`{"version": 1, "trunc`), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
}

func (n *testNode) write(tb testing.TB, name, content string) {
	tb.Helper()
	if err := os.WriteFile(n.lib(name), []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
}

func (n *testNode) remove(tb testing.TB, names ...string) {
	tb.Helper()
	for _, name := range names {
		if err := os.Remove(n.lib(name)); err != nil {
			tb.Fatal(err)
		}
	}
}

// movedAside lists the copies of name moved aside.
func (n *testNode) movedAside(name string) []string {
	m, _ := filepath.Glob(n.lib(name) + ".corrupt-*")
	return m
}

// healed returns what status says was rebuilt of name.
func (n *testNode) healed(name string) (api.HealedFile, bool) {
	for _, h := range n.cur.daemon.status().Healed {
		if h.File == name {
			return h, true
		}
	}
	return api.HealedFile{}, false
}

// newTestDaemonClient is an HTTP client on a daemon's plugin socket.
func newTestDaemonClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
}

// addEndpoint walks Docker's calls for one container on netID and gives it
// the identity of lbls, as Docker's events would.
func addEndpoint(tb testing.TB, n *testNode, netID, poolID string, lbls map[string]string) datapath.Endpoint {
	tb.Helper()
	td := n.cur
	addr := td.mustCall(tb, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
	epID := randomHex(tb, 32)
	td.mustCall(tb, "/NetworkDriver.CreateEndpoint", map[string]any{
		"NetworkID": netID, "EndpointID": epID, "Interface": map[string]any{"Address": addr}})
	// Join answers once the endpoint is built (driver/creations.go).
	td.mustCall(tb, "/NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/x"})
	if lbls != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := td.daemon.endpoints.SetContainer(ctx, epID, endpoint.Container{ID: "c" + epID[:8], Name: "c" + epID[:8], Labels: lbls}); err != nil {
			tb.Fatal(err)
		}
	}
	ep, ok := td.daemon.datapath.Endpoint(epID)
	if !ok {
		tb.Fatalf("endpoint %s not created", epID)
	}
	return ep
}

// importRules imports rules and waits until every endpoint has them.
func importRules(tb testing.TB, d *Daemon, js string) {
	tb.Helper()
	rules, err := policy.Parse([]byte(js))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.endpoints.ImportRules(ctx, rules); err != nil {
		tb.Fatal(err)
	}
}

// policyOf is an endpoint's policy as its pinned map holds it.
func policyOf(tb testing.TB, d *Daemon, epid uint16) (flags uint32, keys []policy.Key) {
	tb.Helper()
	ep, ok := d.datapath.EndpointByID(epid)
	if !ok {
		tb.Fatalf("endpoint %d is gone", epid)
	}
	keys, err := d.datapath.PolicyEntries(epid)
	if err != nil {
		tb.Fatal(err)
	}
	sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
	return ep.PolicyFlags, keys
}

// dockerView is what Docker would say of the node's networks and
// containers now: every network ours with its endpoints' addresses.
func dockerView(d *Daemon, options map[string]map[string]string, extra ...dockerNetwork) dockerState {
	st := dockerState{networks: map[string]bool{}, endpoints: map[string]bool{}, inUse: map[netip.Prefix]map[netip.Addr]bool{}}
	for _, n := range d.driver.Networks() {
		dn := dockerNetwork{id: n.ID, ourDriver: true, ourIPAM: true, options: options[n.ID],
			containers: map[string]dockernetwork.EndpointResource{}}
		for _, f := range [][2]string{{n.Subnet, n.Gateway}, {n.Subnet6, n.Gateway6}} {
			if f[0] != "" {
				dn.pools = append(dn.pools, dockerPool{subnet: netip.MustParsePrefix(f[0]), gateway: netip.MustParseAddr(f[1])})
			}
		}
		for _, ep := range d.datapath.Endpoints() {
			if ep.DockerNetworkID == n.ID {
				r := dockernetwork.EndpointResource{EndpointID: ep.DockerEndpointID}
				if ep.IPv4.IsValid() {
					r.IPv4Address = ep.IPv4.String()
				}
				if ep.IPv6.IsValid() {
					r.IPv6Address = ep.IPv6.String()
				}
				dn.containers["c"+ep.DockerEndpointID[:8]] = r
			}
		}
		st.details = append(st.details, dn)
	}
	st.details = append(st.details, extra...)
	return st
}

func noPorts(context.Context, string) ([]external.Binding, int, error) { return nil, 1, nil }

// ipam.json and identities.json corrupt, or missing, on a node with
// endpoints: moved aside with a log line, rebuilt from the endpoints'
// records and the pinned ipcache, no address handed out before Docker has
// been asked, every endpoint keeps its identity number and the rules'
// prefix its CIDR identity; once Docker answers, a new address is a free
// one.
func TestHealIPAMAndIdentities(t *testing.T) {
	for _, fault := range []string{"corrupt", "invalid", "missing"} {
		t.Run(fault, func(t *testing.T) {
			n := newTestNode(t)
			poolID, gateway := createTestNetwork(t, n.cur, "net-h", "10.203.0.0/24")
			// The first number is taken by a container that goes (its
			// identity kept for the grace), so that numbering the
			// endpoints anew would give them other numbers.
			gone := addEndpoint(t, n, "net-h", poolID, map[string]string{"id": "gone"})
			n.cur.mustCall(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "net-h", "EndpointID": gone.DockerEndpointID})
			n.cur.mustCall(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": gone.IPv4.Addr().String()})
			// The first CIDR number goes to a prefix the rules drop later
			// (one prefix per import: the order within one is a map's).
			importRules(t, n.cur.daemon, `[{"endpointSelector": {"matchLabels": {"id": "app2"}},
				"egress": [{"toCIDR": ["192.0.2.0/24"]}], "labels": [{"key": "name", "value": "cidr"}]}]`)
			eps := []datapath.Endpoint{
				addEndpoint(t, n, "net-h", poolID, map[string]string{"id": "app1"}),
				addEndpoint(t, n, "net-h", poolID, map[string]string{"id": "app2"}),
				addEndpoint(t, n, "net-h", poolID, map[string]string{"id": "app1"}),
			}
			importRules(t, n.cur.daemon, `[{"endpointSelector": {"matchLabels": {"id": "app2"}},
				"egress": [{"toCIDR": ["198.51.100.0/24"]}], "labels": [{"key": "name", "value": "cidr"}]}]`)
			d := n.cur.daemon
			cidrs := d.identities.CIDRs()
			if len(cidrs) != 1 || cidrs[identity.LocalScope] == netip.MustParsePrefix("198.51.100.0/24") {
				t.Fatalf("CIDR identities %v, want one, not the first number", cidrs)
			}
			before := d.datapath.Endpoints()
			for _, ep := range before {
				if ep.Identity == uint32(identity.MinAllocated) {
					t.Fatalf("set-up: endpoint %d has the first number %d", ep.ID, ep.Identity)
				}
			}
			_, flags2 := policyOf(t, d, eps[1].ID)

			n.restart(t, func() {
				// ipam.json's live copy goes too: with it, the
				// durable copy would be written again from it
				// (TestHealIPAMFromItsLiveCopy).
				switch fault {
				case "corrupt":
					n.corrupt(t, ipamFile, identitiesFile)
					writeFile(t, n.live(), `{"version": 1, "pools": [{"id`)
				case "invalid":
					// They decode, but do not hold together.
					n.write(t, ipamFile, `{"version": 1, "pools": [{"id": "x", "addressSpace": "ebpfnet-local", "pool": "10.203.0.0/24"}]}`)
					n.write(t, identitiesFile, `{"version": 1, "identities": [{"id": 300, "labels": []}, {"id": 300, "labels": []}]}`)
					writeFile(t, n.live(), `{"version": 1, "pools": [{"id": "x", "addressSpace": "ebpfnet-local", "pool": "10.203.0.0/24"}]}`)
				default:
					n.remove(t, ipamFile, identitiesFile)
					removeFile(t, n.live())
				}
			})
			d = n.cur.daemon
			if fault != "missing" {
				for _, f := range []string{ipamFile, identitiesFile} {
					if aside := n.movedAside(f); len(aside) != 1 {
						t.Errorf("%s moved aside to %v, want one copy", f, aside)
					}
				}
				if !strings.Contains(n.logs.String(), "state file is corrupt: moved aside") {
					t.Error("no log line says a state file was corrupt and moved aside")
				}
			} else if !strings.Contains(n.logs.String(), "state file is missing on a node that has endpoints") {
				t.Error("no log line says a state file was missing")
			}
			if h, ok := n.healed(ipamFile); !ok || !h.WaitingForDocker {
				t.Errorf("status on ipam.json: %+v %v", h, ok)
			}
			if _, ok := n.healed(identitiesFile); !ok {
				t.Error("status does not say identities.json was rebuilt")
			}
			// Every endpoint kept its identity, the rules' prefix its.
			after := d.datapath.Endpoints()
			for i := range before {
				if after[i].Identity != before[i].Identity {
					t.Errorf("endpoint %d: identity %d after the loss, was %d", before[i].ID, after[i].Identity, before[i].Identity)
				}
			}
			if got := d.identities.CIDRs(); !reflect.DeepEqual(got, cidrs) {
				t.Errorf("CIDR identities %v after the loss, want %v", got, cidrs)
			}
			if _, flags := policyOf(t, d, eps[1].ID); !reflect.DeepEqual(flags, flags2) {
				t.Errorf("app2's policy %v after the loss, was %v", flags, flags2)
			}
			for _, ep := range before {
				if ls, ok := d.identities.Lookup(identity.ID(ep.Identity)); !ok || ls.String() != "container:id="+ep.Labels["id"] {
					t.Errorf("identity %d is %v after the loss, want id=%s's", ep.Identity, ls, ep.Labels["id"])
				}
			}
			// No address before Docker has been asked.
			code, out := n.cur.call(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})
			if code == http.StatusOK || !strings.Contains(fmt.Sprint(out["Error"]), "being rebuilt") {
				t.Fatalf("RequestAddress before Docker was asked: HTTP %d %v", code, out)
			}
			if !hasProblem(d, "waiting for Docker") {
				t.Errorf("status problems %v do not say IPAM waits for Docker", d.problems())
			}

			// Docker answers, its list read a moment before the last
			// container was there: the endpoint's record keeps its
			// address taken.
			view := dockerView(d, nil)
			for cid, c := range view.details[0].containers {
				if c.EndpointID == eps[2].DockerEndpointID {
					delete(view.details[0].containers, cid)
				}
			}
			d.healFromDocker(context.Background(), view, d.snapshotOwnState(), noPorts, d.log)
			if d.ipam.Pending() {
				t.Fatal("still pending after Docker answered")
			}
			addr := n.cur.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
			for _, ep := range after {
				if ep.IPv4.String() == addr {
					t.Fatalf("new address %s is endpoint %d's", addr, ep.ID)
				}
			}
			if addr == gateway {
				t.Fatalf("new address %s is the gateway", addr)
			}
			// The files are whole again: a plain restart loads them.
			n.restart(t, nil)
			if len(n.cur.daemon.status().Healed) != 0 {
				t.Errorf("a restart after healing rebuilt %+v again", n.cur.daemon.status().Healed)
			}
			if n.cur.daemon.ipam.Pending() {
				t.Error("pending again after a plain restart")
			}
		})
	}
}

func hasProblem(d *Daemon, s string) bool {
	for _, p := range d.problems() {
		if strings.Contains(p, s) {
			return true
		}
	}
	return false
}

// networks.json corrupt: rebuilt from the endpoints' records with their
// index, subnet and gateway; until Docker confirms the options the
// endpoints keep their policy and a new one denies all; then the options
// are Docker's, and a network that had no endpoint comes back too.
func TestHealNetworks(t *testing.T) {
	n := newTestNode(t)
	poolID := createTestNetworkWith(t, n.cur, "net-n", "10.204.0.0/24", map[string]any{"ebpfnet.policy-enforcement": "never"})
	createTestNetwork(t, n.cur, "net-empty", "10.205.0.0/24")
	ep := addEndpoint(t, n, "net-n", poolID, map[string]string{"id": "app1"})
	importRules(t, n.cur.daemon, `[{"endpointSelector": {}, "ingress": [{"fromEntities": ["host"]}], "labels": [{"key": "name", "value": "all"}]}]`)
	d := n.cur.daemon
	if flags, _ := policyOf(t, d, ep.ID); flags != 0 {
		t.Fatalf("with enforcement never the endpoint enforces %#x", flags)
	}
	nets := d.driver.Networks()

	n.restart(t, func() { n.corrupt(t, networksFile) })
	d = n.cur.daemon
	got := d.driver.Networks()
	if len(got) != 1 || got[0].ID != "net-n" || !got[0].Rebuilt || got[0].Index != nets[0].Index || got[0].Subnet != nets[0].Subnet || got[0].Gateway != nets[0].Gateway {
		t.Fatalf("rebuilt networks %+v, want net-n as it was (%+v), rebuilt", got, nets[0])
	}
	// The default mode would enforce the rule: the options are not known,
	// so the endpoint keeps what it had.
	waitSettled(t, d)
	if flags, _ := policyOf(t, d, ep.ID); flags != 0 {
		t.Fatalf("on the rebuilt network the endpoint enforces %#x, want its policy kept", flags)
	}
	fresh := addEndpoint(t, n, "net-n", poolID, map[string]string{"id": "app2"})
	if flags, keys := policyOf(t, d, fresh.ID); flags != datapath.FlagEnforceIngress|datapath.FlagEnforceEgress || len(keys) != 0 {
		t.Fatalf("a new endpoint on the rebuilt network: flags %#x, %d entries; want deny all", flags, len(keys))
	}
	if !hasProblem(d, "rebuilt, waiting for Docker") {
		t.Errorf("status problems %v", d.problems())
	}

	view := dockerView(d, map[string]map[string]string{"net-n": {"ebpfnet.policy-enforcement": "never"}},
		dockerNetwork{id: "net-empty", ourDriver: true, ourIPAM: true, pools: []dockerPool{{subnet: netip.MustParsePrefix("10.205.0.0/24"), gateway: netip.MustParseAddr("10.205.0.1")}}})
	d.healFromDocker(context.Background(), view, d.snapshotOwnState(), noPorts, d.log)
	got = d.driver.Networks()
	if len(got) != 2 || got[0].Rebuilt || got[0].PolicyMode() != "never" || got[1].ID != "net-empty" {
		t.Fatalf("networks after Docker answered %+v", got)
	}
	waitSettled(t, d)
	if flags, _ := policyOf(t, d, fresh.ID); flags != 0 {
		t.Fatalf("confirmed with enforcement never, the new endpoint enforces %#x", flags)
	}
	if h, ok := n.healed(networksFile); !ok || h.WaitingForDocker || h.MovedTo == "" {
		t.Errorf("status on networks.json %+v %v", h, ok)
	}
}

// waitSettled waits until the endpoint manager has run what is queued.
func waitSettled(t *testing.T, d *Daemon) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.endpoints.ImportRules(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// createTestNetworkWith is createTestNetwork with -o options.
func createTestNetworkWith(tb testing.TB, td *testDaemon, netID, subnet string, generic map[string]any) (poolID string) {
	tb.Helper()
	pool := td.mustCall(tb, "/IpamDriver.RequestPool", map[string]any{"AddressSpace": "ebpfnet-local", "Pool": subnet})
	poolID = pool["PoolID"].(string)
	gw := td.mustCall(tb, "/IpamDriver.RequestAddress", map[string]any{
		"PoolID": poolID, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})
	td.mustCall(tb, "/NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": netID, "Options": map[string]any{"com.docker.network.generic": generic},
		"IPv4Data": []map[string]any{{"AddressSpace": "ebpfnet-local", "Pool": subnet, "Gateway": gw["Address"]}},
	})
	return poolID
}

// policy.json corrupt or missing: the rules cannot be rebuilt; every
// restored endpoint keeps its pinned policy, a new one denies both ways,
// status says "policy lost, re-import", until an import.
func TestHealPolicy(t *testing.T) {
	for _, fault := range []string{"corrupt", "missing"} {
		t.Run(fault, func(t *testing.T) {
			n := newTestNode(t)
			poolID, _ := createTestNetwork(t, n.cur, "net-p", "10.206.0.0/24")
			app1 := addEndpoint(t, n, "net-p", poolID, map[string]string{"id": "app1"})
			app2 := addEndpoint(t, n, "net-p", poolID, map[string]string{"id": "app2"})
			const rules = `[{"endpointSelector": {"matchLabels": {"id": "app1"}},
				"ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}]}], "labels": [{"key": "name", "value": "r"}]}]`
			importRules(t, n.cur.daemon, rules)
			flags1, keys1 := policyOf(t, n.cur.daemon, app1.ID)
			flags2, keys2 := policyOf(t, n.cur.daemon, app2.ID)
			if flags1 == 0 || len(keys1) == 0 {
				t.Fatalf("set-up: app1 enforces %#x with %v", flags1, keys1)
			}

			n.restart(t, func() {
				if fault == "corrupt" {
					n.corrupt(t, policyFile)
				} else {
					n.remove(t, policyFile)
				}
			})
			d := n.cur.daemon
			waitRegenerated(t, d)
			for _, c := range []struct {
				epid  uint16
				flags uint32
				keys  []policy.Key
			}{{app1.ID, flags1, keys1}, {app2.ID, flags2, keys2}} {
				if flags, keys := policyOf(t, d, c.epid); flags != c.flags || !reflect.DeepEqual(keys, c.keys) {
					t.Errorf("endpoint %d after the loss: %#x %v, want its pinned %#x %v", c.epid, flags, keys, c.flags, c.keys)
				}
			}
			if !hasProblem(d, "policy lost, re-import") || !hasProblem(d, "policy.json was "+fault) {
				t.Errorf("status problems %v do not say policy lost, re-import, nor that policy.json was %s", d.problems(), fault)
			}
			if !strings.Contains(n.logs.String(), "policy lost, re-import") {
				t.Error("the log does not say policy lost, re-import")
			}
			fresh := addEndpoint(t, n, "net-p", poolID, map[string]string{"id": "app2"})
			if flags, keys := policyOf(t, d, fresh.ID); flags != datapath.FlagEnforceIngress|datapath.FlagEnforceEgress || len(keys) != 0 {
				t.Fatalf("a new endpoint while the policy is lost: %#x %v, want deny all", flags, keys)
			}
			// Still lost after another restart.
			n.restart(t, nil)
			d = n.cur.daemon
			if !hasProblem(d, "policy lost") {
				t.Fatal("a restart forgot that the policy is lost")
			}
			importRules(t, d, rules)
			if hasProblem(d, "policy lost") {
				t.Fatalf("still lost after an import: %v", d.problems())
			}
			if flags, _ := policyOf(t, d, fresh.ID); flags != 0 {
				t.Fatalf("after the import app2's new endpoint enforces %#x, want what the rules say", flags)
			}
			if flags, keys := policyOf(t, d, app1.ID); flags != flags1 || !reflect.DeepEqual(keys, keys1) {
				t.Fatalf("after the import app1 enforces %#x %v, want what the rules say, %#x %v", flags, keys, flags1, keys1)
			}
		})
	}
}

// waitRegenerated waits for the regeneration a start schedules.
func waitRegenerated(t *testing.T, d *Daemon) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d.endpoints.Regenerations() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no regeneration after start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A fresh node has no state and gets none rebuilt, only its empty policy
// written (so that a policy.json missing later means a lost one); a state
// file that cannot be read at all stops the start, as before, and is not
// moved.
func TestFreshNodeAndUnreadableFile(t *testing.T) {
	n := newTestNode(t)
	if h := n.cur.daemon.status().Healed; len(h) != 0 {
		t.Fatalf("a fresh node rebuilt %+v", h)
	}
	if _, err := os.Stat(n.lib(policyFile)); err != nil {
		t.Fatalf("a fresh start wrote no policy.json: %v", err)
	}
	n.restart(t, nil)
	if h := n.cur.daemon.status().Healed; len(h) != 0 || len(n.cur.daemon.problems()) != 0 {
		t.Fatalf("a second start of a node without endpoints rebuilt %+v, problems %v", h, n.cur.daemon.problems())
	}
	d := n.cur.daemon
	n.cur.stop()
	d.close()
	n.cur = nil
	if err := os.Mkdir(n.lib(ipamFile), 0o700); err != nil {
		t.Fatal(err)
	}
	err := n.start(t)
	if err == nil || !strings.Contains(err.Error(), ipamFile) {
		t.Fatalf("start with an unreadable ipam.json: %v, want an error naming it", err)
	}
	if aside := n.movedAside(ipamFile); len(aside) != 0 {
		t.Fatalf("an unreadable file was moved aside: %v", aside)
	}
	if err := os.Remove(n.lib(ipamFile)); err != nil {
		t.Fatal(err)
	}
	n.cur = nil
	if err := n.start(t); err != nil {
		t.Fatal(err)
	}
}

// external.json corrupt: the published ports come back from our DNAT
// rules; when the rules are gone too, from Docker's port bindings.
func TestHealExternal(t *testing.T) {
	n := newTestNode(t, func(cfg *Config) {
		cfg.External = true
		cfg.DriverName = "ebpfnet-test-" + randomHex(t, 4)
	})
	poolID, _ := createTestNetwork(t, n.cur, "net-x", "10.207.0.0/24")
	ep := addEndpoint(t, n, "net-x", poolID, nil)
	n.cur.mustCall(t, "/NetworkDriver.ProgramExternalConnectivity", map[string]any{
		"NetworkID": "net-x", "EndpointID": ep.DockerEndpointID,
		"Options": map[string]any{external.OptionPortMap: []map[string]any{
			{"Proto": 6, "Port": 80, "HostPort": 0},
			{"Proto": 17, "Port": 53, "HostIP": "127.0.0.1", "HostPort": 0},
		}},
	})
	want := n.cur.daemon.external.Mappings()
	if len(want[ep.DockerEndpointID]) != 2 {
		t.Fatalf("set-up: mappings %+v", want)
	}

	n.restart(t, func() { n.corrupt(t, externalFile) })
	if got := n.cur.daemon.external.Mappings(); !sameMappings(got, want) {
		t.Fatalf("mappings after the loss %+v, want %+v", got, want)
	}
	if h, ok := n.healed(externalFile); !ok || !strings.Contains(h.Rebuilt, "of 1 endpoints from our iptables rules") {
		t.Fatalf("status on external.json %+v %v", h, ok)
	}

	// The rules go too: Docker's bindings are programmed again.
	dnat := chainPrefix(n.cfg.DriverName) + "-DNAT"
	n.restart(t, func() {
		n.remove(t, externalFile)
		if out, err := exec.Command("iptables", "-t", "nat", "-F", dnat).CombinedOutput(); err != nil {
			t.Fatalf("flush %s: %v %s", dnat, err, out)
		}
	})
	d := n.cur.daemon
	if got := d.external.Mappings(); len(got) != 0 {
		t.Fatalf("mappings without rules nor file %+v", got)
	}
	ports := func(_ context.Context, id string) ([]external.Binding, int, error) {
		return []external.Binding{{Proto: external.ProtoTCP, Port: 80, HostPort: want[ep.DockerEndpointID][0].HostPort}}, 1, nil
	}
	d.healFromDocker(context.Background(), dockerView(d, nil), d.snapshotOwnState(), ports, d.log)
	got := d.external.Mappings()[ep.DockerEndpointID]
	if len(got) != 1 || got[0].ContainerPort != 80 || got[0].ContainerIP != ep.IPv4.Addr() {
		t.Fatalf("mappings from Docker's bindings %+v", got)
	}
}

func sameMappings(a, b map[string][]external.Mapping) bool {
	norm := func(m map[string][]external.Mapping) string {
		out := map[string][]string{}
		for id, ms := range m {
			for _, mp := range ms {
				out[id] = append(out[id], mp.String())
			}
			sort.Strings(out[id])
		}
		data, _ := json.Marshal(out)
		return string(data)
	}
	return norm(a) == norm(b)
}

// Docker's port bindings as Docker's inspection gives them become what
// ProgramExternalConnectivity would have carried.
func TestBindingsOfDockerPorts(t *testing.T) {
	got, err := bindingsOf(map[string][]portSpec{
		"80/tcp":  {{hostPort: "8080"}, {hostIP: "::", hostPort: "8080"}},
		"53/udp":  {{hostIP: "127.0.0.1", hostPort: ""}},
		"81/tcp":  {{hostPort: "9000-9005"}},
		"9/sctp":  {{hostPort: "9"}},
		"443/tcp": {{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []external.Binding{
		{Proto: external.ProtoUDP, Port: 53, HostIP: "127.0.0.1"},
		{Proto: external.ProtoTCP, Port: 80, HostPort: 8080},
		{Proto: external.ProtoTCP, Port: 80, HostIP: "::", HostPort: 8080},
		{Proto: external.ProtoTCP, Port: 81, HostPort: 9000, HostPortEnd: 9005},
		{Proto: external.ProtoTCP, Port: 443},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("bindings %+v\nwant %+v", got, want)
	}
	if _, err := bindingsOf(map[string][]portSpec{"80/tcp": {{hostPort: "9-8"}}}); err == nil {
		t.Fatal("a reversed range was taken")
	}
}

// ipam.json and networks.json lost on a node with a dual-stack network:
// both pools come back from the endpoints' records, the IPv6 one with its
// gateway and the endpoints' IPv6 addresses, and the network with its
// IPv6 subnet; once Docker answers, a new IPv6 address is a free one.
func TestHealDualStack(t *testing.T) {
	n := newTestNode(t)
	td := n.cur
	pool4, gw4 := createTestNetworkPools(t, td, "10.204.0.0/24")
	pool6 := td.mustCall(t, "/IpamDriver.RequestPool", map[string]any{"AddressSpace": "ebpfnet-local", "Pool": "fd00:e2e:44::/64", "V6": true})["PoolID"].(string)
	gw6 := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{
		"PoolID": pool6, "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})["Address"].(string)
	td.mustCall(t, "/NetworkDriver.CreateNetwork", map[string]any{"NetworkID": "net-d", "Options": map[string]any{},
		"IPv4Data": []map[string]any{{"AddressSpace": "ebpfnet-local", "Pool": "10.204.0.0/24", "Gateway": gw4}},
		"IPv6Data": []map[string]any{{"AddressSpace": "ebpfnet-local", "Pool": "fd00:e2e:44::/64", "Gateway": gw6}}})
	var addrs6 []string
	for range 2 {
		a4 := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": pool4})["Address"].(string)
		a6 := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": pool6})["Address"].(string)
		id := randomHex(t, 32)
		td.mustCall(t, "/NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": "net-d", "EndpointID": id,
			"Interface": map[string]any{"Address": a4, "AddressIPv6": a6}})
		td.mustCall(t, "/NetworkDriver.Join", map[string]any{"NetworkID": "net-d", "EndpointID": id, "SandboxKey": "/x"})
		addrs6 = append(addrs6, a6)
	}
	n.restart(t, func() { n.remove(t, ipamFile, networksFile) })
	d := n.cur.daemon
	var got6 ipam.PoolInfo
	for _, p := range d.ipam.Pools() {
		if p.ID == pool6 {
			got6 = p
		}
	}
	want := []netip.Addr{netip.MustParsePrefix(gw6).Addr(), netip.MustParsePrefix(addrs6[0]).Addr(), netip.MustParsePrefix(addrs6[1]).Addr()}
	if got6.Gateway != want[0] || !reflect.DeepEqual(got6.Addresses, want) {
		t.Fatalf("rebuilt IPv6 pool %+v, want gateway %s and addresses %v", got6, gw6, want)
	}
	nets := d.driver.Networks()
	if len(nets) != 1 || nets[0].Subnet6 != "fd00:e2e:44::/64" || nets[0].Gateway6 != want[0].String() || !nets[0].Rebuilt {
		t.Fatalf("rebuilt networks %+v", nets)
	}
	d.healFromDocker(context.Background(), dockerView(d, nil), d.snapshotOwnState(), noPorts, d.log)
	if d.ipam.Pending() {
		t.Fatal("still pending after Docker answered")
	}
	addr := n.cur.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": pool6})["Address"].(string)
	if addr == gw6 || addr == addrs6[0] || addr == addrs6[1] {
		t.Fatalf("new IPv6 address %s is in use", addr)
	}
	if nets := d.driver.Networks(); nets[0].Rebuilt || nets[0].Subnet6 != "fd00:e2e:44::/64" {
		t.Errorf("networks after Docker answered: %+v", nets)
	}
}
