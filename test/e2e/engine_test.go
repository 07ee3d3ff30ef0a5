package e2e

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// What differs between the Docker engines the suite runs against (Debian's
// 20.10 on the host, `make e2e`; Docker 29 in a node, `make e2e-docker29`).

// serverAPI returns the API version of the dockerd the docker CLI talks to.
func serverAPI(t testing.TB) (major, minor int) {
	t.Helper()
	v := run(t, "docker", "version", "--format", "{{.Server.APIVersion}}")
	m := regexp.MustCompile(`^(\d+)\.(\d+)$`).FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("docker version: server API %q", v)
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	return major, minor
}

// TestSubnetOfAnyAddressComesFromTheDefaultPool: `--subnet 0.0.0.0/24`
// reaches the IPAM driver as it is; Docker 29 means by it any /24, and the
// network gets one of the default pool, where containers talk. The
// containers' own addresses tell what the network got: Docker 20.10's
// `network inspect` shows the subnet as it was asked for.
func TestSubnetOfAnyAddressComesFromTheDefaultPool(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	inDefaultPool := regexp.MustCompile(`inet (10\.200\.\d+\.\d+)/(\d+) `)
	for _, size := range []string{"24", "28"} {
		net := "e2e-anysub" + size
		network(t, net, "--subnet", "0.0.0.0/"+size)
		sleeper(t, net+"-a", net)
		sleeper(t, net+"-b", net)
		addr := run(t, "docker", "exec", net+"-a", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if m := inDefaultPool.FindStringSubmatch(addr); m == nil || m[2] != size {
			t.Errorf("--subnet 0.0.0.0/%s: the container has %q; want an address of a /%s of the default pool 10.200.0.0/16", size, addr, size)
		}
		if err := ping(net+"-a", containerIP(t, net+"-b", net)); err != nil {
			t.Errorf("ping between the containers of the 0.0.0.0/%s network: %v", size, err)
		}
	}
}

// TestIPv6OnlyNetwork: Docker 28+ (API 1.48) creates a network with
// --ipv4=false. With --ipv6 it is an IPv6-only network: containers get an
// IPv6 address of the default ULA pool (Docker 29 asks for any /64, ::/64)
// or of the given subnet, no IPv4 address at all, and talk over IPv6,
// under policy. Without --ipv6 the network would have no address: refused,
// saying why.
func TestIPv6OnlyNetwork(t *testing.T) {
	bin := requireEnvironment(t)
	if major, minor := serverAPI(t); major == 1 && minor < 48 {
		t.Skipf("this dockerd (API %d.%d) has no --ipv4, which came with API 1.48 (Docker 28)", major, minor)
	}
	startDaemon(t, bin)
	noPolicy(t, bin)
	_, _ = tryRun("docker", "network", "rm", "e2e-noipv4")
	_, err := tryRun("docker", "network", "create", "-d", "ebpfnet", "--ipam-driver", "ebpfnet", "--ipv4=false", "e2e-noipv4")
	if err == nil {
		_, _ = tryRun("docker", "network", "rm", "e2e-noipv4")
		t.Error("a network with --ipv4=false and no --ipv6 was created")
	} else if !strings.Contains(err.Error(), "needs IPv6") || !strings.Contains(err.Error(), "drop --ipv4=false") {
		t.Errorf("--ipv4=false without --ipv6: %v; want an error saying a network without IPv4 needs IPv6", err)
	}

	for _, c := range []struct {
		net    string
		args   []string
		within string
	}{
		{"e2e-v6only", []string{"--ipv4=false", "--ipv6"}, "fd00:ebbf::/48"},
		{"e2e-v6onlysub", []string{"--ipv4=false", "--ipv6", "--subnet", "fd00:e2e:9::/64"}, "fd00:e2e:9::/64"},
	} {
		network(t, c.net, c.args...)
		httpd(t, c.net+"-a", c.net, "--label", "id=v6a")
		sleeper(t, c.net+"-b", c.net, "--label", "id=v6b")
		a := containerIP6(t, c.net+"-a", c.net)
		if ip, err := netip.ParseAddr(a); err != nil || !netip.MustParsePrefix(c.within).Contains(ip) {
			t.Errorf("%s: container address %q, want one of %s", c.net, a, c.within)
			continue
		}
		if v4 := run(t, "docker", "exec", c.net+"-b", "ip", "-4", "-o", "addr", "show", "dev", "eth0"); v4 != "" {
			t.Errorf("%s: the container has IPv4 on an IPv6-only network: %s", c.net, v4)
		}
		if err := httpGet6(c.net+"-b", a); err != nil {
			t.Errorf("%s: b -> a over IPv6: %v", c.net, err)
		}
		if err := ping(c.net+"-b", a); err != nil {
			t.Errorf("%s: b pings a: %v", c.net, err)
		}
	}
	// Policy holds on an IPv6-only network: a rule for v6a's ingress from
	// nobody denies b.
	importRules(t, bin, `[{"endpointSelector": {"matchLabels": {"id": "v6a"}}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "nobody"}}]}]}]`)
	if err := httpGet6("e2e-v6only-b", containerIP6(t, "e2e-v6only-a", "e2e-v6only")); err == nil {
		t.Error("an IPv6-only container passed a deny-all ingress rule")
	}
}

// TestPublishedPortsAcrossDockerdRestart: published ports work again after
// a dockerd restart, whether dockerd restarts the container (--restart
// always) or keeps it running (--live-restore). Docker 29 sends
// ProgramExternalConnectivity only for the gateway endpoint, with the Join
// options it keeps in memory: after a live-restore restart it has none and
// cannot revoke, so the container's rules must go with its endpoint. The
// dockerd is a node's own (scripts/node), of the engine the suite runs
// against, so that restarting it disturbs nothing else; the outside host
// is the node's underlay.
func TestPublishedPortsAcrossDockerdRestart(t *testing.T) {
	bin := requireEnvironment(t)
	engine := "20.10"
	if d := testutil.NodeDocker(); d != "" && d != "none" {
		engine = d
	}
	node := testutil.UpNode(t, testutil.NodeScript(t, "."), "e2e-dr-"+strings.ReplaceAll(engine, ".", ""), "--docker", engine)
	node.Start(t, "ebpfnet", bin, "daemon", "--log-level", "debug")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ebpfnet log of node %s:\n%s", node.Name, node.Log("ebpfnet"))
		}
	})
	eventually(t, 20*time.Second, "the node's ebpfnet API", func() error {
		_, err := node.Exec(bin, "status")
		return err
	})
	node.Run(t, "docker", "network", "create", "-d", "ebpfnet", "--ipam-driver", "ebpfnet", "--subnet", "10.248.0.0/24", "e2e-dr")
	node.Run(t, "docker", "run", "-d", "--name", "e2e-dr-web", "--network", "e2e-dr", "--restart", "always", "--stop-timeout", "1",
		"-p", "18380:80", image, "httpd", "-f", "-p", "80", "-h", "/www")
	published := "http://" + node.IP() + ":18380/"
	reachable := func(what string) {
		t.Helper()
		eventually(t, 20*time.Second, what, func() error {
			page, err := node.UnderlayExec("busybox", "timeout", "4", "busybox", "wget", "-q", "-O", "-", published)
			if err != nil || !strings.Contains(page, "hello from ebpfnet") {
				return fmt.Errorf("underlay -> %s: %q, %v", published, page, err)
			}
			return nil
		})
	}
	// onlyRuleToWeb checks that the one DNAT rule points at the container's
	// address now: a rule of an earlier endpoint would be a leak.
	onlyRuleToWeb := func(when string) {
		t.Helper()
		ip := node.Run(t, "docker", "inspect", "-f", `{{(index .NetworkSettings.Networks "e2e-dr").IPAddress}}`, "e2e-dr-web")
		rules := node.Run(t, "iptables", "-t", "nat", "-S", "EBPFNET-DNAT")
		if strings.Count(rules, "-j DNAT") != 1 || !strings.Contains(rules, "--to-destination "+ip+":80") {
			t.Errorf("%s: want exactly one DNAT rule, to %s:80:\n%s", when, ip, rules)
		}
	}
	reachable("the published port")
	onlyRuleToWeb("before any restart")

	// dockerd stops the container and starts it again: a new endpoint.
	node.RestartDocker(t)
	reachable("the published port after dockerd restarted the container")
	onlyRuleToWeb("after dockerd restarted the container")

	// From now on dockerd keeps containers running while it restarts. The
	// restart that turns it on still stops and starts the container.
	node.RestartDocker(t, "--live-restore")
	reachable("the published port once dockerd runs with --live-restore")
	startedAt := node.Run(t, "docker", "inspect", "-f", "{{.State.StartedAt}}", "e2e-dr-web")
	node.RestartDocker(t)
	if again := node.Run(t, "docker", "inspect", "-f", "{{.State.StartedAt}}", "e2e-dr-web"); again != startedAt {
		t.Fatalf("with --live-restore the container restarted anyway (started %s, then %s)", startedAt, again)
	}
	reachable("the published port after a live-restore restart")
	onlyRuleToWeb("after a live-restore restart")

	// dockerd has no Join options of the restored endpoint; removing the
	// container must still take its rule away.
	node.Run(t, "docker", "rm", "-f", "e2e-dr-web")
	if rules := node.Run(t, "iptables", "-t", "nat", "-S", "EBPFNET-DNAT"); strings.Contains(rules, "-j DNAT") {
		t.Errorf("DNAT rules left after docker rm -f of a live-restored container:\n%s", rules)
	}
	if _, err := node.UnderlayExec("busybox", "timeout", "4", "busybox", "wget", "-q", "-O", "-", published); err == nil {
		t.Errorf("%s still answers after docker rm -f", published)
	}
	node.Run(t, "docker", "network", "rm", "e2e-dr")
}
