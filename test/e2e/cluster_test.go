package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// A cluster on one machine: three nodes (scripts/node: each a network and
// mount namespace with its own dockerd, containerd and ebpfnet daemon) on
// one underlay, and Debian's etcd on the underlay's gateway address. The
// daemons follow their own node's dockerd and reach etcd over the
// underlay, as on three hosts.

const (
	clusterUnderlay = "ebc0"
	clusterSubnet   = "10.98.0"
	clusterEtcd     = "http://" + clusterSubnet + ".1:2379"
	clusterNet      = "e2e-cnet"
	clusterNetCIDR  = "10.90.0.0/16"
	// clusterLeaseTTL is short so that a dead node's entries go within
	// the test; the product's default is 60 s.
	clusterLeaseTTL = "6s"
)

type testCluster struct {
	t      *testing.T
	bin    string
	script string
	nodes  []*testutil.Node
	etcd   string // data directory
}

type clusterNode struct {
	c *testCluster
	*testutil.Node
}

func (c *testCluster) node(i int) clusterNode { return clusterNode{c: c, Node: c.nodes[i]} }

// newTestCluster brings up etcd and n nodes with a daemon each, and the
// cluster network on every node.
func newTestCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	if node := testutil.InNode(); node != "" {
		// make e2e-docker29 runs the suite inside a node; the cluster's
		// nodes are made from the host, where make e2e runs this test.
		t.Skipf("in node %s: the cluster test runs from the host (make e2e)", node)
	}
	bin := *binaryFlag
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "etcd", "nsenter", "containerd", "dockerd")
	if bin == "" {
		testutil.Missing(t, "-ebpfnet-binary not given (run `make e2e`)")
	}
	c := &testCluster{t: t, bin: bin, script: testutil.NodeScript(t, "."), etcd: t.TempDir()}
	for i := 1; i <= n; i++ {
		c.nodes = append(c.nodes, testutil.UpNode(t, c.script, fmt.Sprintf("ebc%d", i),
			"--underlay", clusterUnderlay, "--addr", fmt.Sprintf("%s.%d/24", clusterSubnet, 10+i)))
	}
	c.startEtcd()
	for i := range c.nodes {
		c.node(i).startDaemon("ebpfnet")
	}
	for i := range c.nodes {
		c.node(i).waitConnected()
		c.node(i).docker("network", "create", "-d", "ebpfnet", "--ipam-driver", "ebpfnet", "--subnet", clusterNetCIDR, clusterNet)
	}
	return c
}

// startEtcd runs etcd in the underlay, on the gateway address, with its
// data in the test's directory (kept across a stop and start).
func (c *testCluster) startEtcd() {
	c.t.Helper()
	gw := clusterSubnet + ".1"
	c.nodes[0].StartInUnderlay(c.t, "etcd", "etcd", "--name", "e2e", "--data-dir", c.etcd,
		"--listen-client-urls", "http://"+gw+":2379", "--advertise-client-urls", "http://"+gw+":2379",
		"--listen-peer-urls", "http://"+gw+":2380", "--initial-advertise-peer-urls", "http://"+gw+":2380",
		"--initial-cluster", "e2e=http://"+gw+":2380")
	c.t.Cleanup(c.stopEtcd)
}

// stopEtcd stops etcd and waits for it to end (no error if it does not
// run).
func (c *testCluster) stopEtcd() {
	_ = exec.Command(c.script, "kill", "ul-"+clusterUnderlay, "etcd").Run()
}

// startDaemon starts the node's daemon under the process name proc
// (another name for each start: a killed one's may linger a moment).
func (n clusterNode) startDaemon(proc string) {
	n.c.t.Helper()
	n.Start(n.c.t, proc, n.c.bin, "daemon", "--log-level", "debug",
		"--etcd-endpoints", clusterEtcd, "--node-name", n.Name, "--etcd-lease-ttl", clusterLeaseTTL)
	n.c.t.Cleanup(func() {
		if n.c.t.Failed() {
			n.c.t.Logf("daemon log of %s (%s):\n%s", n.Name, proc, tailLines(n.Log(proc), 60))
		}
	})
}

// killDaemon kills the daemon started as proc with SIGKILL.
func (n clusterNode) killDaemon(proc string) {
	n.c.t.Helper()
	if out, err := exec.Command(n.c.script, "kill", n.Name, proc, "KILL").CombinedOutput(); err != nil {
		n.c.t.Fatalf("kill -9 the daemon of %s: %v %s", n.Name, err, out)
	}
}

func tailLines(s string, k int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > k {
		lines = lines[len(lines)-k:]
	}
	return strings.Join(lines, "\n")
}

func (n clusterNode) docker(args ...string) string {
	n.c.t.Helper()
	return n.Run(n.c.t, append([]string{"docker"}, args...)...)
}

func (n clusterNode) ebpfnet(args ...string) (string, error) {
	return n.Exec(append([]string{n.c.bin}, args...)...)
}

func (n clusterNode) status() (api.Status, error) {
	var s api.Status
	out, err := n.ebpfnet("status", "-o", "json")
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal([]byte(out), &s)
}

// waitConnected waits until the node's daemon answers and is connected
// to etcd.
func (n clusterNode) waitConnected() {
	n.c.t.Helper()
	waitFor(n.c.t, 30*time.Second, fmt.Sprintf("node %s's daemon connected to etcd", n.Name), func() bool {
		s, err := n.status()
		return err == nil && s.Cluster != nil && s.Cluster.Connected
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// container starts a container on the node and returns its address.
func (n clusterNode) container(name, label string, cmd ...string) string {
	n.c.t.Helper()
	args := []string{"run", "-d", "--name", name, "--network", clusterNet, "--label", label, image}
	n.docker(append(args, cmd...)...)
	return n.docker("inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", clusterNet), name)
}

func (n clusterNode) ping(from, to string) bool {
	_, err := n.Exec("docker", "exec", from, "ping", "-c", "2", "-W", "2", to)
	return err == nil
}

func (n clusterNode) wget(from, url string) (string, error) {
	return n.Exec("docker", "exec", from, "timeout", "4", "wget", "-q", "-O", "-", url)
}

func (n clusterNode) identities() map[string]uint32 {
	n.c.t.Helper()
	out, err := n.ebpfnet("identity", "list", "-o", "json")
	if err != nil {
		n.c.t.Fatal(err)
	}
	var ids []api.Identity
	if err := json.Unmarshal([]byte(out), &ids); err != nil {
		n.c.t.Fatal(err)
	}
	m := map[string]uint32{}
	for _, id := range ids {
		m[strings.Join(id.Labels, ",")] = id.ID
	}
	return m
}

func (n clusterNode) ipcache() []api.IPCacheEntry {
	n.c.t.Helper()
	out, err := n.ebpfnet("bpf", "ipcache", "list", "-o", "json")
	if err != nil {
		n.c.t.Fatal(err)
	}
	var es []api.IPCacheEntry
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		n.c.t.Fatal(err)
	}
	return es
}

func (n clusterNode) policyRevision() uint64 {
	n.c.t.Helper()
	out, err := n.ebpfnet("policy", "get", "-o", "json")
	if err != nil {
		n.c.t.Fatal(err)
	}
	var p api.Policy
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		n.c.t.Fatal(err)
	}
	return p.Revision
}

// TestCluster is the user story on three nodes, one step after
// another on the same cluster.
func TestCluster(t *testing.T) {
	// Registered first, so it runs after every other cleanup: the
	// cluster's teardown leaves nothing on the host.
	t.Cleanup(func() { clusterLeftovers(t) })
	c := newTestCluster(t, 3)
	a, b, z := c.node(0), c.node(1), c.node(2)
	web := a.container("web", "app=web", "sleep", "3600")
	db := b.container("db", "app=db", "httpd", "-f", "-p", "80", "-h", "/www")
	other := z.container("other", "app=other", "sleep", "3600")
	echo := buildUDPEcho(t)
	b.docker("cp", echo, "db:/udpecho")
	a.docker("cp", echo, "web:/udpecho")
	b.docker("exec", "-d", "db", "/udpecho", "serve", ":9999")

	t.Run("addresses come from each node's block", func(t *testing.T) {
		blocks := map[string]bool{}
		for _, ip := range []string{web, db, other} {
			if !strings.HasPrefix(ip, "10.90.") {
				t.Fatalf("address %s outside %s", ip, clusterNetCIDR)
			}
			blocks[strings.Join(strings.Split(ip, ".")[:3], ".")] = true
		}
		if len(blocks) != 3 {
			t.Errorf("addresses %s %s %s: want one block per node", web, db, other)
		}
	})

	t.Run("containers on different nodes talk", func(t *testing.T) {
		waitFor(t, 20*time.Second, "web reaching db over the overlay", func() bool { return a.ping("web", db) })
		if page, err := a.wget("web", "http://"+db+"/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
			t.Errorf("HTTP web (%s) -> db (%s): %q %v", a.Name, b.Name, page, err)
		}
		if out, err := a.Exec("docker", "exec", "web", "/udpecho", "ask", db+":9999", "hi"); err != nil || out != "echo hi" {
			t.Errorf("UDP web -> db: %q %v", out, err)
		}
		if !z.ping("other", web) {
			t.Errorf("other (%s) -> web (%s): no answer", z.Name, a.Name)
		}
	})

	t.Run("identities are the same on every node", func(t *testing.T) {
		want := a.identities()
		for _, k := range []string{"container:app=web", "container:app=db", "container:app=other"} {
			if want[k] == 0 {
				t.Fatalf("node %s does not know %s: %v", a.Name, k, want)
			}
		}
		waitFor(t, 10*time.Second, "the same identities on all nodes", func() bool {
			for _, n := range []clusterNode{b, z} {
				got := n.identities()
				for _, k := range []string{"container:app=web", "container:app=db", "container:app=other"} {
					if got[k] != want[k] {
						return false
					}
				}
			}
			return true
		})
	})

	t.Run("the ipcache names remote endpoints and their node", func(t *testing.T) {
		found := false
		for _, e := range a.ipcache() {
			if e.Prefix == db+"/32" {
				found = true
				if e.Source != "remote" || e.Node != b.Name || e.TunnelEndpoint != b.IP() {
					t.Errorf("db's entry on %s: %+v, want remote on %s (%s)", a.Name, e, b.Name, b.IP())
				}
			}
		}
		if !found {
			t.Errorf("node %s's ipcache has no entry for db %s", a.Name, db)
		}
	})

	t.Run("node list", func(t *testing.T) {
		out, err := a.ebpfnet("node", "list", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var nodes []api.Node
		if err := json.Unmarshal([]byte(out), &nodes); err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 3 {
			t.Fatalf("node list: %s", out)
		}
		for _, n := range nodes {
			if n.State != "alive" || len(n.Blocks) != 1 || n.Heartbeat.IsZero() {
				t.Errorf("node %+v", n)
			}
		}
	})

	t.Run("policy imported on one node holds on all, both ways", func(t *testing.T) {
		rules := `[{"endpointSelector": {"matchLabels": {"app": "db"}},
			"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
			             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
			"labels": [{"key": "name", "value": "db-from-web"}]},
			{"endpointSelector": {"matchLabels": {"app": "web"}},
			"egress": [{"toEndpoints": [{"matchLabels": {"app": "db"}}]}],
			"labels": [{"key": "name", "value": "web-to-db"}]}]`
		file := filepath.Join(t.TempDir(), "rules.json")
		if err := os.WriteFile(file, []byte(rules), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := z.ebpfnet("policy", "import", file); err != nil {
			t.Fatalf("policy import on %s: %v %s", z.Name, err, out)
		}
		rev := z.policyRevision()
		waitFor(t, 10*time.Second, "the same policy revision everywhere", func() bool {
			return a.policyRevision() == rev && b.policyRevision() == rev
		})
		// db's ingress (node b) allows web on TCP 80 only.
		if page, err := a.wget("web", "http://"+db+"/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
			t.Errorf("web -> db:80 allowed by the rule: %q %v", page, err)
		}
		if a.ping("web", db) {
			t.Error("web -> db ICMP passed an L4 rule for TCP 80")
		}
		if _, err := z.wget("other", "http://"+db+"/"); err == nil {
			t.Error("other -> db:80 passed db's ingress policy")
		}
		// web's egress (node a) allows db alone.
		if a.ping("web", other) {
			t.Error("web -> other passed web's egress policy")
		}
	})

	t.Run("the monitor names the remote sender", func(t *testing.T) {
		b.Start(t, "monitor", c.bin, "monitor", "--type", "drop", "-o", "json")
		time.Sleep(500 * time.Millisecond)
		_, _ = z.wget("other", "http://"+db+"/")
		waitFor(t, 10*time.Second, "a drop naming app=other on db's node", func() bool {
			return strings.Contains(b.Log("monitor"), "container:app=other")
		})
		b.Stop(t, "monitor")
	})

	t.Run("IPv6 containers on different nodes talk over the IPv4 underlay, under policy", func(t *testing.T) {
		const net6, subnet6 = "e2e-cnet6", "fd00:e2e:c::/64"
		for _, n := range []clusterNode{a, b} {
			n.docker("network", "create", "-d", "ebpfnet", "--ipam-driver", "ebpfnet", "--ipv6",
				"--subnet", "10.92.0.0/16", "--subnet", subnet6, net6)
		}
		addr6 := func(n clusterNode, name string) string {
			return n.docker("inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).GlobalIPv6Address}}", net6), name)
		}
		a.docker("run", "-d", "--name", "v6a", "--network", net6, "--label", "app=v6a", image, "sleep", "3600")
		b.docker("run", "-d", "--name", "v6b", "--network", net6, "--label", "app=v6b", image, "httpd", "-f", "-p", "80", "-h", "/www")
		v6a, v6b := addr6(a, "v6a"), addr6(b, "v6b")
		blockOf := func(s string) netip.Prefix {
			ip, err := netip.ParseAddr(s)
			if err != nil || !netip.MustParsePrefix(subnet6).Contains(ip) {
				t.Fatalf("IPv6 address %q outside %s", s, subnet6)
			}
			return netip.PrefixFrom(ip, 112).Masked()
		}
		if blockOf(v6a) == blockOf(v6b) {
			t.Fatalf("IPv6 addresses %s (%s) and %s (%s): want one of each node's /112 block", v6a, a.Name, v6b, b.Name)
		}
		waitFor(t, 20*time.Second, "v6a reaching v6b over the overlay", func() bool { return a.ping("v6a", v6b) })
		if page, err := a.wget("v6a", "http://["+v6b+"]/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
			t.Errorf("HTTP v6a (%s) -> v6b (%s) over IPv6: %q %v", a.Name, b.Name, page, err)
		}
		found := false
		for _, e := range a.ipcache() {
			if e.Prefix == v6b+"/128" {
				found = true
				if e.Source != "remote" || e.Node != b.Name || e.TunnelEndpoint != b.IP() {
					t.Errorf("v6b's entry on %s: %+v, want remote on %s (%s)", a.Name, e, b.Name, b.IP())
				}
			}
		}
		if !found {
			t.Errorf("node %s's ipcache has no entry for v6b %s", a.Name, v6b)
		}
		// A rule imported on a third node: v6b takes TCP 80 from v6a only,
		// judged on b by the identity the VNI carries.
		file := filepath.Join(t.TempDir(), "rules.json")
		if err := os.WriteFile(file, []byte(`[{"endpointSelector": {"matchLabels": {"app": "v6b"}},
			"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "v6a"}}],
			             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
			"labels": [{"key": "name", "value": "v6b-from-v6a"}]}]`), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := z.ebpfnet("policy", "import", file); err != nil {
			t.Fatalf("policy import on %s: %v %s", z.Name, err, out)
		}
		rev := z.policyRevision()
		waitFor(t, 10*time.Second, "the revision on b", func() bool { return b.policyRevision() == rev })
		if page, err := a.wget("v6a", "http://["+v6b+"]/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
			t.Errorf("v6a -> v6b:80 over IPv6, allowed by the rule: %q %v", page, err)
		}
		if a.ping("v6a", v6b) {
			t.Error("v6a -> v6b ICMPv6 passed an L4 rule for TCP 80")
		}
		for _, n := range []clusterNode{a, b} {
			n.docker("rm", "-f", map[string]string{a.Name: "v6a", b.Name: "v6b"}[n.Name])
			n.docker("network", "rm", net6)
		}
	})

	t.Run("etcd down: flows go on, known labels start, new ones wait; etcd back: resync", func(t *testing.T) {
		c.stopEtcd()
		waitFor(t, 20*time.Second, "node a to see etcd gone", func() bool {
			s, err := a.status()
			return err == nil && s.Cluster != nil && !s.Cluster.Connected
		})
		if page, err := a.wget("web", "http://"+db+"/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
			t.Errorf("web -> db without etcd: %q %v", page, err)
		}
		web2 := a.container("web2", "app=web", "sleep", "3600")
		if page, err := a.wget("web2", "http://"+db+"/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
			t.Errorf("a new container of known labels, without etcd: %q %v", page, err)
		}
		_ = web2
		a.container("newcomer", "app=newcomer", "sleep", "3600")
		waitFor(t, 10*time.Second, "the newcomer reported as waiting for its identity", func() bool {
			s, err := a.status()
			return err == nil && s.Cluster != nil && s.Cluster.WaitingForIdentity == 1
		})
		// A new network needs etcd: Docker hears why, in time.
		start := time.Now()
		out, err := a.Exec("docker", "network", "create", "-d", "ebpfnet", "--ipam-driver", "ebpfnet", "--subnet", "10.91.0.0/16", "e2e-cnet2")
		if err == nil || !strings.Contains(err.Error(), "etcd") {
			t.Errorf("a new network without etcd: %q %v", out, err)
		}
		if took := time.Since(start); took > 15*time.Second {
			t.Errorf("the refusal took %s", took)
		}
		// A daemon started while etcd is away restores its endpoints and
		// serves them.
		a.Stop(t, "ebpfnet")
		a.startDaemon("ebpfnet-offline")
		waitFor(t, 20*time.Second, "node a's daemon serving again without etcd", func() bool {
			s, err := a.status()
			return err == nil && s.Cluster != nil && !s.Cluster.Connected && s.Restored >= 3
		})
		if page, err := a.wget("web", "http://"+db+"/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
			t.Errorf("web -> db after a restart without etcd: %q %v", page, err)
		}
		c.startEtcd()
		for _, n := range []clusterNode{a, b, z} {
			n.waitConnected()
		}
		waitFor(t, 20*time.Second, "the newcomer's identity everywhere", func() bool {
			id := a.identities()["container:app=newcomer"]
			return id != 0 && b.identities()["container:app=newcomer"] == id
		})
		if s, _ := a.status(); s.Cluster == nil || s.Cluster.WaitingForIdentity != 0 {
			t.Errorf("still waiting after etcd came back: %+v", s.Cluster)
		}
	})

	t.Run("a daemon killed and restarted disturbs no cross-node flow", func(t *testing.T) {
		done := make(chan string, 1)
		go func() {
			out, _ := a.Exec("docker", "exec", "web", "/bin/sh", "-c",
				"for i in $(seq 40); do timeout 2 wget -q -O /dev/null http://"+db+"/ 2>/dev/null && echo ok || echo fail; sleep 0.1; done")
			done <- out
		}()
		time.Sleep(time.Second)
		b.killDaemon("ebpfnet")
		time.Sleep(500 * time.Millisecond)
		b.startDaemon("ebpfnet-restarted")
		b.waitConnected()
		out := <-done
		if n := strings.Count(out, "fail"); n > 0 || strings.Count(out, "ok") < 40 {
			t.Errorf("%d of 40 requests across the restart failed:\n%s", n, out)
		}
	})

	t.Run("node remove frees a dead node's block and cleans its peers", func(t *testing.T) {
		if err := exec.Command(c.script, "down", z.Name).Run(); err != nil {
			t.Fatal(err)
		}
		if out, err := a.ebpfnet("node", "remove", b.Name); err == nil {
			t.Errorf("a live node was removed: %s", out)
		}
		waitFor(t, 40*time.Second, "node z to be dead and its endpoints gone from a's ipcache", func() bool {
			out, err := a.ebpfnet("node", "list", "-o", "json")
			if err != nil || !strings.Contains(out, `"dead"`) {
				return false
			}
			for _, e := range a.ipcache() {
				if e.Prefix == other+"/32" {
					return false
				}
			}
			return true
		})
		if out, err := a.ebpfnet("node", "remove", z.Name); err != nil {
			t.Fatalf("node remove %s: %v %s", z.Name, err, out)
		}
		waitFor(t, 10*time.Second, "z's block gone from every peer", func() bool {
			for _, n := range []clusterNode{a, b} {
				for _, e := range n.ipcache() {
					if e.Node == z.Name {
						return false
					}
				}
			}
			return true
		})
		out, _ := a.ebpfnet("node", "list", "-o", "json")
		if strings.Contains(out, z.Name) {
			t.Errorf("the removed node is still listed: %s", out)
		}
	})
}

// clusterLeftovers fails the test for anything of the cluster left on the
// host: nodes, their directories, devices, or etcd.
func clusterLeftovers(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(testutil.NodeScript(t, "."), "list").CombinedOutput(); err != nil || strings.Contains(string(out), "ebc") {
		t.Errorf("nodes left: %v\n%s", err, out)
	}
	if links, _ := exec.Command("ip", "-o", "link").CombinedOutput(); strings.Contains(string(links), "ebc") {
		t.Errorf("devices left on the host:\n%s", links)
	}
	for _, dir := range []string{"/run/ebpfnet-nodes", "/var/lib/ebpfnet-nodes"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.Contains(e.Name(), "ebc") {
				t.Errorf("%s/%s left", dir, e.Name())
			}
		}
	}
	if out, err := exec.Command("pgrep", "-f", "etcd --name e2e").CombinedOutput(); err == nil {
		t.Errorf("etcd still runs: %s", out)
	}
}
