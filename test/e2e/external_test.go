package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// The "outside" host: a network namespace behind a veth, on a documentation
// range no route of the machine covers. Nothing is ever sent elsewhere.
const (
	outNS     = "ebpfnet-e2e-out"
	outHostIf = "ebpfnet-xh"
	outNSIf   = "ebpfnet-xo"
	outLink   = "198.51.100.0/24"
	nodeOnOut = "198.51.100.1" // the node's address on the link
	outIP     = "198.51.100.2" // the outside host
	outPort   = "8080"
)

// outside is the namespace with an httpd that logs its peers.
type outside struct {
	t       *testing.T
	httpLog string
}

// makeOutside builds the namespace and guards the uplink: anything from
// containerSubnets or to the outside link that would leave by the default
// route's device is dropped, so a mistake fails the test instead of sending
// packets to a real network.
func makeOutside(t *testing.T, containerSubnets ...string) *outside {
	t.Helper()
	// iptables guards the uplink and shows our rules (dnatRules,
	// ourChains); busybox is the outside host's httpd and the node's wget.
	testutil.RequireCommand(t, "iptables", "busybox")
	if routes := run(t, "ip", "-o", "route", "show", "to", "match", outIP); strings.TrimSpace(strings.ReplaceAll(routes, "\n", " ")) != "" &&
		!regexp.MustCompile(`^default [^\n]*$`).MatchString(routes) {
		t.Fatalf("a route of this machine already covers %s: %s", outIP, routes)
	}
	uplink := ""
	if f := strings.Fields(run(t, "ip", "route", "show", "default")); len(f) > 0 {
		for i := range f[:len(f)-1] {
			if f[i] == "dev" {
				uplink = f[i+1]
			}
		}
	}
	if uplink != "" {
		guards := [][]string{{"FORWARD", "-o", uplink, "-d", outLink, "-j", "DROP"}, {"OUTPUT", "-o", uplink, "-d", outLink, "-j", "DROP"}}
		for _, s := range containerSubnets {
			guards = append(guards, []string{"FORWARD", "-o", uplink, "-s", s, "-j", "DROP"})
		}
		for _, g := range guards {
			run(t, "iptables", append([]string{"-I", g[0], "1"}, g[1:]...)...)
			t.Cleanup(func() { _, _ = tryRun("iptables", append([]string{"-D"}, g...)...) })
		}
	}
	_, _ = tryRun("ip", "netns", "del", outNS)
	_, _ = tryRun("ip", "link", "del", outHostIf)
	run(t, "ip", "netns", "add", outNS)
	t.Cleanup(func() {
		_, _ = tryRun("ip", "netns", "del", outNS)
		_, _ = tryRun("ip", "link", "del", outHostIf)
	})
	run(t, "ip", "link", "add", outHostIf, "type", "veth", "peer", "name", outNSIf, "netns", outNS)
	run(t, "ip", "addr", "add", nodeOnOut+"/24", "dev", outHostIf)
	run(t, "ip", "link", "set", outHostIf, "up")
	inNS := func(args ...string) { run(t, "ip", append([]string{"netns", "exec", outNS}, args...)...) }
	inNS("ip", "link", "set", "lo", "up")
	inNS("ip", "addr", "add", outIP+"/24", "dev", outNSIf)
	inNS("ip", "link", "set", outNSIf, "up")

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
	// -vv logs each peer's address and port: that is how we see the source.
	cmd := exec.Command("ip", "netns", "exec", outNS, "busybox", "httpd", "-f", "-vv", "-p", outIP+":"+outPort, "-h", www)
	cmd.Stderr, cmd.Stdout = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("httpd in %s: %v", outNS, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logFile.Close() })
	eventually(t, 5*time.Second, "httpd in the outside namespace", func() error {
		_, err := o.exec("busybox", "timeout", "2", "busybox", "wget", "-q", "-O", "-", "http://"+outIP+":"+outPort+"/")
		return err
	})
	return o
}

// exec runs a command in the outside namespace.
func (o *outside) exec(args ...string) (string, error) {
	return tryRun("ip", append([]string{"netns", "exec", outNS}, args...)...)
}

// get fetches a URL from the outside host.
func (o *outside) get(url string) (string, error) {
	return o.exec("busybox", "timeout", "4", "busybox", "wget", "-q", "-O", "-", url)
}

// peers are the source addresses httpd logged.
func (o *outside) peers() string {
	data, _ := os.ReadFile(o.httpLog)
	return string(data)
}

// udpEchoSource answers each datagram with "echo " and its payload
// ("serve ADDR"), or sends one and prints the answer ("ask ADDR TEXT").
const udpEchoSource = `package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	switch os.Args[1] {
	case "serve":
		c, err := net.ListenPacket("udp4", os.Args[2])
		if err != nil {
			panic(err)
		}
		buf := make([]byte, 1500)
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				panic(err)
			}
			c.WriteTo(append([]byte("echo "), buf[:n]...), peer)
		}
	case "ask":
		c, err := net.Dial("udp4", os.Args[2])
		if err != nil {
			panic(err)
		}
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write([]byte(os.Args[3]))
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Print(string(buf[:n]))
	}
}
`

// buildUDPEcho builds udpEchoSource as a static binary.
func buildUDPEcho(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(udpEchoSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module udpecho\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "udpecho")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the UDP echo helper: %v: %s", err, out)
	}
	return bin
}

func wgetFrom(container, url string) (string, error) {
	return execIn(container, "timeout", "4", "wget", "-q", "-O", "-", url)
}

// dnatRules lists our published-port rules. The chain exists as long as one
// of our networks does, which every caller has: an iptables failure fails
// the test rather than reading as "no rules".
func dnatRules(t testing.TB) string {
	t.Helper()
	return run(t, "iptables", "-t", "nat", "-S", "EBPFNET-DNAT")
}

// ourChains lists the EBPFNET-* chains present in the nat and filter tables
// of iptables and ip6tables; a failure fails the test rather than reading
// as "none".
func ourChains(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"nat", "filter"} {
			rules := run(t, cmd, "-t", table, "-S")
			for _, l := range strings.Split(rules, "\n") {
				if strings.HasPrefix(l, "-N EBPFNET-") || (strings.HasPrefix(l, "-A ") && !strings.HasPrefix(l, "-A EBPFNET-") && strings.Contains(l, "EBPFNET-")) {
					out = append(out, cmd+" "+table+": "+l)
				}
			}
		}
	}
	return out
}

// TestExternalMasqueradeAndPublishedPorts: a container reaches the outside
// host masqueraded to the node's address; the outside host, the node (on
// 127.0.0.1 too) and a container of the network reach published ports, TCP
// and UDP, -p with a host range and -P; a policy without world closes a
// published port and one with world opens it; a taken host port is refused
// with a clear error; and nothing stays behind.
func TestExternalMasqueradeAndPublishedPorts(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	noPolicy(t, bin)
	out := makeOutside(t, "10.244.0.0/24")
	// The test removes it itself at the end, to see what goes with it.
	network(t, "e2e-ext", "--subnet", "10.244.0.0/24")

	// Masquerade: the outside host sees the node's address on the link.
	sleeper(t, "e2e-ext-client", "e2e-ext", "--label", "id=client")
	page, err := wgetFrom("e2e-ext-client", "http://"+outIP+":"+outPort+"/")
	if err != nil || !strings.Contains(page, "hello from outside") {
		t.Fatalf("container -> outside httpd: %q, %v", page, err)
	}
	clientIP := containerIP(t, "e2e-ext-client", "e2e-ext")
	if peers := out.peers(); !strings.Contains(peers, nodeOnOut+":") || strings.Contains(peers, clientIP) {
		t.Errorf("outside httpd saw %q; want the node's %s, never the container's %s", peers, nodeOnOut, clientIP)
	}

	// -p 18080:80 and UDP -p 18053:5353/udp.
	httpd(t, "e2e-ext-web", "e2e-ext", "--label", "id=web", "-p", "18080:80")
	webIP := containerIP(t, "e2e-ext-web", "e2e-ext")
	if !strings.Contains(dnatRules(t), webIP+":80") {
		t.Fatalf("no DNAT rule to %s:80:\n%s", webIP, dnatRules(t))
	}
	published := "http://" + nodeOnOut + ":18080/"
	if page, err := out.get(published); err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("outside -> published port %s: %q, %v", published, page, err)
	}
	if page, err := tryRun("busybox", "timeout", "4", "busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18080/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("node -> 127.0.0.1:18080: %q, %v", page, err)
	}
	if page, err := wgetFrom("e2e-ext-client", published); err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("container -> the node's published port (hairpin): %q, %v", page, err)
	}

	// The test image's busybox has no UDP tool: a tiny echo server of ours.
	echo := buildUDPEcho(t)
	container(t, "e2e-ext-udp", "--network", "e2e-ext", "-p", "18053:5353/udp", "-v", echo+":/udpecho:ro", image, "/udpecho", "serve", ":5353")
	eventually(t, 10*time.Second, "UDP to a published port", func() error {
		got, err := out.exec(echo, "ask", nodeOnOut+":18053", "udp-hello")
		if err != nil || got != "echo udp-hello" {
			return fmt.Errorf("answer %q, %v", got, err)
		}
		return nil
	})

	// A host IP of choice: 127.0.0.1 only, so the node reaches it and the
	// outside host does not.
	httpd(t, "e2e-ext-lo", "e2e-ext", "-p", "127.0.0.1:18082:80")
	if page, err := tryRun("busybox", "timeout", "4", "busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18082/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("node -> 127.0.0.1:18082 (published on 127.0.0.1 only): %q, %v", page, err)
	}
	if page, err := out.get("http://" + nodeOnOut + ":18082/"); err == nil {
		t.Errorf("outside reached a port published on 127.0.0.1 only: %q", page)
	}

	// A host port range: the first free port of it; -P: one of the
	// ephemeral range. Docker cannot learn which from a remote driver, so
	// the test reads our rules, as a user would.
	httpd(t, "e2e-ext-range", "e2e-ext", "-p", "18090-18095:80")
	rangeIP := containerIP(t, "e2e-ext-range", "e2e-ext")
	if m := regexp.MustCompile(`--dport (1809[0-5]) .*--to-destination ` + regexp.QuoteMeta(rangeIP) + `:80`).FindStringSubmatch(dnatRules(t)); m == nil {
		t.Errorf("no DNAT rule from 18090-18095 to %s:80:\n%s", rangeIP, dnatRules(t))
	} else if page, err := out.get("http://" + nodeOnOut + ":" + m[1] + "/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("outside -> range port %s: %q, %v", m[1], page, err)
	}
	httpd(t, "e2e-ext-all", "e2e-ext", "--expose", "80", "-P")
	allIP := containerIP(t, "e2e-ext-all", "e2e-ext")
	if m := regexp.MustCompile(`--dport (\d+) .*--to-destination ` + regexp.QuoteMeta(allIP) + `:80`).FindStringSubmatch(dnatRules(t)); m == nil {
		t.Errorf("no DNAT rule for -P to %s:80:\n%s", allIP, dnatRules(t))
	} else {
		if page, err := out.get("http://" + nodeOnOut + ":" + m[1] + "/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
			t.Errorf("outside -> -P port %s: %q, %v", m[1], page, err)
		}
		shown, _ := tryRun("docker", "port", "e2e-ext-all")
		asked, _ := tryRun("docker", "port", "e2e-ext-web")
		t.Logf("-P: ebpfnet chose host port %s; `docker port` shows %q (and %q for -p 18080:80)", m[1], shown, asked)
	}

	// A taken host port is refused, and the docker user reads why.
	ln, err := net.Listen("tcp4", "0.0.0.0:18081")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, c := range []struct{ name, port, want string }{
		{"e2e-ext-busy", "18081:80", "not free"},
		{"e2e-ext-twice", "18080:80", "already allocated"},
	} {
		_, _ = tryRun("docker", "rm", "-f", c.name)
		_, err := tryRun("docker", "run", "-d", "--name", c.name, "--network", "e2e-ext", "-p", c.port, image, "sleep", "60")
		_, _ = tryRun("docker", "rm", "-f", c.name)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), strings.Split(c.port, ":")[0]) {
			t.Errorf("docker run -p %s: %v; want an error saying %q", c.port, err, c.want)
		}
	}

	// Policy: outside traffic is world. A rule that does not allow world
	// closes the published port; one with fromEntities world opens it.
	importRules(t, bin, `[{"endpointSelector": {"matchLabels": {"id": "web"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "client"}}]}]}]`)
	eventually(t, 10*time.Second, "a rule without world closes the published port", func() error {
		if _, err := out.get(published); err == nil {
			return fmt.Errorf("the outside host still reaches %s", published)
		}
		return nil
	})
	run(t, bin, "policy", "delete", "--all")
	importRules(t, bin, `[{"endpointSelector": {"matchLabels": {"id": "web"}},
  "ingress": [{"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]`)
	eventually(t, 10*time.Second, "a rule with world opens the published port", func() error {
		_, err := out.get(published)
		return err
	})
	run(t, bin, "policy", "delete", "--all")

	// Nothing left behind: each container's rules go with it, the network's
	// with the network, and our chains with the last network.
	for _, name := range []string{"e2e-ext-web", "e2e-ext-udp", "e2e-ext-lo", "e2e-ext-range", "e2e-ext-all"} {
		run(t, "docker", "rm", "-f", name)
	}
	if rules := dnatRules(t); strings.Contains(rules, "-j DNAT") {
		t.Errorf("DNAT rules left after docker rm -f:\n%s", rules)
	}
	run(t, "docker", "rm", "-f", "e2e-ext-client")
	run(t, "docker", "network", "rm", "e2e-ext")
	if others, _ := tryRun("docker", "network", "ls", "-q", "--filter", "driver=ebpfnet"); others != "" {
		testutil.Missing(t, "other ebpfnet networks remain (%s): cannot check that the chains go with the last one", strings.Join(strings.Fields(others), " "))
	}
	if left := ourChains(t); len(left) > 0 {
		t.Errorf("left in iptables after the last network:\n%s", strings.Join(left, "\n"))
	}
}

// TestExternalInternalAndNoMasquerade: an --internal network has no path off
// the node; with enable_ip_masquerade=false traffic leaves with the
// container's own address.
func TestExternalInternalAndNoMasquerade(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	out := makeOutside(t, "10.245.0.0/24", "10.246.0.0/24")
	network(t, "e2e-int", "--internal", "--subnet", "10.245.0.0/24")
	network(t, "e2e-nomasq", "--subnet", "10.246.0.0/24", "-o", "com.docker.network.bridge.enable_ip_masquerade=false")

	sleeper(t, "e2e-int-c", "e2e-int")
	// The outside host gets a route back to the internal network, as to
	// the one without masquerade below: without it, packets the node
	// forwarded with the container's address would go unanswered and the
	// checks below would pass all the same. It goes with the namespace.
	if _, err := out.exec("ip", "route", "add", "10.245.0.0/24", "via", nodeOnOut); err != nil {
		t.Fatal(err)
	}
	if page, err := wgetFrom("e2e-int-c", "http://"+outIP+":"+outPort+"/"); err == nil {
		t.Errorf("a container of an --internal network reached the outside host: %q", page)
	}
	if err := ping("e2e-int-c", outIP); err == nil {
		t.Errorf("a container of an --internal network pinged the outside host")
	}
	if err := ping("e2e-int-c", "10.245.0.1"); err != nil {
		t.Errorf("the --internal network's gateway (the node) is unreachable: %v", err)
	}
	if peers := out.peers(); strings.Contains(peers, nodeOnOut+":") || strings.Contains(peers, "10.245.") {
		t.Errorf("the outside httpd was reached from the internal network: %s", peers)
	}

	sleeper(t, "e2e-nomasq-c", "e2e-nomasq")
	ip := containerIP(t, "e2e-nomasq-c", "e2e-nomasq")
	// Without masquerade the outside host needs a route back, as a real
	// upstream router would.
	if _, err := out.exec("ip", "route", "add", "10.246.0.0/24", "via", nodeOnOut); err != nil {
		t.Fatal(err)
	}
	if page, err := wgetFrom("e2e-nomasq-c", "http://"+outIP+":"+outPort+"/"); err != nil || !strings.Contains(page, "hello from outside") {
		t.Fatalf("container without masquerade -> outside: %q, %v", page, err)
	}
	if peers := out.peers(); !strings.Contains(peers, ip+":") {
		t.Errorf("outside httpd saw %q; want the container's own %s", peers, ip)
	}
	if _, err := tryRun("docker", "network", "create", "-d", "ebpfnet", "--ipam-driver", "ebpfnet", "--subnet", "10.247.0.0/24",
		"-o", "com.docker.network.bridge.enable_ip_masquerade=maybe", "e2e-badmasq"); err == nil || !strings.Contains(err.Error(), "want true or false") {
		_, _ = tryRun("docker", "network", "rm", "e2e-badmasq")
		t.Errorf("enable_ip_masquerade=maybe: %v; want a clear refusal", err)
	}
}

// TestPublishedPortsAcrossDaemonRestart: published ports keep working while
// the daemon is down and after it is back, and go with their container
// even when it was removed while the daemon was down.
func TestPublishedPortsAcrossDaemonRestart(t *testing.T) {
	bin := requireEnvironment(t)
	d := startDaemon(t, bin)
	out := makeOutside(t, "10.247.0.0/24")
	network(t, "e2e-pubr", "--subnet", "10.247.0.0/24")
	httpd(t, "e2e-pubr-keep", "e2e-pubr", "-p", "18180:80")
	httpd(t, "e2e-pubr-gone", "e2e-pubr", "-p", "18181:80")
	gone := containerIP(t, "e2e-pubr-gone", "e2e-pubr")

	d.stop(syscall.SIGTERM)
	if _, err := out.get("http://" + nodeOnOut + ":18180/"); err != nil {
		t.Errorf("published port while the daemon is down: %v", err)
	}
	standIn := serveDoNothingPlugin(t)
	run(t, "docker", "rm", "-f", "e2e-pubr-gone")
	standIn()
	d.restart()
	waitReconciled(t, bin)

	if page, err := out.get("http://" + nodeOnOut + ":18180/"); err != nil || !strings.Contains(page, "hello from ebpfnet") {
		t.Errorf("published port after restart: %q, %v", page, err)
	}
	if rules := dnatRules(t); strings.Contains(rules, gone+":80") || strings.Count(rules, "-j DNAT") != 1 {
		t.Errorf("after restart, want only e2e-pubr-keep's rule:\n%s", rules)
	}
	run(t, "docker", "rm", "-f", "e2e-pubr-keep")
	if rules := dnatRules(t); strings.Contains(rules, "-j DNAT") {
		t.Errorf("DNAT rules left after docker rm -f:\n%s", rules)
	}
}
