package datapath

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/policy"
)

// flowKey is the conntrack key of a flow between two ends, ordered.
func flowKey(a netip.Addr, aport uint16, b netip.Addr, bport uint16, proto uint8) ctKey {
	k := ctKey{Saddr: a.As4(), Daddr: b.As4(), Proto: proto}
	binary.BigEndian.PutUint16(k.Sport[:], aport)
	binary.BigEndian.PutUint16(k.Dport[:], bport)
	if !k.ordered() {
		k = k.swapped()
	}
	return k
}

// flow reads the entry of a flow; ok is false when there is none.
func (e *testEnv) flow(k ctKey) (ctEntry, bool) {
	e.t.Helper()
	var v ctEntry
	err := e.dp.shared[CTMapName].Lookup(k, &v)
	if err != nil && !isNotExist(err) {
		e.t.Fatal(err)
	}
	return v, err == nil
}

func isNotExist(err error) bool { return ignoreNotExist(err) == nil }

// expiresIn tells whether v expires about d from now (within a second and
// a half either way: the clock is coarse and the test takes time).
func expiresIn(v ctEntry, d time.Duration) bool {
	left := time.Duration(int64(v.Expires) - int64(monotonicNow()))
	return left > d-1500*time.Millisecond && left < d+1500*time.Millisecond
}

// send runs one frame through p and checks its verdict.
func send(t *testing.T, what string, p *ebpf.Program, frame []byte, want uint32) {
	t.Helper()
	ret, err := p.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if ret != want {
		t.Errorf("%s: verdict %d, want %d", what, ret, want)
	}
}

// TestConntrackStatesAndTimeouts: a flow's entry follows its state, and
// its lifetime is the state's timeout from its last packet: a lone SYN
// soon, an established connection late, a closed one soon, UDP and ICMP by
// their own timeouts. The listing shows each flow from the end that opened
// it.
func TestConntrackStatesAndTimeouts(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 10), e.endpoint(n, 11)
	fromA, fromB := e.fromContainer(a), e.fromContainer(b)
	A, B := a.IPv4.Addr(), b.IPv4.Addr()
	const syn, ack, fin, rst = 0x02, 0x10, 0x01, 0x04

	// Opening: a SYN, then the SYN-ACK, keep the SYN timeout.
	k := flowKey(A, 40000, B, 80, protoTCP)
	send(t, "SYN", fromA, tcpPacket(a.LXCMAC, b.LXCMAC, A, B, 40000, 80, syn), tcActRedirect)
	v, ok := e.flow(k)
	if !ok || v.state(protoTCP) != CTStateOpening || v.Timeout != 60 || !expiresIn(v, CTTimeoutSYN) {
		t.Fatalf("after SYN: %+v (found %v), want opening for %v", v, ok, CTTimeoutSYN)
	}
	lo, hi := a.ID, b.ID
	if k.Saddr != A.As4() {
		lo, hi = hi, lo
	}
	if v.EPID != [2]uint16{lo, hi} {
		t.Errorf("endpoints of the flow %v, want %v", v.EPID, [2]uint16{lo, hi})
	}
	send(t, "SYN-ACK", fromB, tcpPacket(b.LXCMAC, a.LXCMAC, B, A, 80, 40000, syn|ack), tcActRedirect)
	if v, _ = e.flow(k); v.state(protoTCP) != CTStateOpening || !expiresIn(v, CTTimeoutSYN) {
		t.Errorf("after SYN-ACK: %+v, want still opening", v)
	}
	// Established by the first packet without SYN.
	send(t, "ACK", fromA, tcpPacket(a.LXCMAC, b.LXCMAC, A, B, 40000, 80, ack), tcActRedirect)
	if v, _ = e.flow(k); v.state(protoTCP) != CTStateEstablished || v.Timeout != 8000 || !expiresIn(v, CTTimeoutTCP) {
		t.Errorf("after ACK: %+v, want established for %v", v, CTTimeoutTCP)
	}
	// A FIN from one end leaves it established, one from each closes.
	send(t, "FIN from a", fromA, tcpPacket(a.LXCMAC, b.LXCMAC, A, B, 40000, 80, fin|ack), tcActRedirect)
	if v, _ = e.flow(k); v.state(protoTCP) != CTStateEstablished || !expiresIn(v, CTTimeoutTCP) {
		t.Errorf("after a's FIN: %+v, want still established", v)
	}
	send(t, "FIN from b", fromB, tcpPacket(b.LXCMAC, a.LXCMAC, B, A, 80, 40000, fin|ack), tcActRedirect)
	if v, _ = e.flow(k); v.state(protoTCP) != CTStateClosing || v.Timeout != 10 || !expiresIn(v, CTTimeoutClose) {
		t.Errorf("after both FINs: %+v, want closing for %v", v, CTTimeoutClose)
	}
	// The last ACK keeps it closing.
	send(t, "last ACK", fromA, tcpPacket(a.LXCMAC, b.LXCMAC, A, B, 40000, 80, ack), tcActRedirect)
	if v, _ = e.flow(k); v.state(protoTCP) != CTStateClosing || !expiresIn(v, CTTimeoutClose) {
		t.Errorf("after the last ACK: %+v, want closing", v)
	}

	// An RST closes at once.
	k2 := flowKey(A, 40001, B, 81, protoTCP)
	send(t, "SYN 2", fromA, tcpPacket(a.LXCMAC, b.LXCMAC, A, B, 40001, 81, syn), tcActRedirect)
	send(t, "ACK 2", fromA, tcpPacket(a.LXCMAC, b.LXCMAC, A, B, 40001, 81, ack), tcActRedirect)
	send(t, "RST", fromB, tcpPacket(b.LXCMAC, a.LXCMAC, B, A, 81, 40001, rst|ack), tcActRedirect)
	if v, _ = e.flow(k2); v.state(protoTCP) != CTStateClosing || !expiresIn(v, CTTimeoutClose) {
		t.Errorf("after RST: %+v, want closing for %v", v, CTTimeoutClose)
	}

	// UDP and ICMP have their own timeouts and no states.
	send(t, "UDP", fromB, udpPacket(b.LXCMAC, a.LXCMAC, B, A, 5353, 53, 16), tcActRedirect)
	if v, ok = e.flow(flowKey(B, 5353, A, 53, protoUDP)); !ok || v.Timeout != 60 || !expiresIn(v, CTTimeoutAny) {
		t.Errorf("UDP flow: %+v (found %v), want %v", v, ok, CTTimeoutAny)
	}
	send(t, "echo", fromA, icmpEcho(a.LXCMAC, b.LXCMAC, A, B, false, 7), tcActRedirect)
	if v, ok = e.flow(flowKey(A, 7, B, 0, protoICMP)); !ok || v.Timeout != 30 || !expiresIn(v, CTTimeoutICMP) {
		t.Errorf("ICMP flow: %+v (found %v), want %v", v, ok, CTTimeoutICMP)
	}

	flows, err := e.dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	want := map[CTFlow]bool{
		{Proto: protoTCP, Src: netip.AddrPortFrom(A, 40000), Dst: netip.AddrPortFrom(B, 80), State: CTStateClosing, SrcEndpoint: a.ID, DstEndpoint: b.ID}: true,
		{Proto: protoTCP, Src: netip.AddrPortFrom(A, 40001), Dst: netip.AddrPortFrom(B, 81), State: CTStateClosing, SrcEndpoint: a.ID, DstEndpoint: b.ID}: true,
		{Proto: protoUDP, Src: netip.AddrPortFrom(B, 5353), Dst: netip.AddrPortFrom(A, 53), SrcEndpoint: b.ID, DstEndpoint: a.ID}:                         true,
		{Proto: protoICMP, Src: netip.AddrPortFrom(A, 7), Dst: netip.AddrPortFrom(B, 0), SrcEndpoint: a.ID, DstEndpoint: b.ID}:                            true,
	}
	for _, f := range flows {
		if f.Expires <= 0 || f.Expires > CTTimeoutTCP {
			t.Errorf("flow %+v expires in %v", f, f.Expires)
		}
		f.Expires = 0
		if !want[f] {
			t.Errorf("unexpected flow %+v", f)
		}
		delete(want, f)
	}
	for f := range want {
		t.Errorf("flow %+v not listed", f)
	}
}

// TestConntrackExpiredFlowMeetsPolicy: a flow past its expiry is no flow,
// even before the collector deletes it: its next packet meets policy. A
// live flow's packets push its expiry out.
func TestConntrackExpiredFlowMeetsPolicy(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 20), e.endpoint(n, 21)
	fromA := e.fromContainer(a)
	A, B := a.IPv4.Addr(), b.IPv4.Addr()
	send(t, "first datagram", fromA, udpPacket(a.LXCMAC, b.LXCMAC, A, B, 4000, 9000, 16), tcActRedirect)
	// From now on b accepts nothing new.
	e.setPolicy(b, FlagEnforceIngress)
	k := flowKey(A, 4000, B, 9000, protoUDP)
	m := e.dp.shared[CTMapName]
	v, _ := e.flow(k)
	v.Expires = monotonicNow() + uint64(5*time.Second)
	if err := m.Put(k, v); err != nil {
		t.Fatal(err)
	}
	send(t, "datagram of the live flow", fromA, udpPacket(a.LXCMAC, b.LXCMAC, A, B, 4000, 9000, 16), tcActRedirect)
	if v, _ = e.flow(k); !expiresIn(v, CTTimeoutAny) {
		t.Errorf("a packet did not push the expiry out: %+v", v)
	}
	// The programs' clock is coarse, a tick behind this one.
	v.Expires = monotonicNow() - uint64(time.Second)
	if err := m.Put(k, v); err != nil {
		t.Fatal(err)
	}
	denied := e.metric(DropPolicy, policy.Ingress)
	send(t, "datagram of the expired flow", fromA, udpPacket(a.LXCMAC, b.LXCMAC, A, B, 4000, 9000, 16), tcActShot)
	if e.metric(DropPolicy, policy.Ingress) == denied {
		t.Error("the expired flow's packet was not judged by policy")
	}
}

// TestConntrackGarbageCollector: a sweep deletes the expired flows, keeps
// the live ones and counts both by protocol class; Run sweeps until its
// context ends; a sweep of a closed datapath counts as uncompleted.
func TestConntrackGarbageCollector(t *testing.T) {
	e := newTestEnv(t)
	m := e.dp.shared[CTMapName]
	now := monotonicNow()
	x, y := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	live := flowKey(x, 1000, y, 80, protoTCP)
	deadTCP := flowKey(x, 1001, y, 80, protoTCP)
	deadUDP := flowKey(x, 1002, y, 53, protoUDP)
	liveICMP := flowKey(x, 9, y, 0, protoICMP)
	for k, exp := range map[ctKey]uint64{live: now + uint64(time.Hour), deadTCP: now - 1, deadUDP: 1, liveICMP: now + uint64(time.Minute)} {
		if err := m.Put(k, ctEntry{Expires: exp, Timeout: 60}); err != nil {
			t.Fatal(err)
		}
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	g := NewCTGC(e.dp, 20*time.Millisecond, log)
	if err := g.Sweep(); err != nil {
		t.Fatal(err)
	}
	s := g.Stats()
	if s.Completed != 1 || s.Uncompleted != 0 || s.MaxEntries != 65536 ||
		s.Alive[CTClassTCP] != 1 || s.Alive[CTClassNonTCP] != 1 ||
		s.Deleted[CTClassTCP] != 1 || s.Deleted[CTClassNonTCP] != 1 {
		t.Errorf("stats after a sweep: %+v", s)
	}
	for k, want := range map[ctKey]bool{live: true, liveICMP: true, deadTCP: false, deadUDP: false} {
		if _, ok := e.flow(k); ok != want {
			t.Errorf("flow %+v present %v after the sweep, want %v", k, ok, want)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Run(ctx); close(done) }()
	later := flowKey(x, 1003, y, 80, protoTCP)
	if err := m.Put(later, ctEntry{Expires: monotonicNow() - 1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, ok := e.flow(later); ok && time.Now().Before(deadline); _, ok = e.flow(later) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := e.flow(later); ok {
		t.Error("Run did not sweep an expired flow within 5 s")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if g.Stats().Completed < 2 {
		t.Errorf("Run swept %d times", g.Stats().Completed)
	}

	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	before := g.Stats().Uncompleted
	if err := g.Sweep(); err == nil {
		t.Error("a sweep of a closed datapath succeeded")
	}
	if g.Stats().Uncompleted != before+1 {
		t.Error("a failed sweep was not counted as uncompleted")
	}
}

// TestConntrackAddressReusedIsJudgedByPolicy: a new endpoint on the address
// of a deleted one meets its own policy for a tuple the old one had as an
// established flow, whether the entry was the old endpoint's (its epid
// reused too) or was recorded while the address was free.
func TestConntrackAddressReusedIsJudgedByPolicy(t *testing.T) {
	for _, gap := range []bool{false, true} {
		name := "flow of the deleted endpoint"
		if gap {
			name = "flow recorded while the address was free"
		}
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t)
			n := e.network(1)
			a, b := e.endpoint(n, 30), e.endpoint(n, 31)
			fromB := e.fromContainer(b)
			A, B := a.IPv4.Addr(), b.IPv4.Addr()
			udp := func(dst HardwareAddr) []byte { return udpPacket(b.LXCMAC, dst, B, A, 5000, 9000, 16) }
			tcp := func(dst HardwareAddr) []byte { return tcpPacket(b.LXCMAC, dst, B, A, 41000, 80, 0x10) }
			send(t, "UDP to a", fromB, udp(a.LXCMAC), tcActRedirect)
			send(t, "TCP to a", fromB, tcpPacket(b.LXCMAC, a.LXCMAC, B, A, 41000, 80, 0x02), tcActRedirect)
			send(t, "TCP ACK to a", fromB, tcp(a.LXCMAC), tcActRedirect)

			if err := e.dp.DeleteEndpoint(a.DockerEndpointID); err != nil {
				t.Fatal(err)
			}
			e.dp.delWG.Wait()
			for _, k := range []ctKey{flowKey(B, 5000, A, 9000, protoUDP), flowKey(B, 41000, A, 80, protoTCP)} {
				if _, ok := e.flow(k); ok {
					t.Errorf("flow %+v of the deleted endpoint is still there", k)
				}
			}
			if gap {
				// The address is no endpoint's: to the host stack,
				// recorded with no endpoint at its end.
				send(t, "UDP to the free address", fromB, udp(a.LXCMAC), tcActOK)
				send(t, "TCP ACK to the free address", fromB, tcp(a.LXCMAC), tcActOK)
				if _, ok := e.flow(flowKey(B, 5000, A, 9000, protoUDP)); !ok {
					t.Fatal("no flow recorded to the free address")
				}
			}
			c := e.endpoint(n, 30)
			if c.ID != a.ID {
				t.Errorf("epid %d not reused (got %d)", a.ID, c.ID)
			}
			e.setPolicy(c, FlagEnforceIngress)
			denied := e.metric(DropPolicy, policy.Ingress)
			send(t, "UDP of the old flow to the new endpoint", fromB, udp(c.LXCMAC), tcActShot)
			send(t, "TCP ACK of the old flow to the new endpoint", fromB, tcp(c.LXCMAC), tcActShot)
			if got := e.metric(DropPolicy, policy.Ingress); got < denied+2 {
				t.Errorf("policy denied %d of the 2 packets", got-denied)
			}
			// Once its policy allows, the same tuple is a flow of its own.
			e.setPolicy(c, FlagEnforceIngress, policy.Key{Identity: b.Identity, Direction: policy.Ingress})
			send(t, "UDP to the new endpoint, allowed", fromB, udp(c.LXCMAC), tcActRedirect)
			if v, _ := e.flow(flowKey(B, 5000, A, 9000, protoUDP)); v.EPID != epidsOf(b, c, B, A) {
				t.Errorf("new flow names endpoints %v", v.EPID)
			}
		})
	}
}

// epidsOf is the EPID field of a flow between x at xa and y at ya.
func epidsOf(x, y *Endpoint, xa, ya netip.Addr) [2]uint16 {
	if flowKey(xa, 0, ya, 0, 0).Saddr == xa.As4() {
		return [2]uint16{x.ID, y.ID}
	}
	return [2]uint16{y.ID, x.ID}
}

// TestConntrackUpgradeFromEarlierLayout: a daemon of the previous version
// left ebpfnet_ct4 pinned with 8-byte values (last seen). A new start
// carries its flows over: an established connection keeps working under a
// policy that allows nothing new, and nothing else is let through.
func TestConntrackUpgradeFromEarlierLayout(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	a, b := e.endpoint(n, 40), e.endpoint(n, 41)
	nsA, nsB := e.container(a), e.container(b)
	listen(t, nsB, b.IPv4.Addr(), 8080)
	c, err := dial(nsA, b.IPv4.Addr(), 8080, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echo(c); err != nil {
		t.Fatal(err)
	}
	e.setPolicy(a, FlagEnforceIngress|FlagEnforceEgress)
	e.setPolicy(b, FlagEnforceIngress|FlagEnforceEgress)
	if err := echo(c); err != nil {
		t.Fatalf("established connection under deny-all: %v", err)
	}
	local := c.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()
	conn := flowKey(a.IPv4.Addr(), local.Port(), b.IPv4.Addr(), 8080, protoTCP)
	if _, ok := e.flow(conn); !ok {
		t.Fatal("no entry for the connection")
	}

	// What the previous version leaves: its table, pinned, with this
	// connection (keyed by its first packet, as the oldest versions did),
	// a flow that expired long ago and a live UDP flow.
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(e.cfg.PinDir, CTMapName)
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: CTMapName, Type: ebpf.LRUHash, KeySize: 16, ValueSize: 8, MaxEntries: 65536})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	now := monotonicNow()
	x, y := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	// Expired long ago: 30 s after boot (ICMP's timeout).
	expired := flowKey(x, 7, y, 0, protoICMP)
	udp := flowKey(a.IPv4.Addr(), 5000, x, 53, protoUDP)
	unordered := conn
	if conn.Saddr != a.IPv4.Addr().As4() {
		unordered = conn.swapped()
	}
	for k, last := range map[ctKey]uint64{unordered: now, expired: 1, udp: now} {
		if err := old.Put(k, legacyCTEntry{LastSeen: last}); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}

	e.dp = e.open()
	if _, err := e.dp.Restore(); err != nil {
		t.Fatal(err)
	}
	if err := echo(c); err != nil {
		t.Errorf("established connection lost in the upgrade: %v", err)
	}
	if canConnect(nsA, b.IPv4.Addr(), 8080) {
		t.Error("a new connection passed a deny-all policy after the upgrade")
	}
	v, ok := e.flow(conn)
	if !ok || v.state(protoTCP) != CTStateEstablished || v.EPID != epidsOf(a, b, a.IPv4.Addr(), b.IPv4.Addr()) {
		t.Errorf("carried-over connection: %+v (found %v)", v, ok)
	}
	if _, ok := e.flow(expired); ok {
		t.Error("an expired flow was carried over")
	}
	if v, ok := e.flow(udp); !ok || v.Timeout != 60 || v.EPID != epidsOf(a, &Endpoint{}, a.IPv4.Addr(), x) {
		t.Errorf("carried-over UDP flow: %+v (found %v)", v, ok)
	}
	pinned, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if pinned.ValueSize() != 24 {
		t.Errorf("pinned %s has %d-byte values after the upgrade", CTMapName, pinned.ValueSize())
	}
	if e.dp.ctLegacy != nil {
		t.Error("the earlier table is still held after Restore")
	}
}

// TestConntrackTableOfUnknownLayoutReplaced: a pinned table no version of
// ours wrote is replaced by an empty one; the datapath starts.
func TestConntrackTableOfUnknownLayoutReplaced(t *testing.T) {
	e := newTestEnv(t)
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(e.cfg.PinDir, CTMapName)
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	odd, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 12, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer odd.Close()
	if err := odd.Pin(pin); err != nil {
		t.Fatal(err)
	}
	e.dp = e.open()
	if m := e.dp.shared[CTMapName]; m.ValueSize() != 24 || m.MaxEntries() != 65536 {
		t.Errorf("table after replacing: %d-byte values, %d entries", m.ValueSize(), m.MaxEntries())
	}
}
