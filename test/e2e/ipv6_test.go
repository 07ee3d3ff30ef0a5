package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// containerIP6 returns the container's IPv6 address on the named network.
func containerIP6(t testing.TB, name, net string) string {
	t.Helper()
	return run(t, "docker", "inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).GlobalIPv6Address}}", net), name)
}

// httpGet6 fetches / from ip (IPv6) in the container from.
func httpGet6(from, ip string) error {
	_, err := execIn(from, "timeout", "3", "wget", "-q", "-O", "-", "http://["+ip+"]/")
	return err
}

// TestIPv6DualStackNetwork: `docker network create --ipv6` with a subnet of
// each family: containers reach each other over both, --ip6 is honoured,
// the same labels and rules hold over IPv6 (one identity for both
// addresses), the monitor names a drop with its IPv6 ends, and the CLI
// shows the IPv6 side.
func TestIPv6DualStackNetwork(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	noPolicy(t, bin)
	const net6, subnet6 = "e2e-v6", "fd00:e2e:6::/64"
	network(t, net6, "--ipv6", "--subnet", "10.246.0.0/24", "--subnet", subnet6)
	httpd(t, "e2e-v6-app1", net6, "--label", "id=app1", "--ip6", "fd00:e2e:6::80")
	sleeper(t, "e2e-v6-app2", net6, "--label", "id=app2")
	sleeper(t, "e2e-v6-app3", net6, "--label", "id=app3")
	app1, app1v4 := containerIP6(t, "e2e-v6-app1", net6), containerIP(t, "e2e-v6-app1", net6)
	if app1 != "fd00:e2e:6::80" {
		t.Fatalf("--ip6 fd00:e2e:6::80 gave %q", app1)
	}
	app2 := containerIP6(t, "e2e-v6-app2", net6)
	if !netip.MustParsePrefix(subnet6).Contains(netip.MustParseAddr(app2)) {
		t.Fatalf("app2's IPv6 address %q is not in %s", app2, subnet6)
	}
	eventually(t, 10*time.Second, "app2 -> app1 over IPv6", func() error { return httpGet6("e2e-v6-app2", app1) })
	if err := ping("e2e-v6-app3", app1); err != nil {
		t.Errorf("app3 -> app1 ping over IPv6: %v", err)
	}
	if err := ping("e2e-v6-app3", "fd00:e2e:6::1"); err != nil {
		t.Errorf("app3 -> the IPv6 gateway: %v", err)
	}
	if err := ping("e2e-v6-app3", app1v4); err != nil {
		t.Errorf("app3 -> app1 over IPv4 on the dual-stack network: %v", err)
	}

	// One identity for both families: the L3 rule lets app2 reach app1
	// over both, and app3 over neither.
	monitor := startMonitor(t, bin, "--type", "drop")
	importRules(t, bin, l3Rule)
	if err := httpGet6("e2e-v6-app2", app1); err != nil {
		t.Errorf("L3 rule: app2 -> app1 HTTP over IPv6: %v", err)
	}
	if err := httpGet6("e2e-v6-app3", app1); err == nil {
		t.Error("L3 rule: app3 reached app1 over IPv6")
	}
	if err := httpGet("e2e-v6-app3", app1v4); err == nil {
		t.Error("L3 rule: app3 reached app1 over IPv4")
	}
	eventually(t, 5*time.Second, "monitor reports app3's IPv6 drop", func() error {
		if _, ok := monitor.find(func(ev api.MonitorEvent) bool {
			return ev.Type == "drop" && ev.Reason == "Policy denied" &&
				hasLabel(ev.SrcLabels, "container:id=app3") && hasLabel(ev.DstLabels, "container:id=app1") &&
				ev.Destination == "["+app1+"]:80" && ev.Protocol == "tcp"
		}); !ok {
			return fmt.Errorf("no drop to [%s]:80 among %v", app1, monitor.types())
		}
		return nil
	})
	// L4: TCP 80 only, over IPv6 too; ICMPv6 is not TCP.
	importRules(t, bin, l4Rule)
	if err := httpGet6("e2e-v6-app2", app1); err != nil {
		t.Errorf("L4 rule: app2 -> app1 HTTP over IPv6: %v", err)
	}
	if err := ping("e2e-v6-app2", app1); err == nil {
		t.Error("L4 rule: app2's ICMPv6 echo reached app1")
	}
	run(t, bin, "policy", "delete", "--all")

	// The CLI.
	var app1ep api.Endpoint
	for _, ep := range endpoints(t) {
		if ep.IPv4 == app1v4 {
			app1ep = ep
		}
	}
	if app1ep.IPv6 != app1 {
		t.Errorf("endpoint list shows app1 as %+v, want IPv6 %s", app1ep, app1)
	}
	if list := run(t, bin, "endpoint", "list"); !regexp.MustCompile(`IPv4\s+IPv6`).MatchString(list) || !strings.Contains(list, app1) {
		t.Errorf("endpoint list:\n%s", list)
	}
	ipc := run(t, bin, "bpf", "ipcache", "list")
	if !regexp.MustCompile(regexp.QuoteMeta(app1+"/128")+`\s+`+fmt.Sprint(app1ep.Identity)+`\s`).MatchString(ipc) ||
		!strings.Contains(ipc, "fd00:e2e:6::1/128") {
		t.Errorf("bpf ipcache list lacks app1's IPv6 address with its identity %d, or the IPv6 gateway:\n%s", app1ep.Identity, ipc)
	}
	if ct := run(t, bin, "bpf", "ct", "list"); !strings.Contains(ct, "["+app1+"]:80") {
		t.Errorf("bpf ct list shows no IPv6 flow to [%s]:80:\n%s", app1, ct)
	}
}

// TestIPv6DefaultPool: --ipv6 without an IPv6 --subnet takes a /64 of the
// default ULA pool (fd00:ebbf::/48); the network's containers talk over it,
// and the pool goes with the network.
func TestIPv6DefaultPool(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	const net6 = "e2e-v6pool"
	network(t, net6, "--ipv6", "--subnet", "10.247.0.0/24")
	sleeper(t, "e2e-v6pool-a", net6)
	sleeper(t, "e2e-v6pool-b", net6)
	a, b := containerIP6(t, "e2e-v6pool-a", net6), containerIP6(t, "e2e-v6pool-b", net6)
	for _, addr := range []string{a, b} {
		ip, err := netip.ParseAddr(addr)
		if err != nil || !netip.MustParsePrefix("fd00:ebbf::/48").Contains(ip) {
			t.Fatalf("container address %q is not of the default pool fd00:ebbf::/48", addr)
		}
	}
	if err := ping("e2e-v6pool-a", b); err != nil {
		t.Errorf("ping between the containers of the default IPv6 pool: %v", err)
	}
	pool := netip.PrefixFrom(netip.MustParseAddr(a), 64).Masked().String()
	if status := run(t, bin, "status", "-o", "json"); !strings.Contains(status, pool) {
		t.Errorf("status does not list the pool %s: %s", pool, status)
	}
	run(t, "docker", "rm", "-f", "e2e-v6pool-a", "e2e-v6pool-b")
	run(t, "docker", "network", "rm", net6)
	if status := run(t, bin, "status", "-o", "json"); strings.Contains(status, pool) {
		t.Errorf("status still lists the pool %s after the network went: %s", pool, status)
	}
	if out, _ := tryRun("ip", "-6", "route", "show", pool); out != "" {
		t.Errorf("a route for %s outlived its network: %s", pool, out)
	}
}

// TestIPv6DaemonRestart: the IPv6 pools, addresses and datapath of a
// dual-stack network survive a daemon restart (reconcile keeps the pools
// Docker still uses), and containers keep talking over IPv6.
func TestIPv6DaemonRestart(t *testing.T) {
	bin := requireEnvironment(t)
	d := startDaemon(t, bin)
	const net6 = "e2e-v6r"
	network(t, net6, "--ipv6", "--subnet", "10.248.0.0/24", "--subnet", "fd00:e2e:7::/64")
	httpd(t, "e2e-v6r-a", net6)
	sleeper(t, "e2e-v6r-b", net6)
	a := containerIP6(t, "e2e-v6r-a", net6)
	eventually(t, 10*time.Second, "b -> a over IPv6", func() error { return httpGet6("e2e-v6r-b", a) })
	d.stop(syscall.SIGTERM)
	d.restart()
	waitReconciled(t, bin)
	if err := httpGet6("e2e-v6r-b", a); err != nil {
		t.Errorf("b -> a over IPv6 after the restart: %v", err)
	}
	if status := run(t, bin, "status", "-o", "json"); !strings.Contains(status, "fd00:e2e:7::/64") {
		t.Errorf("the IPv6 pool is gone after the restart and reconcile: %s", status)
	}
	sleeper(t, "e2e-v6r-c", net6)
	c := containerIP6(t, "e2e-v6r-c", net6)
	if c == a || c == containerIP6(t, "e2e-v6r-b", net6) {
		t.Errorf("a new container got an address in use: %s", c)
	}
	if err := httpGet6("e2e-v6r-c", a); err != nil {
		t.Errorf("a container started after the restart -> a over IPv6: %v", err)
	}
}

// The outside host over IPv6: a namespace behind a veth, on a documentation
// prefix no route of the machine covers.
const (
	outNS6     = "ebpfnet-e2e-out6"
	outHostIf6 = "ebpfnet-yh"
	outNSIf6   = "ebpfnet-yo"
	outLink6   = "2001:db8:e2e::/64"
	nodeOnOut6 = "2001:db8:e2e::1"
	outIP6     = "2001:db8:e2e::2"
)

// makeOutside6 is makeOutside over IPv6: the uplink drops anything to the
// outside link or from containerSubnets that would leave by it.
func makeOutside6(t *testing.T, containerSubnets ...string) *outside {
	t.Helper()
	testutil.RequireCommand(t, "ip6tables", "busybox")
	if routes := run(t, "ip", "-6", "-o", "route", "show", "to", "match", outIP6); strings.TrimSpace(strings.ReplaceAll(routes, "\n", " ")) != "" &&
		!regexp.MustCompile(`^default [^\n]*$`).MatchString(routes) {
		t.Fatalf("a route of this machine already covers %s: %s", outIP6, routes)
	}
	if f := strings.Fields(run(t, "ip", "-6", "route", "show", "default")); len(f) > 0 {
		uplink := ""
		for i := range f[:len(f)-1] {
			if f[i] == "dev" {
				uplink = f[i+1]
			}
		}
		if uplink != "" {
			guards := [][]string{{"FORWARD", "-o", uplink, "-d", outLink6, "-j", "DROP"}, {"OUTPUT", "-o", uplink, "-d", outLink6, "-j", "DROP"}}
			for _, s := range containerSubnets {
				guards = append(guards, []string{"FORWARD", "-o", uplink, "-s", s, "-j", "DROP"})
			}
			for _, g := range guards {
				run(t, "ip6tables", append([]string{"-I", g[0], "1"}, g[1:]...)...)
				t.Cleanup(func() { _, _ = tryRun("ip6tables", append([]string{"-D"}, g...)...) })
			}
		}
	}
	_, _ = tryRun("ip", "netns", "del", outNS6)
	_, _ = tryRun("ip", "link", "del", outHostIf6)
	run(t, "ip", "netns", "add", outNS6)
	t.Cleanup(func() {
		_, _ = tryRun("ip", "netns", "del", outNS6)
		_, _ = tryRun("ip", "link", "del", outHostIf6)
	})
	run(t, "ip", "link", "add", outHostIf6, "type", "veth", "peer", "name", outNSIf6, "netns", outNS6)
	run(t, "ip", "addr", "add", nodeOnOut6+"/64", "dev", outHostIf6, "nodad")
	run(t, "ip", "link", "set", outHostIf6, "up")
	inNS := func(args ...string) { run(t, "ip", append([]string{"netns", "exec", outNS6}, args...)...) }
	inNS("ip", "link", "set", "lo", "up")
	inNS("ip", "addr", "add", outIP6+"/64", "dev", outNSIf6, "nodad")
	inNS("ip", "link", "set", outNSIf6, "up")

	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(www, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from outside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := &outside{t: t, httpLog: filepath.Join(dir, "httpd.log")}
	logFile, err := os.Create(o.httpLog)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", outNS6, "busybox", "httpd", "-f", "-vv", "-p", "["+outIP6+"]:"+outPort, "-h", www)
	cmd.Stderr, cmd.Stdout = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("httpd in %s: %v", outNS6, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logFile.Close() })
	eventually(t, 5*time.Second, "httpd in the IPv6 outside namespace", func() error {
		_, err := tryRun("ip", "netns", "exec", outNS6, "busybox", "timeout", "2", "busybox", "wget", "-q", "-O", "-", "http://["+outIP6+"]:"+outPort+"/")
		return err
	})
	return o
}

// get6 fetches a URL from the IPv6 outside host.
func get6(url string) (string, error) {
	return tryRun("ip", "netns", "exec", outNS6, "busybox", "timeout", "4", "busybox", "wget", "-q", "-O", "-", url)
}

// TestIPv6ExternalMasqueradeAndPublishedPorts: over IPv6, a container
// reaches the outside host masqueraded to the node's address (ip6tables
// beside Docker's), the outside host reaches a port published without a
// host address on the container's IPv6 address as well as on its IPv4 one,
// and the ip6tables chains go with the last network.
func TestIPv6ExternalMasqueradeAndPublishedPorts(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	noPolicy(t, bin)
	const net6, subnet6 = "e2e-v6ext", "fd00:e2e:8::/64"
	out := makeOutside6(t, subnet6)
	network(t, net6, "--ipv6", "--subnet", "10.249.0.0/24", "--subnet", subnet6)
	if fwd, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil || strings.TrimSpace(string(fwd)) != "1" {
		t.Errorf("IPv6 forwarding is %q after an IPv6 network was created (%v)", fwd, err)
	}

	sleeper(t, "e2e-v6ext-client", net6)
	page, err := wgetFrom("e2e-v6ext-client", "http://["+outIP6+"]:"+outPort+"/")
	if err != nil || !strings.Contains(page, "hello from outside") {
		t.Fatalf("container -> outside httpd over IPv6: %q, %v", page, err)
	}
	client := containerIP6(t, "e2e-v6ext-client", net6)
	if peers := out.peers(); !strings.Contains(peers, nodeOnOut6) || strings.Contains(peers, client) {
		t.Errorf("outside httpd saw %q; want the node's %s, never the container's %s", peers, nodeOnOut6, client)
	}

	httpd(t, "e2e-v6ext-web", net6, "-p", "18180:80")
	web := containerIP6(t, "e2e-v6ext-web", net6)
	if rules := run(t, "ip6tables", "-t", "nat", "-S", "EBPFNET-DNAT"); !strings.Contains(rules, "["+web+"]:80") {
		t.Fatalf("no ip6tables DNAT rule to [%s]:80:\n%s", web, rules)
	}
	if page, err := get6("http://[" + nodeOnOut6 + "]:18180/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("outside -> published port over IPv6: %q, %v", page, err)
	}
	if page, err := tryRun("busybox", "timeout", "4", "busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18180/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("node -> 127.0.0.1:18180, the same port over IPv4: %q, %v", page, err)
	}

	run(t, "docker", "rm", "-f", "e2e-v6ext-web", "e2e-v6ext-client")
	run(t, "docker", "network", "rm", net6)
	if others, _ := tryRun("docker", "network", "ls", "-q", "--filter", "driver=ebpfnet"); others != "" {
		testutil.Missing(t, "other ebpfnet networks remain (%s): cannot check that the chains go with the last one", strings.Join(strings.Fields(others), " "))
	}
	if left := ourChains(t); len(left) > 0 {
		t.Errorf("left in iptables or ip6tables after the last network:\n%s", strings.Join(left, "\n"))
	}
}
