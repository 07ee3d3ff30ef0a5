package servicemap

import (
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"
)

// clock is a settable time for the window.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock { return &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

const (
	app1 = 256
	app2 = 257
	app3 = 258
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// tcp is a flow to app1's port 80 from app at sport.
func tcp(from uint32, src string, v Verdict) Flow {
	return Flow{Src: ap(src), Dst: ap("10.77.0.2:80"), Proto: ProtoTCP, SrcIdentity: from, DstIdentity: app1, Verdict: v}
}

// summary is an edge without its time, for comparisons.
type summary struct {
	From, To uint32
	Verdict  Verdict
	Flows    int
	Ports    string
	Reasons  string
}

func summarize(edges []Edge) []summary {
	out := []summary{}
	for _, e := range edges {
		s := summary{From: e.From, To: e.To, Verdict: e.Verdict, Flows: e.Flows, Reasons: fmt.Sprint(e.Reasons)}
		for _, p := range e.Ports {
			s.Ports += fmt.Sprintf("%s:%d ", p.Port, p.Flows)
		}
		out = append(out, s)
	}
	return out
}

func wantEdges(t *testing.T, f *Flows, want ...summary) {
	t.Helper()
	if want == nil {
		want = []summary{}
	}
	if got := summarize(f.Edges()); !reflect.DeepEqual(got, want) {
		t.Errorf("edges:\n got %+v\nwant %+v", got, want)
	}
}

// A flow is counted once however often it is seen: a verdict event, the
// drop of the same packet, its retransmissions, every conntrack poll.
func TestFlowsCountEachFlowOnce(t *testing.T) {
	f := NewFlows(Limits{}, newClock().now)
	for range 3 {
		f.Observe(tcp(app2, "10.77.0.3:40000", Allowed))
	}
	f.Observe(tcp(app2, "10.77.0.3:40001", Allowed))
	denied := tcp(app3, "10.77.0.4:50000", Denied)
	denied.Reason = "Policy denied"
	f.Observe(denied)
	f.Observe(denied)
	wantEdges(t, f,
		summary{From: app2, To: app1, Verdict: Allowed, Flows: 2, Ports: "80/TCP:2 ", Reasons: "[]"},
		summary{From: app3, To: app1, Verdict: Denied, Flows: 1, Ports: "80/TCP:1 ", Reasons: "[Policy denied]"},
	)
}

// The latest sighting decides: a packet that the sender's egress policy
// allowed and the receiver's ingress policy denied is a denied flow, and
// the allowed edge it leaves empty goes.
func TestFlowsMoveToTheirLatestVerdict(t *testing.T) {
	f := NewFlows(Limits{}, newClock().now)
	f.Observe(tcp(app3, "10.77.0.4:50000", Allowed))
	f.Observe(tcp(app3, "10.77.0.4:50000", Denied))
	wantEdges(t, f, summary{From: app3, To: app1, Verdict: Denied, Flows: 1, Ports: "80/TCP:1 ", Reasons: "[]"})
}

func TestFlowsLeaveWithTheWindow(t *testing.T) {
	c := newClock()
	f := NewFlows(Limits{Window: time.Minute}, c.now)
	f.Observe(tcp(app2, "10.77.0.3:40000", Allowed))
	c.advance(40 * time.Second)
	f.Observe(tcp(app2, "10.77.0.3:40001", Allowed))
	f.Observe(tcp(app3, "10.77.0.4:50000", Denied))
	c.advance(30 * time.Second) // the first flow is 70 s old
	wantEdges(t, f,
		summary{From: app2, To: app1, Verdict: Allowed, Flows: 1, Ports: "80/TCP:1 ", Reasons: "[]"},
		summary{From: app3, To: app1, Verdict: Denied, Flows: 1, Ports: "80/TCP:1 ", Reasons: "[]"},
	)
	f.Observe(tcp(app3, "10.77.0.4:50000", Denied)) // seen again: stays
	c.advance(40 * time.Second)
	wantEdges(t, f, summary{From: app3, To: app1, Verdict: Denied, Flows: 1, Ports: "80/TCP:1 ", Reasons: "[]"})
	c.advance(time.Minute)
	wantEdges(t, f)
	if f.flowList.Len() != 0 || len(f.flows) != 0 || len(f.edges) != 0 {
		t.Errorf("expired state kept: %d flows, %d edges", len(f.flows), len(f.edges))
	}
}

// Memory stays bounded however many flows come: the oldest flows are
// forgotten one by one (their edges keep counting them while in the
// window), the least recently seen edges go, and ports past the cap count
// as "other".
func TestFlowsStayWithinTheirLimits(t *testing.T) {
	c := newClock()
	f := NewFlows(Limits{Window: time.Hour, MaxFlows: 100, MaxEdges: 10, MaxPorts: 3}, c.now)
	for i := range 1000 {
		c.advance(time.Millisecond)
		f.Observe(Flow{
			Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(1000+i)), Dst: ap("10.0.0.2:80"),
			Proto: ProtoTCP, SrcIdentity: 300, DstIdentity: 301, Verdict: Allowed,
		})
	}
	if len(f.flows) != 100 || f.flowList.Len() != 100 {
		t.Errorf("%d flows remembered, want the cap, 100", len(f.flows))
	}
	wantEdges(t, f, summary{From: 300, To: 301, Verdict: Allowed, Flows: 1000, Ports: "80/TCP:1000 ", Reasons: "[]"})

	for i := range 20 {
		c.advance(time.Millisecond)
		f.Observe(Flow{Src: ap("10.0.0.1:1"), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.9"), uint16(i+1)),
			Proto: ProtoUDP, SrcIdentity: 400 + uint32(i), DstIdentity: 301, Verdict: Denied})
	}
	edges := f.Edges()
	if len(edges) != 10 || len(f.edges) != 10 || f.edgeList.Len() != 10 {
		t.Fatalf("%d edges, want the cap, 10", len(edges))
	}
	if edges[0].From != 410 || edges[9].From != 419 {
		t.Errorf("kept edges from %d to %d, want the last ten seen, 410 to 419", edges[0].From, edges[9].From)
	}

	g := NewFlows(Limits{MaxPorts: 3}, c.now)
	for port := range 6 {
		g.Observe(Flow{Src: ap("10.0.0.1:1000"), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(8080+port)),
			Proto: ProtoTCP, SrcIdentity: 300, DstIdentity: 301})
	}
	wantEdges(t, g, summary{From: 300, To: 301, Verdict: Allowed, Flows: 6, Ports: "other:3 8080/TCP:1 8081/TCP:1 8082/TCP:1 ", Reasons: "[]"})
}

// A flow whose edge was pushed out by the cap comes back on a new edge.
func TestFlowsReturnAfterTheirEdgeWasEvicted(t *testing.T) {
	f := NewFlows(Limits{MaxEdges: 1}, newClock().now)
	f.Observe(tcp(app2, "10.77.0.3:40000", Allowed))
	f.Observe(tcp(app3, "10.77.0.4:50000", Denied))
	f.Observe(tcp(app2, "10.77.0.3:40000", Allowed))
	wantEdges(t, f, summary{From: app2, To: app1, Verdict: Allowed, Flows: 1, Ports: "80/TCP:1 ", Reasons: "[]"})
}

// ICMP has no service port, and the monitor's events lack the echo id the
// conntrack table has: pings between two addresses are one flow.
func TestFlowsICMP(t *testing.T) {
	f := NewFlows(Limits{}, newClock().now)
	for _, src := range []string{"10.77.0.3:7", "10.77.0.3:0", "10.77.0.3:8"} {
		f.Observe(Flow{Src: ap(src), Dst: ap("10.77.0.2:0"), Proto: ProtoICMP, SrcIdentity: app2, DstIdentity: app1})
	}
	f.Observe(Flow{Src: ap("10.77.0.4:7"), Dst: ap("10.77.0.2:0"), Proto: ProtoICMP, SrcIdentity: app2, DstIdentity: app1})
	wantEdges(t, f, summary{From: app2, To: app1, Verdict: Allowed, Flows: 2, Ports: "ICMP:2 ", Reasons: "[]"})
}

func TestFlowsConcurrentUse(t *testing.T) {
	c := newClock()
	f := NewFlows(Limits{Window: time.Second, MaxFlows: 50, MaxEdges: 5}, c.now)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				c.advance(time.Millisecond)
				f.Observe(Flow{Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(i)), Dst: ap("10.0.0.2:80"),
					Proto: ProtoTCP, SrcIdentity: uint32(300 + i%7), DstIdentity: uint32(w), Verdict: Allowed})
				if i%50 == 0 {
					_ = f.Edges()
				}
			}
		}()
	}
	wg.Wait()
	if len(f.flows) > 50 || len(f.edges) > 5 {
		t.Errorf("%d flows, %d edges: past the caps", len(f.flows), len(f.edges))
	}
}

func TestPortString(t *testing.T) {
	for _, c := range []struct {
		port  uint16
		proto uint8
		want  string
	}{
		{0, 0, "any"}, {80, ProtoTCP, "80/TCP"}, {0, ProtoTCP, "TCP"}, {53, ProtoUDP, "53/UDP"},
		{0, ProtoICMP, "ICMP"}, {7, ProtoICMP, "ICMP"}, {0, 47, "proto-47"},
	} {
		if got := PortString(c.port, c.proto); got != c.want {
			t.Errorf("PortString(%d, %d) = %q, want %q", c.port, c.proto, got, c.want)
		}
	}
}
