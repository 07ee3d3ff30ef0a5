package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
)

const (
	l3Rule = `[{"endpointSelector": {"matchLabels": {"id": "app1"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}]}],
  "labels": [{"key": "name", "value": "l3-rule"}]}]`
	l4Rule = `[{"endpointSelector": {"matchLabels": {"id": "app1"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
  "labels": [{"key": "name", "value": "l3-rule"}]}]`
)

// monitorCapture runs `ebpfnet monitor -o json` for the rest of the test.
type monitorCapture struct {
	mu     sync.Mutex
	events []api.MonitorEvent
}

func startMonitor(t *testing.T, bin string, args ...string) *monitorCapture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append([]string{"monitor", "-o", "json"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &monitorCapture{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev api.MonitorEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				m.mu.Lock()
				m.events = append(m.events, ev)
				m.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done; _ = cmd.Wait() })
	return m
}

// find returns the first captured event that matches.
func (m *monitorCapture) find(match func(api.MonitorEvent) bool) (api.MonitorEvent, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ev := range m.events {
		if match(ev) {
			return ev, true
		}
	}
	return api.MonitorEvent{}, false
}

func (m *monitorCapture) types() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]int{}
	for _, ev := range m.events {
		seen[ev.Type]++
	}
	return seen
}

func hasLabel(labels []string, want string) bool {
	for _, l := range labels {
		if l == want {
			return true
		}
	}
	return false
}

func writeRules(t testing.TB, rules string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rules.json")
	if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func importRules(t *testing.T, bin, rules string) uint64 {
	t.Helper()
	var rev api.PolicyRevision
	out := run(t, bin, "policy", "import", writeRules(t, rules), "-o", "json")
	if err := json.Unmarshal([]byte(out), &rev); err != nil || rev.Revision == 0 {
		t.Fatalf("policy import answered %q (%v)", out, err)
	}
	return rev.Revision
}

// noPolicy deletes every rule now and again when the test ends: the daemon
// keeps its policy across restarts, and so across tests.
func noPolicy(t testing.TB, bin string) {
	t.Helper()
	run(t, bin, "policy", "delete", "--all")
	t.Cleanup(func() { _, _ = tryRun(bin, "policy", "delete", "--all") })
}

func httpGet(from, ip string) error {
	_, err := execIn(from, "timeout", "3", "wget", "-q", "-O", "-", "http://"+ip+"/")
	return err
}

// TestPolicyL3L4FromLabels is Cilium's getting-started walk-through with
// ebpfnet: app2 may reach app1, app3 may not, and the monitor names the drop.
func TestPolicyL3L4FromLabels(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	noPolicy(t, bin)
	network(t, "e2e-pol", "--subnet", "10.238.0.0/24")
	httpd(t, "e2e-app1", "e2e-pol", "--label", "id=app1")
	sleeper(t, "e2e-app2", "e2e-pol", "--label", "id=app2")
	sleeper(t, "e2e-app3", "e2e-pol", "--label", "id=app3")
	app1 := containerIP(t, "e2e-app1", "e2e-pol")

	// No rule selects app1: everything reaches it.
	eventually(t, 10*time.Second, "app3 -> app1 before any rule", func() error { return httpGet("e2e-app3", app1) })

	monitor := startMonitor(t, bin, "--type", "drop")
	rev := importRules(t, bin, l3Rule)
	if err := httpGet("e2e-app2", app1); err != nil {
		t.Errorf("L3 rule: app2 -> app1 HTTP: %v", err)
	}
	if err := httpGet("e2e-app3", app1); err == nil {
		t.Errorf("L3 rule: app3 reached app1")
	}
	if err := ping("e2e-app2", app1); err != nil {
		t.Errorf("L3 rule: app2 -> app1 ping: %v", err)
	}
	eventually(t, 5*time.Second, "monitor reports app3's drop", func() error {
		if _, ok := monitor.find(func(ev api.MonitorEvent) bool {
			return ev.Type == "drop" && ev.Reason == "Policy denied" &&
				hasLabel(ev.SrcLabels, "container:id=app3") && hasLabel(ev.DstLabels, "container:id=app1") &&
				strings.HasSuffix(ev.Destination, ":80")
		}); !ok {
			return fmt.Errorf("no matching drop among %v", monitor.types())
		}
		return nil
	})
	if n := monitor.types()["policy-verdict"]; n != 0 {
		t.Errorf("--type drop printed %d policy verdicts", n)
	}

	// The L4 rule replaces the L3 one (same labels): HTTP yes, ping no.
	if rev2 := importRules(t, bin, l4Rule); rev2 <= rev {
		t.Errorf("revision %d after %d: want it to grow", rev2, rev)
	}
	if err := httpGet("e2e-app2", app1); err != nil {
		t.Errorf("L4 rule: app2 -> app1 HTTP: %v", err)
	}
	if err := ping("e2e-app2", app1); err == nil {
		t.Errorf("L4 rule: app2's ping reached app1")
	}

	// The CLI shows what is in force.
	var app1ep api.Endpoint
	for _, ep := range endpoints(t) {
		if ep.IPv4 == app1 {
			app1ep = ep
		}
	}
	if app1ep.PolicyIngress != "enabled" || app1ep.PolicyEgress != "disabled" || app1ep.Labels["id"] != "app1" || app1ep.Identity < 256 {
		t.Errorf("endpoint list shows app1 as %+v", app1ep)
	}
	bpfPolicy := run(t, bin, "bpf", "policy", "get", fmt.Sprint(app1ep.ID))
	if !strings.Contains(bpfPolicy, "container:id=app2") || !strings.Contains(bpfPolicy, "80/TCP") {
		t.Errorf("bpf policy get %d:\n%s", app1ep.ID, bpfPolicy)
	}
	if ids := run(t, bin, "identity", "list"); !strings.Contains(ids, "container:id=app1") || !strings.Contains(ids, "reserved:host") {
		t.Errorf("identity list:\n%s", ids)
	}
	if ipc := run(t, bin, "bpf", "ipcache", "list"); !strings.Contains(ipc, app1+"/32") || !strings.Contains(ipc, "10.238.0.1/32") {
		t.Errorf("bpf ipcache list:\n%s", ipc)
	}

	// A broken file changes nothing, and says what is wrong.
	before := run(t, bin, "policy", "get", "-o", "json")
	out, err := tryRun(bin, "policy", "import", writeRules(t, `[{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "SCTP"}]}]}]}]`))
	if err == nil || !strings.Contains(err.Error(), "SCTP") {
		t.Errorf("broken rule file: %q %v; want an error naming SCTP", out, err)
	}
	if after := run(t, bin, "policy", "get", "-o", "json"); after != before {
		t.Errorf("a refused import changed the policy:\n%s\n%s", before, after)
	}
	if err := httpGet("e2e-app2", app1); err != nil {
		t.Errorf("after a refused import, app2 -> app1: %v", err)
	}

	// delete --all opens everything again.
	run(t, bin, "policy", "delete", "--all")
	if err := httpGet("e2e-app3", app1); err != nil {
		t.Errorf("after delete --all, app3 -> app1: %v", err)
	}
	if err := ping("e2e-app2", app1); err != nil {
		t.Errorf("after delete --all, app2 ping: %v", err)
	}
}

// TestNewContainerIsUnderPolicyFromItsFirstPacket: a container started
// after the import, whose first command connects to a peer it may reach,
// succeeds every time (retransmissions included), and one it may not reach
// never gets through.
func TestNewContainerIsUnderPolicyFromItsFirstPacket(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	noPolicy(t, bin)
	network(t, "e2e-first", "--subnet", "10.239.0.0/24")
	httpd(t, "e2e-srv", "e2e-first", "--label", "id=app1")
	srv := containerIP(t, "e2e-srv", "e2e-first")
	importRules(t, bin, l4Rule)

	// sh must stay PID 1, so that timeout's signal reaches wget: PID 1 of a
	// namespace ignores signals it has no handler for. busybox sh would exec
	// a lone command, and busybox timeout execs the command in its own
	// process: wget would be PID 1 and wait out TCP's SYN retries (about
	// 130 s) instead of the timeout. The "; exit $?" keeps sh.
	for i := 0; i < 20; i++ {
		start := time.Now()
		out, err := tryRun("docker", "run", "--rm", "--network", "e2e-first", "--label", "id=app2", image,
			"sh", "-c", "timeout 10 wget -q -O - http://"+srv+"/; exit $?")
		if err != nil || !strings.Contains(out, "hello") {
			t.Errorf("run %d: allowed client's first connection: %q %v", i, out, err)
		}
		t.Logf("run %d took %v", i, time.Since(start))
	}
	out, err := tryRun("docker", "run", "--rm", "--network", "e2e-first", "--label", "id=app3", image,
		"sh", "-c", "timeout 3 wget -q -O - http://"+srv+"/; exit $?")
	if err == nil {
		t.Errorf("a client without a rule got through: %q", out)
	}
}

// TestEnforcementModesAndAudit: per network, always denies what no rule
// allows even with no rules, never ignores the rules, and audit reports
// what it would deny but drops nothing.
func TestEnforcementModesAndAudit(t *testing.T) {
	bin := requireEnvironment(t)
	startDaemon(t, bin)
	noPolicy(t, bin)
	network(t, "e2e-always", "--subnet", "10.243.0.0/24", "-o", "ebpfnet.policy-enforcement=always")
	network(t, "e2e-never", "--subnet", "10.243.1.0/24", "-o", "ebpfnet.policy-enforcement=never")
	network(t, "e2e-audit", "--subnet", "10.243.2.0/24", "-o", "ebpfnet.policy-audit=true")
	for _, n := range []string{"always", "never", "audit"} {
		httpd(t, "e2e-"+n+"-srv", "e2e-"+n, "--label", "id=app1")
		sleeper(t, "e2e-"+n+"-cli", "e2e-"+n, "--label", "id=app3")
	}
	ip := func(n string) string { return containerIP(t, "e2e-"+n+"-srv", "e2e-"+n) }
	waitIdentity := func(name string) {
		eventually(t, 10*time.Second, name+" gets its identity", func() error {
			for _, ep := range endpoints(t) {
				if ep.ContainerName == name && ep.Identity >= 256 {
					return nil
				}
			}
			return fmt.Errorf("not yet")
		})
	}
	for _, n := range []string{"always", "never", "audit"} {
		waitIdentity("e2e-" + n + "-srv")
		waitIdentity("e2e-" + n + "-cli")
	}
	if err := httpGet("e2e-always-cli", ip("always")); err == nil {
		t.Error("policy-enforcement=always with no rules let traffic through")
	}
	if err := httpGet("e2e-never-cli", ip("never")); err != nil {
		t.Errorf("policy-enforcement=never, no rules: %v", err)
	}

	monitor := startMonitor(t, bin)
	importRules(t, bin, l3Rule) // app1 accepts only app2; the clients are app3
	if err := httpGet("e2e-never-cli", ip("never")); err != nil {
		t.Errorf("policy-enforcement=never ignored no rule? app3 -> app1: %v", err)
	}
	if err := httpGet("e2e-audit-cli", ip("audit")); err != nil {
		t.Errorf("audit mode dropped app3 -> app1: %v", err)
	}
	eventually(t, 5*time.Second, "audit verdict in the monitor", func() error {
		if _, ok := monitor.find(func(ev api.MonitorEvent) bool {
			return ev.Type == "policy-verdict" && ev.Verdict == "audit" && hasLabel(ev.SrcLabels, "container:id=app3")
		}); !ok {
			return fmt.Errorf("none among %v", monitor.types())
		}
		return nil
	})
	auditIngress := "(not listed)"
	for _, ep := range endpoints(t) {
		if ep.ContainerName == "e2e-audit-srv" {
			auditIngress = ep.PolicyIngress
		}
	}
	if auditIngress != "audit" {
		t.Errorf("endpoint list shows e2e-audit-srv's ingress policy as %q, want audit", auditIngress)
	}
}
