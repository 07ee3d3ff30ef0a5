package datapath

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// eventLog collects what ReadEvents delivers during a test.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

// events starts the test's one ReadEvents reader; it stops before the
// datapath is closed (cleanups run last-in first-out).
func (e *testEnv) events() *eventLog {
	e.t.Helper()
	l := &eventLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- e.dp.ReadEvents(ctx, func(ev Event) {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		})
	}()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("ReadEvents: %v", err)
		}
	})
	return l
}

// find waits up to a second for an event that matches.
func (l *eventLog) find(match func(Event) bool) (Event, bool) {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		l.mu.Lock()
		for _, ev := range l.evs {
			if match(ev) {
				l.mu.Unlock()
				return ev, true
			}
		}
		l.mu.Unlock()
	}
	return Event{}, false
}

// listen starts a line echo server in ns on addr:port.
func listen(t *testing.T, ns string, addr netip.Addr, port uint16) {
	t.Helper()
	var ln net.Listener
	if err := testutil.InNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// dial connects from ns to addr:port within timeout.
func dial(ns string, addr netip.Addr, port uint16, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := testutil.InNetns(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, port).String(), timeout)
		return err
	})
	return c, err
}

// echo sends a line over c and expects it back.
func echo(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ping\n" {
		return fmt.Errorf("echo got %q: %v", line, err)
	}
	return nil
}

// canConnect tells whether a TCP connection from ns succeeds and echoes.
func canConnect(ns string, addr netip.Addr, port uint16) bool {
	c, err := dial(ns, addr, port, 700*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	return echo(c) == nil
}

const (
	protoICMP = 1
	protoTCP  = 6
)

func TestPolicyPortsProtocolsConntrackAndEvents(t *testing.T) {
	e := newTestEnv(t)
	evs := e.events()
	n := e.network(1)
	a, b := e.endpoint(n, 70), e.endpoint(n, 71)
	nsA, nsB := e.container(a), e.container(b)
	listen(t, nsB, b.IPv4.Addr(), 8080)
	listen(t, nsB, b.IPv4.Addr(), 8081)
	listen(t, nsA, a.IPv4.Addr(), 9090)

	// a may send anything to b, and enforces ingress with no entry at
	// all: only replies get in. b accepts TCP 8080 from a and enforces
	// egress with no entry: it may only answer.
	e.setPolicy(a, FlagEnforceIngress|FlagEnforceEgress, policy.Key{Identity: b.Identity, Direction: policy.Egress})
	e.setPolicy(b, FlagEnforceIngress|FlagEnforceEgress,
		policy.Key{Identity: a.Identity, Port: 8080, Proto: protoTCP, Direction: policy.Ingress})

	if !canConnect(nsA, b.IPv4.Addr(), 8080) {
		t.Error("a -> b TCP 8080 denied; replies of an allowed flow must pass both enforced sides")
	}
	if canConnect(nsA, b.IPv4.Addr(), 8081) {
		t.Error("a -> b TCP 8081 passed b's ingress policy")
	}
	if ping(nsA, b.IPv4.Addr()) {
		t.Error("a -> b ICMP passed b's TCP-only ingress policy")
	}
	denied := e.metric(DropPolicy, policy.Egress)
	if canConnect(nsB, a.IPv4.Addr(), 9090) {
		t.Error("b -> a new connection passed b's egress policy")
	}
	if e.metric(DropPolicy, policy.Egress) == denied {
		t.Error("b -> a: no egress DROP_POLICY counted")
	}

	// The events of those flows, with every field.
	if _, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventPolicyVerdict && ev.Verdict == VerdictAllowed && ev.EndpointID == b.ID &&
			ev.Direction == policy.Ingress && ev.DstPort == 8080 && ev.Proto == protoTCP &&
			ev.SrcIdentity == a.Identity && ev.DstIdentity == b.Identity
	}); !ok {
		t.Error("no allowed ingress verdict for a -> b:8080")
	}
	ev, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventPolicyVerdict && ev.Verdict == VerdictDenied && ev.DstPort == 8081
	})
	if !ok {
		t.Fatal("no denied verdict for a -> b:8081")
	}
	if ev.EndpointID != b.ID || ev.Direction != policy.Ingress || ev.Reason != DropPolicy || ev.Proto != protoTCP ||
		ev.Src != a.IPv4.Addr() || ev.Dst != b.IPv4.Addr() || ev.SrcPort == 0 ||
		ev.SrcIdentity != a.Identity || ev.DstIdentity != b.Identity || ev.IfIndex == 0 || ev.Len == 0 {
		t.Errorf("denied verdict fields: %+v", ev)
	}
	if _, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventDrop && ev.Reason == DropPolicy && ev.Verdict == VerdictDenied &&
			ev.DstPort == 8081 && ev.EndpointID == b.ID && ev.Reason.String() == "Policy denied"
	}); !ok {
		t.Error("no drop event for a -> b:8081")
	}
	if _, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventDrop && ev.Proto == protoICMP && ev.EndpointID == b.ID && ev.SrcPort != 0
	}); !ok {
		t.Error("no drop event with the echo id for a -> b ICMP")
	}
	if _, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventPolicyVerdict && ev.Verdict == VerdictDenied && ev.EndpointID == b.ID &&
			ev.Direction == policy.Egress && ev.DstPort == 9090 && ev.DstIdentity == a.Identity
	}); !ok {
		t.Error("no denied egress verdict for b -> a:9090")
	}
	// A second reader would split the events.
	if err := e.dp.ReadEvents(context.Background(), func(Event) {}); err != ErrEventsBusy {
		t.Errorf("second reader: %v, want ErrEventsBusy", err)
	}
}

func TestPolicyEstablishedFlowSurvivesPolicyChange(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 72), e.endpoint(n, 73)
	nsA, nsB := e.container(a), e.container(b)
	listen(t, nsB, b.IPv4.Addr(), 8080)
	e.setPolicy(b, FlagEnforceIngress, policy.Key{Identity: a.Identity, Port: 8080, Proto: protoTCP, Direction: policy.Ingress})

	c, err := dial(nsA, b.IPv4.Addr(), 8080, time.Second)
	if err != nil {
		t.Fatalf("allowed connection: %v", err)
	}
	defer c.Close()
	if err := echo(c); err != nil {
		t.Fatal(err)
	}
	// Deny everything: the rule goes, enforcement stays.
	if added, removed, err := e.dp.ApplyPolicy(b.ID, policy.EndpointPolicy{IngressEnforced: true}); err != nil || added != 0 || removed != 1 {
		t.Fatalf("ApplyPolicy: added %d removed %d, %v", added, removed, err)
	}
	if err := echo(c); err != nil {
		t.Errorf("established flow cut by a policy change: %v", err)
	}
	if canConnect(nsA, b.IPv4.Addr(), 8080) {
		t.Error("new connection passed after the rule was removed")
	}
}

func TestPolicyHostIPCacheIdentityAndAudit(t *testing.T) {
	e := newTestEnv(t)
	evs := e.events()
	n := e.network(1)
	a, b := e.endpoint(n, 74), e.endpoint(n, 75)
	nsA, nsB := e.container(a), e.container(b)
	host := netip.PrefixFrom(n.Gateway, 32)

	// Host -> a: the host's packets come from the gateway address
	// (the /32 route's source), which is the world until the ipcache
	// says it is the host.
	e.setPolicy(a, FlagEnforceIngress, policy.Key{Identity: uint32(identity.Host), Direction: policy.Ingress})
	if ping("", a.IPv4.Addr()) {
		t.Error("host -> a passed without an ipcache entry for the host")
	}
	if _, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventPolicyVerdict && ev.Verdict == VerdictDenied && ev.EndpointID == a.ID &&
			ev.SrcIdentity == uint32(identity.World) && ev.Src == n.Gateway && ev.DstIdentity == a.Identity
	}); !ok {
		t.Error("no denied verdict with the world identity")
	}
	if err := e.dp.PutIPCache(host, IPCacheEntry{Identity: identity.Host}); err != nil {
		t.Fatal(err)
	}
	if got, err := e.dp.IPCache(); err != nil || got[host] != (IPCacheEntry{Identity: identity.Host}) || len(got) != 1 {
		t.Errorf("IPCache() = %v, %v", got, err)
	}
	if !ping("", a.IPv4.Addr()) {
		t.Error("host -> a denied with the host identity allowed")
	}
	// a -> host: egress against the destination's ipcache identity; the
	// reply passes a's enforced ingress as part of the flow.
	e.setPolicy(a, FlagEnforceIngress|FlagEnforceEgress, policy.Key{Identity: uint32(identity.Host), Direction: policy.Egress})
	if !ping(nsA, n.Gateway) {
		t.Error("a -> host denied with the host identity allowed")
	}
	if err := e.dp.DeleteIPCache(host); err != nil {
		t.Fatal(err)
	}
	if ping(nsA, n.Gateway) {
		t.Error("a -> gateway passed as world")
	}

	// b -> a: a accepts identity 900 only; b gets it from its labels.
	e.setPolicy(a, FlagEnforceIngress|FlagEnforceEgress, policy.Key{Identity: 900, Direction: policy.Ingress})
	if ping(nsB, a.IPv4.Addr()) {
		t.Error("b -> a passed before b had identity 900")
	}
	labels := map[string]string{"id": "app900"}
	if err := e.dp.SetEndpointIdentity(b.ID, 900, "c0ffee", "web", labels); err != nil {
		t.Fatal(err)
	}
	if !ping(nsB, a.IPv4.Addr()) {
		t.Error("b -> a denied after b became identity 900")
	}
	got, _ := e.dp.EndpointByID(b.ID)
	if got.Identity != 900 || got.ContainerName != "web" || got.Labels["id"] != "app900" {
		t.Errorf("endpoint after SetEndpointIdentity: %+v", got)
	}
	data, err := os.ReadFile(filepath.Join(e.dp.epDir(b.ID), EPConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, rec, err := ParseEPConfig(data); err != nil || rec.Identity != 900 || rec.ContainerID != "c0ffee" {
		t.Errorf("record after SetEndpointIdentity: %+v, %v", rec, err)
	}
	for _, w := range []string{" * Identity: 900\n", " * Container name: web\n", " * - {id app900 container}\n"} {
		if !strings.Contains(string(data), w) {
			t.Errorf("ep_config.h lacks %q", w)
		}
	}

	// Audit: a's egress to b would be denied; it passes and says so.
	e.setPolicy(a, FlagEnforceIngress|FlagEnforceEgress|FlagAudit)
	audited := e.metric(ReasonPolicyAudit, policy.Egress)
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("audit mode dropped a -> b")
	}
	if e.metric(ReasonPolicyAudit, policy.Egress) == audited {
		t.Error("no POLICY_AUDIT counted")
	}
	if ev, ok := evs.find(func(ev Event) bool {
		return ev.Type == EventPolicyVerdict && ev.Verdict == VerdictAudit && ev.EndpointID == a.ID
	}); !ok || ev.Verdict.String() != "audit" || ev.DstIdentity != 900 {
		t.Errorf("audit verdict: %+v, found %v", ev, ok)
	}
	if got, _ := e.dp.EndpointByID(a.ID); got.PolicyFlags != FlagEnforceIngress|FlagEnforceEgress|FlagAudit {
		t.Errorf("PolicyFlags = %b", got.PolicyFlags)
	}
}

func TestPolicyInitialPolicyAndRestore(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, c := e.endpoint(n, 76), e.endpoint(n, 77)
	nsA, nsC := e.container(a), e.container(c)
	fromA := policy.Key{Identity: a.Identity, Proto: protoICMP, Direction: policy.Ingress}
	b := &Endpoint{
		DockerEndpointID: "initial-" + e.suffix, DockerNetworkID: "net1",
		IPv4: hostAddr(n, 78), Network: n,
		InitialPolicy: &policy.EndpointPolicy{IngressEnforced: true, Entries: keys(fromA)},
	}
	if err := e.dp.CreateEndpoint(b); err != nil {
		t.Fatal(err)
	}
	got, _ := e.dp.EndpointByID(b.ID)
	if got.Identity != uint32(identity.Init) || got.PolicyFlags != FlagEnforceIngress || got.PolicyEntries != 1 || got.InitialPolicy != nil {
		t.Errorf("new endpoint: identity %d flags %b entries %d initial %v", got.Identity, got.PolicyFlags, got.PolicyEntries, got.InitialPolicy)
	}
	e.container(b)
	// c's very first packet to b meets b's policy.
	if ping(nsC, b.IPv4.Addr()) {
		t.Error("c -> b passed: the initial policy left an allow-all window")
	}
	if !ping(nsA, b.IPv4.Addr()) {
		t.Error("a -> b denied by the initial policy that allows it")
	}

	// Flags and entries survive a restart; the cache agrees with the map.
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	e.dp = e.open()
	if _, err := e.dp.Restore(); err != nil {
		t.Fatal(err)
	}
	got, _ = e.dp.EndpointByID(b.ID)
	if got.PolicyFlags != FlagEnforceIngress || got.PolicyEntries != 1 {
		t.Errorf("restored: flags %b entries %d", got.PolicyFlags, got.PolicyEntries)
	}
	fromC := policy.Key{Identity: c.Identity, Proto: protoICMP, Direction: policy.Ingress}
	p := policy.EndpointPolicy{IngressEnforced: true, Entries: keys(fromA)}
	if added, removed, err := e.dp.ApplyPolicy(b.ID, p); err != nil || added != 0 || removed != 0 {
		t.Errorf("same policy after restore: added %d removed %d, %v", added, removed, err)
	}
	p.Entries = keys(fromC)
	if added, removed, err := e.dp.ApplyPolicy(b.ID, p); err != nil || added != 1 || removed != 1 {
		t.Errorf("swap a for c: added %d removed %d, %v", added, removed, err)
	}
	if ks, err := e.dp.PolicyEntries(b.ID); err != nil || len(ks) != 1 || ks[0] != fromC {
		t.Errorf("PolicyEntries = %v, %v", ks, err)
	}
	if !ping(nsC, b.IPv4.Addr()) || ping(nsA, b.IPv4.Addr()) {
		t.Error("swapped policy not in force")
	}
}

// TestPolicyProtocolWithoutPort: a rule "TCP on any port" is the entry
// (identity, port 0, TCP); it admits every TCP port and nothing else.
func TestPolicyProtocolWithoutPort(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 80), e.endpoint(n, 81)
	nsA, nsB := e.container(a), e.container(b)
	listen(t, nsB, b.IPv4.Addr(), 8080)
	listen(t, nsB, b.IPv4.Addr(), 9999)
	e.setPolicy(b, FlagEnforceIngress, policy.Key{Identity: a.Identity, Proto: protoTCP, Direction: policy.Ingress})
	for _, port := range []uint16{8080, 9999} {
		if !canConnect(nsA, b.IPv4.Addr(), port) {
			t.Errorf("a -> b TCP %d denied by a TCP-any-port entry", port)
		}
	}
	if ping(nsA, b.IPv4.Addr()) {
		t.Error("a -> b ICMP passed a TCP-only entry")
	}
}
