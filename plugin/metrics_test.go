package plugin

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/metrics"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// startMetricsDaemon is startTestDaemon with metrics served on a free
// loopback port; it also returns the daemon, for its metrics address, and a
// stop function (idempotent, also run at cleanup).
func startMetricsDaemon(tb testing.TB) (*testDaemon, *Daemon, func()) {
	tb.Helper()
	td := startTestDaemon(tb, func(cfg *Config) { cfg.MetricsAddr = "127.0.0.1:0" })
	return td, td.daemon, td.stop
}

// scrape fetches and parses /metrics.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + metrics.Path)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: HTTP %d\n%s", resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return families
}

// sample finds the series of family name with exactly the given labels;
// nil when the scrape has none.
func sample(families map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	f := families[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		return m
	}
	return nil
}

// value is a counter's or gauge's value, 0 when the series is absent (a
// counter the datapath never created is 0).
func value(families map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	m := sample(families, name, labels)
	switch {
	case m == nil:
		return 0
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

func callCount(families map[string]*dto.MetricFamily, call, outcome string) uint64 {
	m := sample(families, "ebpfnet_docker_call_duration_seconds", map[string]string{"call": call, "outcome": outcome})
	if m == nil {
		return 0
	}
	return m.GetHistogram().GetSampleCount()
}

func runCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// sendUDP sends one datagram from src (the zero address: the kernel's
// choice) in namespace ns to dst.
func sendUDP(t *testing.T, ns string, src netip.Addr, dst netip.AddrPort) {
	t.Helper()
	err := testutil.InNetns(ns, func() error {
		var laddr *net.UDPAddr
		if src.IsValid() {
			laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
		c, err := net.DialUDP("udp4", laddr, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("ebpfnet metrics test"))
		return err
	})
	if err != nil {
		t.Fatalf("send UDP from %s in %s: %v", src, ns, err)
	}
}

// waitFor scrapes until ok holds for a scrape (counters are written as the
// packet crosses the veth, a moment after the send returns).
func waitFor(t *testing.T, addr, what string, ok func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		families := scrape(t, addr)
		if ok(families) {
			return families
		}
		if time.Now().After(deadline) {
			t.Fatalf("scrape never showed %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMetricsThroughTheDaemon: a daemon started with MetricsAddr serves
// /metrics over HTTP; a CreateEndpoint and Join through the plugin socket
// show in the call histogram and the endpoint gauge, packets the endpoint's
// programs pass and drop show in the datapath counters, and the server goes
// with the daemon.
func TestMetricsThroughTheDaemon(t *testing.T) {
	testutil.RequireCommand(t, "ip")
	td, d, stop := startMetricsDaemon(t)
	addr := d.metricsLn.Addr().String()

	families := scrape(t, addr)
	if value(families, "ebpfnet_endpoint_state", map[string]string{"state": metrics.StateReady}) != 0 ||
		value(families, "ebpfnet_endpoint_state", map[string]string{"state": metrics.StateWaitingForIdentity}) != 0 {
		t.Errorf("a new daemon reports endpoints: %v", families["ebpfnet_endpoint_state"])
	}
	// host, world and init.
	if got := value(families, "ebpfnet_identity", map[string]string{"type": metrics.IdentityReserved}); got != 3 {
		t.Errorf("reserved identities %v, want 3", got)
	}
	if families["go_goroutines"] == nil || families["process_start_time_seconds"] == nil {
		t.Error("scrape lacks the Go and process collectors")
	}

	poolID, gateway := createTestNetwork(t, td, "net-m", "10.204.0.0/24")
	addrCIDR := td.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
	epID := randomHex(t, 32)
	td.mustCall(t, "/NetworkDriver.CreateEndpoint", map[string]any{
		"NetworkID": "net-m", "EndpointID": epID, "Interface": map[string]any{"Address": addrCIDR}})
	// Undo it all through the socket, as Docker would, also when the test
	// fails half-way: the network's gateway address must not outlive it.
	var teardownOnce sync.Once
	teardown := func() {
		teardownOnce.Do(func() {
			for _, c := range []struct {
				path string
				req  map[string]any
			}{
				{"/NetworkDriver.Leave", map[string]any{"NetworkID": "net-m", "EndpointID": epID}},
				{"/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "net-m", "EndpointID": epID}},
				{"/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": addrCIDR}},
				{"/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": "net-m"}},
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
	join := td.mustCall(t, "/NetworkDriver.Join", map[string]any{"NetworkID": "net-m", "EndpointID": epID, "SandboxKey": "/x"})
	if code, _ := td.call(t, "/NetworkDriver.Join", map[string]any{"NetworkID": "net-m", "EndpointID": "nope"}); code != http.StatusInternalServerError {
		t.Errorf("Join of an unknown endpoint: HTTP %d, want 500", code)
	}

	families = scrape(t, addr)
	if n := callCount(families, "/NetworkDriver.CreateEndpoint", "ok"); n < 1 {
		t.Errorf("CreateEndpoint histogram count %d, want at least 1", n)
	}
	if n := callCount(families, "/NetworkDriver.Join", "ok"); n != 1 {
		t.Errorf("Join ok histogram count %d, want 1", n)
	}
	if n := callCount(families, "/NetworkDriver.Join", "error"); n != 1 {
		t.Errorf("Join error histogram count %d, want 1", n)
	}
	// The endpoint was built after CreateEndpoint answered: its build
	// has a histogram of its own.
	if m := sample(families, "ebpfnet_endpoint_build_duration_seconds", map[string]string{"outcome": "ok"}); m == nil || m.GetHistogram().GetSampleCount() != 1 {
		t.Errorf("endpoint build histogram %v, want one ok build", m)
	}
	// No Docker here to tell the container's labels: the endpoint stays
	// at init, waiting for its identity.
	if got := value(families, "ebpfnet_endpoint_state", map[string]string{"state": metrics.StateWaitingForIdentity}); got != 1 {
		t.Errorf("endpoints waiting for identity %v, want 1", got)
	}
	if got := value(families, "ebpfnet_endpoint_state", map[string]string{"state": metrics.StateReady}); got != 0 {
		t.Errorf("ready endpoints %v, want 0", got)
	}

	// Do what Docker does after Join, then send from the container: one
	// datagram to the gateway (ARP answered by the program, then to the
	// host stack), one from an address that is not the container's.
	ns := "ebm-" + randomHex(t, 4)
	runCmd(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	peer := join["InterfaceName"].(map[string]any)["SrcName"].(string)
	gw := netip.MustParsePrefix(gateway).Addr()
	runCmd(t, "ip", "link", "set", peer, "netns", ns)
	runCmd(t, "ip", "-n", ns, "link", "set", peer, "name", "eth0")
	runCmd(t, "ip", "-n", ns, "addr", "add", addrCIDR, "dev", "eth0")
	runCmd(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	runCmd(t, "ip", "-n", ns, "route", "add", "default", "via", gw.String())

	egress := map[string]string{"direction": "EGRESS"}
	spoofed := map[string]string{"direction": "EGRESS", "reason": datapath.DropInvalidSIP.String()}
	before := scrape(t, addr)
	sendUDP(t, ns, netip.Addr{}, netip.AddrPortFrom(gw, 9))
	waitFor(t, addr, "the datagram to the gateway forwarded", func(f map[string]*dto.MetricFamily) bool {
		return value(f, "ebpfnet_forward_count_total", egress) > value(before, "ebpfnet_forward_count_total", egress) &&
			value(f, "ebpfnet_forward_bytes_total", egress) > value(before, "ebpfnet_forward_bytes_total", egress)
	})
	runCmd(t, "ip", "-n", ns, "addr", "add", "10.204.0.99/24", "dev", "eth0")
	sendUDP(t, ns, netip.MustParseAddr("10.204.0.99"), netip.AddrPortFrom(gw, 9))
	waitFor(t, addr, `a drop with reason "Invalid source ip"`, func(f map[string]*dto.MetricFamily) bool {
		return value(f, "ebpfnet_drop_count_total", spoofed) > value(before, "ebpfnet_drop_count_total", spoofed) &&
			value(f, "ebpfnet_drop_bytes_total", spoofed) > value(before, "ebpfnet_drop_bytes_total", spoofed)
	})

	teardown()
	stop()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("metrics still served on %s after the daemon stopped", addr)
	}
}

// TestMetricsBadAddressFailsStart: an address the daemon cannot listen on
// fails the start with an error that names it, rather than a daemon
// silently without metrics.
func TestMetricsBadAddressFailsStart(t *testing.T) {
	testutil.RequireRoot(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, addr := range []string{"127.0.0.1", taken.Addr().String()} {
		// Its PinDir and HostDevice are never reached: the address is
		// checked before the datapath.
		cfg := testConfig(t)
		cfg.MetricsAddr = addr
		log := logrus.New()
		log.SetOutput(io.Discard)
		d, err := start(cfg, log)
		if err == nil {
			d.close()
			os.RemoveAll(cfg.PinDir)
			t.Errorf("start with metrics address %q succeeded", addr)
			continue
		}
		if !strings.Contains(err.Error(), "Prometheus metrics") || !strings.Contains(err.Error(), addr) {
			t.Errorf("start with metrics address %q: error %q does not say what failed", addr, err)
		}
		if _, err := os.Stat(cfg.PinDir); err == nil {
			os.RemoveAll(cfg.PinDir)
			t.Errorf("a start refused for its metrics address still created %s", cfg.PinDir)
		}
	}
}

// TestMetricsVerdictsFromDatapath: the datapath's counters feed the right
// metric under Cilium's label values, and a verdict that is no packet's
// fate (REASON_POLICY, an event only) feeds none.
func TestMetricsVerdictsFromDatapath(t *testing.T) {
	got := verdictsOf(map[datapath.MetricKey]datapath.MetricValue{
		{Reason: datapath.ReasonForwarded, Dir: policy.Ingress}:   {Packets: 1, Bytes: 10},
		{Reason: datapath.ReasonToStack, Dir: policy.Egress}:      {Packets: 2, Bytes: 20},
		{Reason: datapath.ReasonARPReply, Dir: policy.Egress}:     {Packets: 3, Bytes: 30},
		{Reason: datapath.ReasonPolicy, Dir: policy.Egress}:       {Packets: 4, Bytes: 40},
		{Reason: datapath.ReasonPolicyAudit, Dir: policy.Ingress}: {Packets: 5, Bytes: 50},
		{Reason: datapath.DropPolicy, Dir: policy.Ingress}:        {Packets: 6, Bytes: 60},
		{Reason: datapath.Reason(200), Dir: policy.Egress}:        {Packets: 7, Bytes: 70},
	})
	want := map[metrics.Verdict]bool{
		{Kind: metrics.Forward, Reason: "Forwarded", Direction: "INGRESS", Packets: 1, Bytes: 10}:      true,
		{Kind: metrics.Forward, Reason: "To stack", Direction: "EGRESS", Packets: 2, Bytes: 20}:        true,
		{Kind: metrics.Forward, Reason: "ARP reply", Direction: "EGRESS", Packets: 3, Bytes: 30}:       true,
		{Kind: metrics.Audit, Reason: "Policy audit", Direction: "INGRESS", Packets: 5, Bytes: 50}:     true,
		{Kind: metrics.Drop, Reason: "Policy denied", Direction: "INGRESS", Packets: 6, Bytes: 60}:     true,
		{Kind: metrics.Drop, Reason: "Unknown reason 200", Direction: "EGRESS", Packets: 7, Bytes: 70}: true,
	}
	if len(got) != len(want) {
		t.Errorf("%d verdicts, want %d: %+v", len(got), len(want), got)
	}
	for _, v := range got {
		if !want[v] {
			t.Errorf("unexpected verdict %+v", v)
		}
	}
}
