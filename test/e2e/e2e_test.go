package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
)

// TestContainersTalkThroughTheirOwnPrograms is the first slice as a user
// sees it: a network with --subnet, an httpd and a client; ping and HTTP
// between them, to the gateway, and from the host; each container behind its
// own BPF programs on its own lxc veth, and no bridge.
func TestContainersTalkThroughTheirOwnPrograms(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	network(t, "e2e-net1", "--subnet", "10.231.0.0/16")
	httpd(t, "e2e-app1", "e2e-net1", "--label", "id=app1")
	sleeper(t, "e2e-app2", "e2e-net1", "--label", "id=app2")
	app1 := containerIP(t, "e2e-app1", "e2e-net1")
	app2 := containerIP(t, "e2e-app2", "e2e-net1")
	if !strings.HasPrefix(app1, "10.231.") || !strings.HasPrefix(app2, "10.231.") || app1 == app2 {
		t.Fatalf("addresses %q and %q: want two distinct addresses in 10.231.0.0/16", app1, app2)
	}

	// Inside the container: eth0 with its address, default route via the gateway.
	addr := run(t, "docker", "exec", "e2e-app2", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if !strings.Contains(addr, app2+"/16") {
		t.Errorf("eth0 in the container: %q, want %s/16", addr, app2)
	}
	route := run(t, "docker", "exec", "e2e-app2", "ip", "route", "show", "default")
	if !strings.Contains(route, "via 10.231.0.1 dev eth0") {
		t.Errorf("default route in the container: %q, want via 10.231.0.1 dev eth0", route)
	}

	if err := ping("e2e-app2", app1); err != nil {
		t.Errorf("ping app2 -> app1: %v", err)
	}
	page, err := execIn("e2e-app2", "timeout", "5", "wget", "-q", "-O", "-", "http://"+app1+"/")
	if err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("HTTP app2 -> app1: %q, %v", page, err)
	}
	if err := ping("e2e-app2", "10.231.0.1"); err != nil {
		t.Errorf("ping app2 -> gateway: %v", err)
	}
	// The gateway answered ARP with the node MAC of app2's endpoint.
	eps := endpoints(t)
	if len(eps) != 2 {
		t.Fatalf("endpoint list shows %d endpoints, want 2: %+v", len(eps), eps)
	}
	app2ep := eps[0]
	if app2ep.IPv4 != app2 {
		app2ep = eps[1]
	}
	neigh := run(t, "docker", "exec", "e2e-app2", "ip", "neigh", "show", "10.231.0.1")
	if !strings.Contains(neigh, app2ep.NodeMAC) {
		t.Errorf("container's neighbour entry for the gateway %q, want node MAC %s", neigh, app2ep.NodeMAC)
	}

	// The host reaches the containers.
	if out, err := tryRun("busybox", "ping", "-c", "1", "-W", "2", app1); err != nil {
		t.Errorf("ping host -> app1: %v %s", err, out)
	}
	hostPage, err := tryRun("busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", "http://"+app1+"/")
	if err != nil || !strings.Contains(hostPage, "hello from ebpfnet") {
		t.Errorf("HTTP host -> app1: %q, %v", hostPage, err)
	}

	// Each container sits behind its own programs on its own lxc veth.
	for _, ep := range eps {
		if !regexp.MustCompile(`^lxc[0-9a-f]{12}$`).MatchString(ep.IfName) {
			t.Errorf("endpoint %d interface %q, want lxc + 12 hex digits", ep.ID, ep.IfName)
		}
		link := run(t, "ip", "-d", "link", "show", "dev", ep.IfName)
		if strings.Contains(link, "master") {
			t.Errorf("%s is enslaved to a bridge: %s", ep.IfName, link)
		}
		progs := run(t, "bpftool", "net", "show", "dev", ep.IfName)
		if !strings.Contains(progs, "from_container") || !strings.Contains(progs, "to_container") {
			t.Errorf("bpftool net show dev %s: %s; want from_container and to_container attached", ep.IfName, progs)
		}
		// ... as tc filters in direct-action mode, which status reports.
		if filters := run(t, "tc", "filter", "show", "dev", ep.IfName, "ingress"); !strings.Contains(filters, "direct-action") {
			t.Errorf("tc filter show dev %s ingress: %s; want a direct-action filter", ep.IfName, filters)
		}
		dir := filepath.Join(stateDir, fmt.Sprint(ep.ID))
		header, err := os.ReadFile(filepath.Join(dir, "ep_config.h"))
		if err != nil {
			t.Errorf("endpoint %d: %v", ep.ID, err)
		} else if !regexp.MustCompile(`(?m)^/\*\s*\n \* EBPFNET_BASE64_[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$`).Match(header) ||
			!strings.Contains(string(header), ep.IPv4) {
			t.Errorf("endpoint %d ep_config.h does not start with the restore record or lacks its IPv4:\n%s", ep.ID, header)
		}
		if st, err := os.Stat(filepath.Join(dir, "bpf_lxc.o")); err != nil || st.Size() == 0 {
			t.Errorf("endpoint %d bpf_lxc.o: %v", ep.ID, err)
		}
	}
	var status api.Status
	if err := json.Unmarshal([]byte(run(t, bin, "status", "-o", "json")), &status); err != nil || status.Datapath != "tc clsact (direct-action)" {
		t.Errorf("status reports the datapath as %q (%v), want tc clsact (direct-action)", status.Datapath, err)
	}
	if out := run(t, "ip", "-o", "link", "show", "type", "bridge"); strings.Contains(out, "10.231") {
		t.Errorf("a bridge carries the network: %s", out)
	}
}

// TestNetworkWithoutSubnetGetsADefaultPool: no --subnet, and the network
// gets a pool from the default range that overlaps nothing.
func TestNetworkWithoutSubnetGetsADefaultPool(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	network(t, "e2e-default")
	subnet := run(t, "docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "e2e-default")
	if !strings.HasPrefix(subnet, "10.200.") || !strings.HasSuffix(subnet, "/24") {
		t.Fatalf("default subnet %q, want a /24 from 10.200.0.0/16", subnet)
	}
	sleeper(t, "e2e-d1", "e2e-default")
	sleeper(t, "e2e-d2", "e2e-default")
	d2 := containerIP(t, "e2e-d2", "e2e-default")
	if err := ping("e2e-d1", d2); err != nil {
		t.Errorf("ping d1 -> d2 on the default pool: %v", err)
	}
	// A second default network gets another, non-overlapping pool.
	network(t, "e2e-default2")
	subnet2 := run(t, "docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "e2e-default2")
	if subnet2 == subnet || !strings.HasPrefix(subnet2, "10.200.") {
		t.Errorf("second default subnet %q next to %q: want another /24 of 10.200.0.0/16", subnet2, subnet)
	}
}

// TestStaticAddressAndOverlap: --ip gives exactly that address; a taken
// address and an overlapping subnet are refused with a clear error.
func TestStaticAddressAndOverlap(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	network(t, "e2e-static", "--subnet", "10.232.0.0/24", "--ip-range", "10.232.0.128/25", "--aux-address", "reserved=10.232.0.130")
	sleeper(t, "e2e-s1", "e2e-static", "--ip", "10.232.0.50")
	if ip := containerIP(t, "e2e-s1", "e2e-static"); ip != "10.232.0.50" {
		t.Errorf("--ip 10.232.0.50 gave %q", ip)
	}
	// As with Docker's own IPAM, a sub-range hands out its first address;
	// only the subnet's network and broadcast addresses are never used.
	sleeper(t, "e2e-s2", "e2e-static")
	if ip := containerIP(t, "e2e-s2", "e2e-static"); ip != "10.232.0.128" {
		t.Errorf("first address of --ip-range 10.232.0.128/25: got %q, want 10.232.0.128", ip)
	}
	sleeper(t, "e2e-s4", "e2e-static")
	if ip := containerIP(t, "e2e-s4", "e2e-static"); ip != "10.232.0.129" {
		t.Errorf("second address of --ip-range: got %q, want 10.232.0.129 (10.232.0.130 is an --aux-address)", ip)
	}
	if err := ping("e2e-s2", "10.232.0.50"); err != nil {
		t.Errorf("ping to the --ip container: %v", err)
	}
	_, _ = tryRun("docker", "rm", "-f", "e2e-s3")
	out, err := tryRun("docker", "run", "-d", "--name", "e2e-s3", "--network", "e2e-static", "--ip", "10.232.0.50", image, "sleep", "60")
	_, _ = tryRun("docker", "rm", "-f", "e2e-s3")
	if err == nil || !strings.Contains(err.Error(), "10.232.0.50") {
		t.Errorf("a second container with --ip 10.232.0.50: %q, %v; want an error naming the address", out, err)
	}
	_, _ = tryRun("docker", "network", "rm", "e2e-overlap")
	out, err = tryRun("docker", "network", "create", "-d", "ebpfnet", "--ipam-driver", "ebpfnet", "--subnet", "10.232.0.0/16", "e2e-overlap")
	if err == nil {
		_, _ = tryRun("docker", "network", "rm", "e2e-overlap")
		t.Fatalf("an overlapping subnet was accepted: %s", out)
	}
	if !strings.Contains(err.Error(), "overlaps") {
		t.Errorf("overlap error %q does not say what overlaps", err)
	}
}

// TestNetworksAreIsolated: as with Docker's bridges, containers on two
// ebpfnet networks cannot reach each other.
func TestNetworksAreIsolated(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	network(t, "e2e-iso-a", "--subnet", "10.233.0.0/24")
	network(t, "e2e-iso-b", "--subnet", "10.234.0.0/24")
	sleeper(t, "e2e-a1", "e2e-iso-a")
	sleeper(t, "e2e-a2", "e2e-iso-a")
	sleeper(t, "e2e-b1", "e2e-iso-b")
	a2 := containerIP(t, "e2e-a2", "e2e-iso-a")
	b1 := containerIP(t, "e2e-b1", "e2e-iso-b")
	if err := ping("e2e-a1", a2); err != nil {
		t.Fatalf("same network ping: %v", err)
	}
	if err := ping("e2e-a1", b1); err == nil {
		t.Errorf("a container on e2e-iso-a reached %s on e2e-iso-b", b1)
	}
	if err := ping("e2e-b1", a2); err == nil {
		t.Errorf("a container on e2e-iso-b reached %s on e2e-iso-a", a2)
	}
}

// TestDaemonRestartKeepsContainersTalking: while the daemon is stopped or
// killed, traffic flows on pinned maps and links; on start it restores the
// endpoints, lists them and serves new containers that reach the old ones.
func TestDaemonRestartKeepsContainersTalking(t *testing.T) {
	bin := requireEnvironment(t)
	d := startDaemon(t, bin)
	network(t, "e2e-restart", "--subnet", "10.235.0.0/24")
	httpd(t, "e2e-r1", "e2e-restart", "--label", "id=r1")
	sleeper(t, "e2e-r2", "e2e-restart", "--label", "id=r2")
	r1 := containerIP(t, "e2e-r1", "e2e-restart")
	// Identities are learnt from Docker's events, asynchronously.
	var before []api.Endpoint
	eventually(t, 10*time.Second, "both containers get their identities", func() error {
		before = endpoints(t)
		for _, ep := range before {
			if ep.Identity < 256 {
				return fmt.Errorf("endpoint %d still has identity %d", ep.ID, ep.Identity)
			}
		}
		return nil
	})

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		sparesBefore := spareHostEnds(t)
		d.stop(sig)
		if err := ping("e2e-r2", r1); err != nil {
			t.Errorf("after %v of the daemon, ping r2 -> r1: %v", sig, err)
		}
		if page, err := execIn("e2e-r2", "timeout", "5", "wget", "-q", "-O", "-", "http://"+r1+"/"); err != nil || !strings.Contains(page, "hello") {
			t.Errorf("after %v of the daemon, HTTP r2 -> r1: %q %v", sig, page, err)
		}
		d.restart()
		waitReconciled(t, bin)
		// The daemon keeps two spare veth pairs: the stopped one's are
		// gone (a SIGTERM deletes them, the next start those a SIGKILL
		// left), and the new one has made its own.
		eventually(t, 10*time.Second, "two new spare veth pairs after the restart", func() error {
			spares := spareHostEnds(t)
			for index, name := range spares {
				if _, old := sparesBefore[index]; old {
					return fmt.Errorf("after %v: spare veth %s of the stopped daemon is left", sig, name)
				}
			}
			if len(spares) != 2 {
				return fmt.Errorf("after %v: spare veths %v, want 2", sig, spares)
			}
			return nil
		})
		after := endpoints(t)
		if len(after) != len(before) {
			t.Fatalf("after %v and restart: %d endpoints listed, want %d", sig, len(after), len(before))
		}
		for i := range before {
			if after[i].ID != before[i].ID || after[i].IPv4 != before[i].IPv4 || after[i].IfName != before[i].IfName ||
				after[i].Identity != before[i].Identity || after[i].Labels["id"] != before[i].Labels["id"] {
				t.Errorf("after %v: endpoint %+v restored as %+v", sig, before[i], after[i])
			}
		}
	}
	// The restored daemon serves new containers, which reach the old ones.
	sleeper(t, "e2e-r3", "e2e-restart")
	if err := ping("e2e-r3", r1); err != nil {
		t.Errorf("new container -> restored one: %v", err)
	}
	if !strings.Contains(run(t, bin, "endpoint", "list"), r1) {
		t.Errorf("`ebpfnet endpoint list` does not show the restored endpoint %s", r1)
	}
}

// spareHostEnds lists the host ends of the daemon's spare veth pairs by
// ifindex: "lxs", 5 hex digits of sha256(state directory), 4 of a
// sequence number (datapath/vethspares.go); the peers add a "p".
func spareHostEnds(t *testing.T) map[int]string {
	t.Helper()
	sum := sha256.Sum256([]byte(stateDir))
	name := regexp.MustCompile(`^lxs` + hex.EncodeToString(sum[:])[:5] + `[0-9a-f]{4}$`)
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	spares := map[int]string{}
	for _, i := range ifs {
		if name.MatchString(i.Name) {
			spares[i.Index] = i.Name
		}
	}
	return spares
}

// TestNothingLeftBehind: after docker rm -f and docker network rm, no lxc
// link, route, state directory, pin or allocated address remains; the
// containers' identities are listed as unused, then freed after the grace.
func TestNothingLeftBehind(t *testing.T) {
	bin := requireEnvironment(t)
	const grace = 5 * time.Second
	startDaemon(t, bin, "--identity-grace", grace.String())
	network(t, "e2e-leak", "--subnet", "10.236.0.0/24")
	for _, name := range []string{"e2e-l1", "e2e-l2"} {
		sleeper(t, name, "e2e-leak", "--label", "id="+name)
	}
	if n := len(endpoints(t)); n != 2 {
		t.Fatalf("%d endpoints before removal, want 2", n)
	}
	eventually(t, 10*time.Second, "identities of the leak test's containers", func() error {
		if ids := run(t, bin, "identity", "list"); !strings.Contains(ids, "id=e2e-l1") || !strings.Contains(ids, "id=e2e-l2") {
			return fmt.Errorf("not allocated yet:\n%s", ids)
		}
		return nil
	})
	removed := time.Now()
	run(t, "docker", "rm", "-f", "e2e-l1", "e2e-l2")
	// Released with their last endpoint, the identities are kept for the
	// grace, listed as unused.
	unusedWithinGrace := func() int {
		var ids []api.Identity
		if err := json.Unmarshal([]byte(run(t, bin, "identity", "list", "-o", "json")), &ids); err != nil {
			t.Fatal(err)
		}
		unused := 0
		for _, i := range ids {
			if (hasLabel(i.Labels, "container:id=e2e-l1") || hasLabel(i.Labels, "container:id=e2e-l2")) && i.UnusedSince != nil {
				unused++
			}
		}
		return unused
	}
	for unused := unusedWithinGrace(); unused != 2; unused = unusedWithinGrace() {
		if time.Since(removed) > grace*3/4 {
			t.Fatalf("%d of the two removed containers' identities are listed as unused %s after their removal", unused, time.Since(removed))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if table := run(t, bin, "identity", "list"); !strings.Contains(table, "UNUSED FOR") {
		t.Errorf("identity list has no UNUSED FOR column:\n%s", table)
	}
	run(t, "docker", "network", "rm", "e2e-leak")

	eventually(t, 10*time.Second, "leftovers after docker rm -f and network rm", func() error {
		return leftovers("10.236.")
	})
	if eps := endpoints(t); len(eps) != 0 {
		t.Errorf("endpoint list still shows %+v", eps)
	}
	eventually(t, grace+10*time.Second, "identities freed after the grace", func() error {
		if ids := run(t, bin, "identity", "list"); strings.Contains(ids, "e2e-l1") || strings.Contains(ids, "e2e-l2") {
			return fmt.Errorf("still allocated:\n%s", ids)
		}
		return nil
	})
	if took := time.Since(removed); took < grace {
		t.Errorf("identities freed %s after their containers went, before the grace of %s", took, grace)
	}
	status := run(t, bin, "status", "-o", "json")
	if strings.Contains(status, "10.236.") {
		t.Errorf("status still shows the pool or its addresses: %s", status)
	}
}

// leftovers describes what the datapath left of a removed network.
func leftovers(subnetPrefix string) error {
	var found []string
	if out, _ := tryRun("ip", "-o", "link", "show"); strings.Contains(out, "lxc") {
		found = append(found, "lxc links: "+grepLines(out, "lxc"))
	}
	if out, _ := tryRun("ip", "route", "show", "table", "all"); strings.Contains(out, subnetPrefix) {
		found = append(found, "routes: "+grepLines(out, subnetPrefix))
	}
	if out, _ := tryRun("ip", "-o", "addr", "show"); strings.Contains(out, subnetPrefix) {
		found = append(found, "addresses: "+grepLines(out, subnetPrefix))
	}
	entries, _ := os.ReadDir(stateDir)
	for _, e := range entries {
		if e.Name() != "templates" {
			found = append(found, "state dir "+e.Name())
		}
	}
	_ = filepath.WalkDir(pinDir, func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() && !isGlobalPin(filepath.Base(path)) {
			found = append(found, "pin "+path)
		}
		return nil
	})
	if out, _ := tryRun("bpftool", "map", "dump", "pinned", filepath.Join(pinDir, "ebpfnet_endpoints")); !strings.Contains(out, "Found 0 elements") && !strings.Contains(out, "[]") {
		found = append(found, "endpoints map entries: "+out)
	}
	if len(found) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(found, "; "))
	}
	return nil
}

// perEndpointPin matches the pins that belong to one endpoint, which carry
// its 5-digit ID as Cilium's do (ebpfnet_policy_00042).
var perEndpointPin = regexp.MustCompile(`(^|_)[0-9]{5}(_|$)`)

// isGlobalPin tells the node-wide maps, which outlive every endpoint, from
// per-endpoint pins.
func isGlobalPin(name string) bool {
	return strings.HasPrefix(name, "ebpfnet_") && !perEndpointPin.MatchString(name)
}

func grepLines(out, needle string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, needle) {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return strings.Join(lines, " | ")
}

// TestLeftoversOfWhatDockerForgotAreRemoved: Docker forgets an endpoint and
// its address even when the driver does not act on its calls (`docker rm -f`
// while our daemon is down). A stand-in on the plugin socket answers those
// calls with "{}" and does nothing, as a dead daemon would leave things; the
// next start must find and remove the veth, pins, state and address.
func TestLeftoversOfWhatDockerForgotAreRemoved(t *testing.T) {
	bin := requireEnvironment(t)
	d := startDaemon(t, bin)
	network(t, "e2e-forgot", "--subnet", "10.237.0.0/24")
	sleeper(t, "e2e-f1", "e2e-forgot")
	sleeper(t, "e2e-f2", "e2e-forgot")
	f1 := containerIP(t, "e2e-f1", "e2e-forgot")
	f2 := containerIP(t, "e2e-f2", "e2e-forgot")
	d.stop(syscall.SIGTERM)

	standIn := serveDoNothingPlugin(t)
	run(t, "docker", "rm", "-f", "e2e-f1")
	standIn()

	d.restart()
	waitReconciled(t, bin)
	eps := endpoints(t)
	if len(eps) != 1 || eps[0].IPv4 != f2 {
		t.Fatalf("after reconcile the endpoints are %+v; want only e2e-f2's (%s)", eps, f2)
	}
	status := run(t, bin, "status", "-o", "json")
	if strings.Contains(status, `"`+f1+`"`) || !strings.Contains(status, `"`+f2+`"`) {
		t.Errorf("the forgotten container's address is still allocated: %s", status)
	}
	if out, _ := tryRun("ip", "-o", "link", "show"); strings.Count(out, "lxc") != 1 {
		t.Errorf("want exactly one lxc link left, got: %s", grepLines(out, "lxc"))
	}
	if err := ping("e2e-f2", "10.237.0.1"); err != nil {
		t.Errorf("the remaining container lost its gateway: %v", err)
	}
}

// waitReconciled waits until the daemon has compared its state with Docker's.
func waitReconciled(t *testing.T, bin string) {
	t.Helper()
	eventually(t, 30*time.Second, "reconcile with Docker after start", func() error {
		var s struct{ Reconciled bool }
		if err := json.Unmarshal([]byte(run(t, bin, "status", "-o", "json")), &s); err != nil || !s.Reconciled {
			return fmt.Errorf("not reconciled yet (%v)", err)
		}
		return nil
	})
}

// serveDoNothingPlugin answers every plugin call with "{}" on Docker's
// plugin socket until the returned stop function is called, or the test
// ends. Stopping twice is fine: the second call does not remove the socket
// of the daemon started in between.
func serveDoNothingPlugin(t *testing.T) (stop func()) {
	t.Helper()
	const socket = "/run/docker/plugins/ebpfnet.sock"
	_ = os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.1+json")
		if r.URL.Path == "/Plugin.Activate" {
			fmt.Fprint(w, `{"Implements": ["NetworkDriver", "IpamDriver"]}`)
			return
		}
		fmt.Fprint(w, "{}")
	})}
	go func() { _ = srv.Serve(ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = srv.Close()
			_ = os.Remove(socket)
		})
	}
	t.Cleanup(stop)
	return stop
}
