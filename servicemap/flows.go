// Package servicemap turns what the datapath shows into the picture of who
// talks to whom: flows in (policy verdicts, drops, conntrack entries), a
// graph of identities and the who-may-talk matrix out. It is pure logic,
// with bounded memory: a flow not seen for a window is forgotten, and the
// number of flows, edges and ports per edge is capped.
package servicemap

import (
	"container/list"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// Verdict is what became of a flow.
type Verdict string

// Verdicts, as the page colours them.
const (
	// Allowed: a policy verdict that let the flow pass, or a conntrack
	// entry (only a flow that passed has one).
	Allowed Verdict = "allowed"
	// Denied: dropped, by policy or for another reason (Flow.Reason).
	Denied Verdict = "denied"
	// Audit: denied by policy and let through by audit mode.
	Audit Verdict = "audit"
)

// Flow is one observation of a flow.
type Flow struct {
	// Src is the end that sent the first packet (the packet's source for
	// an event); Dst's port is the service's.
	Src, Dst netip.AddrPort
	Proto    uint8
	// SrcIdentity and DstIdentity are the ends' security identities.
	SrcIdentity, DstIdentity uint32
	Verdict                  Verdict
	// Reason says why a denied flow was dropped ("Policy denied").
	Reason string
}

// Protocol numbers the page names.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// Limits bound the memory the flows take.
type Limits struct {
	// Window is how long a flow is remembered after it was last seen.
	Window time.Duration
	// MaxFlows caps the flows remembered one by one (to count each once);
	// past it the least recently seen is forgotten first.
	MaxFlows int
	// MaxEdges caps the identity pairs (per verdict); past it the least
	// recently seen edge goes.
	MaxEdges int
	// MaxPorts caps the ports listed per edge; the rest count as "other".
	MaxPorts int
}

// DefaultLimits: five minutes of flows, about 10 MB at most.
func DefaultLimits() Limits {
	return Limits{Window: 5 * time.Minute, MaxFlows: 32768, MaxEdges: 4096, MaxPorts: 16}
}

// flowKey identifies a flow by its ends. Only TCP and UDP have ports: the
// other protocols' flows are one per pair of addresses (the monitor's
// events do not carry ICMP's echo id, the conntrack table does; without it
// both count a ping once).
type flowKey struct {
	proto    uint8
	src, dst netip.AddrPort
}

// edgeKey is one arrow of the graph.
type edgeKey struct {
	src, dst uint32
	verdict  Verdict
}

// portKey is a service port: the destination port and protocol. ICMP has
// no port (Port 0); otherPorts gathers the ports past Limits.MaxPorts.
type portKey struct {
	port  uint16
	proto uint8
	other bool
}

type flowEntry struct {
	key  flowKey
	edge *edge
	port portKey
	// bucket is where the flow is counted on its edge: its port, or
	// "other" when the edge listed MaxPorts already.
	bucket portKey
	reason string
	last   time.Time
}

type edge struct {
	key    edgeKey
	flows  int
	ports  map[portKey]int
	reason map[string]int
	last   time.Time
	elem   *list.Element
	gone   bool // evicted: its flows attach to a new edge when seen again
}

// Flows remembers recent flows and counts them per identity pair. It is
// safe for concurrent use.
type Flows struct {
	limits Limits
	now    func() time.Time

	mu sync.Mutex
	// flows and edges are each ordered by last sight, most recent first.
	flows    map[flowKey]*list.Element
	flowList *list.List
	edges    map[edgeKey]*edge
	edgeList *list.List
}

// NewFlows returns an empty flow memory. now is the clock (time.Now when
// nil); a limit of 0 takes DefaultLimits' value.
func NewFlows(l Limits, now func() time.Time) *Flows {
	def := DefaultLimits()
	if l.Window <= 0 {
		l.Window = def.Window
	}
	if l.MaxFlows <= 0 {
		l.MaxFlows = def.MaxFlows
	}
	if l.MaxEdges <= 0 {
		l.MaxEdges = def.MaxEdges
	}
	if l.MaxPorts <= 0 {
		l.MaxPorts = def.MaxPorts
	}
	if now == nil {
		now = time.Now
	}
	return &Flows{
		limits: l, now: now,
		flows: map[flowKey]*list.Element{}, flowList: list.New(),
		edges: map[edgeKey]*edge{}, edgeList: list.New(),
	}
}

// Limits returns the limits in force.
func (f *Flows) Limits() Limits { return f.limits }

// Observe records one sighting of a flow. A flow seen again with another
// verdict or other identities moves: the latest sighting is the truth (an
// ingress denial follows the sender's egress verdict on the same packet).
func (f *Flows) Observe(fl Flow) {
	if fl.Verdict == "" {
		fl.Verdict = Allowed
	}
	if fl.Proto != ProtoTCP && fl.Proto != ProtoUDP {
		fl.Src = netip.AddrPortFrom(fl.Src.Addr(), 0)
		fl.Dst = netip.AddrPortFrom(fl.Dst.Addr(), 0)
	}
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire(now)
	key := flowKey{proto: fl.Proto, src: fl.Src, dst: fl.Dst}
	ek := edgeKey{src: fl.SrcIdentity, dst: fl.DstIdentity, verdict: fl.Verdict}
	if el, ok := f.flows[key]; ok {
		fe := el.Value.(*flowEntry)
		if fe.edge.gone || fe.edge.key != ek || fe.reason != fl.Reason {
			f.detach(fe)
			f.attach(fe, ek, fl.Reason, now)
		}
		fe.last = now
		f.flowList.MoveToFront(el)
		f.touch(fe.edge, now)
		return
	}
	if f.flowList.Len() >= f.limits.MaxFlows {
		// Its edge keeps the count: the flow was seen within the window,
		// only it can no longer be told apart from a new one.
		f.forget(f.flowList.Back(), false)
	}
	fe := &flowEntry{key: key, port: portOf(fl), last: now}
	f.attach(fe, ek, fl.Reason, now)
	f.flows[key] = f.flowList.PushFront(fe)
}

func portOf(fl Flow) portKey {
	switch fl.Proto {
	case ProtoTCP, ProtoUDP:
		return portKey{port: fl.Dst.Port(), proto: fl.Proto}
	}
	return portKey{proto: fl.Proto}
}

// attach counts fe on the edge ek, creating the edge if need be.
func (f *Flows) attach(fe *flowEntry, ek edgeKey, reason string, now time.Time) {
	e, ok := f.edges[ek]
	if !ok {
		if f.edgeList.Len() >= f.limits.MaxEdges {
			f.dropEdge(f.edgeList.Back().Value.(*edge))
		}
		e = &edge{key: ek, ports: map[portKey]int{}, reason: map[string]int{}}
		e.elem = f.edgeList.PushFront(e)
		f.edges[ek] = e
	}
	fe.edge, fe.reason = e, reason
	e.flows++
	pk := fe.port
	if _, listed := e.ports[pk]; !listed && len(e.ports) >= f.limits.MaxPorts {
		pk = portKey{other: true}
	}
	e.ports[pk]++
	fe.bucket = pk
	if reason != "" {
		e.reason[reason]++
	}
	f.touch(e, now)
}

// detach uncounts fe from its edge; an edge left with no flow goes.
func (f *Flows) detach(fe *flowEntry) {
	e := fe.edge
	if e == nil || e.gone {
		return
	}
	e.flows--
	if e.ports[fe.bucket]--; e.ports[fe.bucket] <= 0 {
		delete(e.ports, fe.bucket)
	}
	if fe.reason != "" {
		if e.reason[fe.reason]--; e.reason[fe.reason] <= 0 {
			delete(e.reason, fe.reason)
		}
	}
	if e.flows <= 0 {
		f.dropEdge(e)
	}
}

func (f *Flows) touch(e *edge, now time.Time) {
	e.last = now
	f.edgeList.MoveToFront(e.elem)
}

// forget removes a flow, uncounting it from its edge when uncount is set.
func (f *Flows) forget(el *list.Element, uncount bool) {
	fe := el.Value.(*flowEntry)
	if uncount {
		f.detach(fe)
	}
	f.flowList.Remove(el)
	delete(f.flows, fe.key)
}

func (f *Flows) dropEdge(e *edge) {
	e.gone = true
	f.edgeList.Remove(e.elem)
	delete(f.edges, e.key)
}

// expire forgets the flows and edges last seen before the window.
func (f *Flows) expire(now time.Time) {
	cut := now.Add(-f.limits.Window)
	for el := f.flowList.Back(); el != nil && el.Value.(*flowEntry).last.Before(cut); el = f.flowList.Back() {
		f.forget(el, true)
	}
	for el := f.edgeList.Back(); el != nil && el.Value.(*edge).last.Before(cut); el = f.edgeList.Back() {
		f.dropEdge(el.Value.(*edge))
	}
}

// Edge is one arrow of the graph: the flows from one identity to another
// that met one verdict within the window.
type Edge struct {
	From    uint32  `json:"from"`
	To      uint32  `json:"to"`
	Verdict Verdict `json:"verdict"`
	// Flows counts the distinct flows (by their ends) seen in the window;
	// past Limits.MaxFlows the oldest are no longer counted.
	Flows int `json:"flows"`
	// Ports are the service ports, most flows first.
	Ports []PortCount `json:"ports"`
	// Reasons say why denied flows were dropped.
	Reasons  []string  `json:"reasons,omitempty"`
	LastSeen time.Time `json:"lastSeen"`
}

// PortCount is a service port ("80/TCP", "ICMP", "other") and its flows.
type PortCount struct {
	Port  string `json:"port"`
	Flows int    `json:"flows"`
}

// Edges returns the edges seen within the window, ordered by their ends
// and verdict.
func (f *Flows) Edges() []Edge {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire(now)
	out := make([]Edge, 0, len(f.edges))
	for _, e := range f.edges {
		out = append(out, e.public())
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.From != b.From {
			return a.From < b.From
		}
		if a.To != b.To {
			return a.To < b.To
		}
		return a.Verdict < b.Verdict
	})
	return out
}

func (e *edge) public() Edge {
	out := Edge{From: e.key.src, To: e.key.dst, Verdict: e.key.verdict, Flows: e.flows, LastSeen: e.last, Ports: []PortCount{}}
	keys := make([]portKey, 0, len(e.ports))
	for k := range e.ports {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if e.ports[a] != e.ports[b] {
			return e.ports[a] > e.ports[b]
		}
		if a.other != b.other {
			return b.other
		}
		if a.proto != b.proto {
			return a.proto < b.proto
		}
		return a.port < b.port
	})
	for _, k := range keys {
		out.Ports = append(out.Ports, PortCount{Port: k.String(), Flows: e.ports[k]})
	}
	for r := range e.reason {
		out.Reasons = append(out.Reasons, r)
	}
	sort.Strings(out.Reasons)
	return out
}

func (k portKey) String() string {
	if k.other {
		return "other"
	}
	return PortString(k.port, k.proto)
}

// PortString names a port as the page and the CLI print it: "80/TCP",
// "TCP" (every port of TCP), "ICMP", "any" (every port and protocol).
func PortString(port uint16, proto uint8) string {
	name := ProtoName(proto)
	if proto == 0 {
		return "any"
	}
	if port == 0 || (proto != ProtoTCP && proto != ProtoUDP) {
		return name
	}
	return fmt.Sprintf("%d/%s", port, name)
}

// ProtoName names an IP protocol in capitals, as policy rules do.
func ProtoName(proto uint8) string {
	switch proto {
	case 0:
		return "ANY"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	}
	return fmt.Sprintf("proto-%d", proto)
}
