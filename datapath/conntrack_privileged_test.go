package datapath

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/policy"
)

// TestConntrackOneKeyPerFlow: the programs record a flow under the key
// ctKey.ordered describes, and a reply finds it with that one key.
func TestConntrackOneKeyPerFlow(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 10), e.endpoint(n, 11)
	fromA, fromB := e.fromContainer(a), e.fromContainer(b)
	// Both orders of the ends: a is the lower address, then the higher.
	for i, c := range []struct {
		src, dst *Endpoint
		from     *ebpf.Program
		reply    *ebpf.Program
	}{{a, b, fromA, fromB}, {b, a, fromB, fromA}} {
		sport := uint16(41000 + i)
		syn := tcpPacket(c.src.LXCMAC, c.dst.LXCMAC, c.src.IPv4.Addr(), c.dst.IPv4.Addr(), sport, 80, 0x02)
		if ret, err := c.from.Run(&ebpf.RunOptions{Data: syn}); err != nil || ret != tcActRedirect {
			t.Fatalf("SYN %d: verdict %d, %v", i, ret, err)
		}
		k := ctKey{Saddr: c.src.IPv4.Addr().As4(), Daddr: c.dst.IPv4.Addr().As4(), Proto: 6}
		k.Sport = [2]byte{byte(sport >> 8), byte(sport)}
		k.Dport = [2]byte{0, 80}
		if !k.ordered() {
			k = k.swapped()
		}
		var v ctEntry
		if err := e.dp.shared[CTMapName].Lookup(k, &v); err != nil || v.Expires == 0 {
			t.Errorf("flow %d: no entry under %+v (%v)", i, k, err)
		}
		if err := e.dp.shared[CTMapName].Lookup(k.swapped(), &v); err == nil {
			t.Errorf("flow %d: also recorded under the other order", i)
		}
		// The reply is established: with ingress enforced on the
		// sender and nothing allowed, only conntrack lets it in.
		e.setPolicy(c.src, FlagEnforceIngress)
		e.setPolicy(c.dst, FlagEnforceEgress)
		ack := tcpPacket(c.dst.LXCMAC, c.src.LXCMAC, c.dst.IPv4.Addr(), c.src.IPv4.Addr(), 80, sport, 0x12)
		if ret, err := c.reply.Run(&ebpf.RunOptions{Data: ack}); err != nil || ret != tcActRedirect {
			t.Errorf("reply %d: verdict %d, %v", i, ret, err)
		}
		e.setPolicy(c.src, 0)
		e.setPolicy(c.dst, 0)
	}
}

// TestMetricsMapOfEarlierVersionReplaced: a per-CPU hash pinned by an
// earlier version gives way to the array; counting works.
func TestMetricsMapOfEarlierVersionReplaced(t *testing.T) {
	e := newTestEnv(t)
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(e.cfg.PinDir, MetricsMapName)
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: MetricsMapName, Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 16, MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}
	_ = old.Close()
	e.dp = e.open()
	n := e.network(1)
	a := e.endpoint(n, 10)
	ns := e.container(a)
	if !ping(ns, n.Gateway) {
		t.Fatal("container -> gateway: no reply")
	}
	if e.metric(ReasonARPReply, policy.Egress) == 0 || e.metric(ReasonToStack, policy.Ingress) == 0 {
		t.Errorf("metrics after replacing the map: %v", must(e.dp.Metrics()))
	}
	for _, k := range []MetricKey{{Reason: DropPolicy, Dir: policy.Egress}, {Reason: ReasonForwarded, Dir: policy.Ingress}} {
		if got := metricKeyOf(metricSlot(k)); got != k {
			t.Errorf("slot of %+v reads back as %+v", k, got)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// fromContainer opens the program attached at ep's tc ingress.
func (e *testEnv) fromContainer(ep *Endpoint) *ebpf.Program {
	e.t.Helper()
	in, _, err := tcPrograms(ep.IfIndex)
	if err != nil || in == 0 {
		e.t.Fatalf("from_container of %s: %d, %v", ep.IfName, in, err)
	}
	p, err := ebpf.NewProgramFromID(in)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { p.Close() })
	return p
}
