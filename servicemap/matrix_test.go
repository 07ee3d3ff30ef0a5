package servicemap

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/policy"
)

func labelsOf(id uint32) []string {
	switch id {
	case IdentityHost:
		return []string{"reserved:host"}
	case IdentityWorld:
		return []string{"reserved:world"}
	case 16777217:
		return []string{"cidr:192.0.2.0/24", "reserved:world"}
	}
	return []string{fmt.Sprintf("container:id=app%d", id-255)}
}

func ingress(id uint32, port uint16, proto uint8) policy.Key {
	return policy.Key{Identity: id, Port: port, Proto: proto, Direction: policy.Ingress}
}

func egress(id uint32, port uint16, proto uint8) policy.Key {
	return policy.Key{Identity: id, Port: port, Proto: proto, Direction: policy.Egress}
}

// walkThrough is Cilium's walk-through under the L4 rule: app1 accepts
// app2 on TCP port 80 only; app2 and app3 enforce nothing.
func walkThrough() Inventory {
	return Inventory{
		Node: "host-a",
		Endpoints: []Endpoint{
			{ID: 1, Identity: app1, Container: "app1", IPv4: netip.MustParseAddr("10.77.0.2"), Node: "host-a", Local: true},
			{ID: 2, Identity: app2, Container: "app2", IPv4: netip.MustParseAddr("10.77.0.3"), Node: "host-a", Local: true},
			{ID: 3, Identity: app3, Container: "app3", IPv4: netip.MustParseAddr("10.77.0.4"), Node: "host-a", Local: true},
		},
		Policies: []EndpointPolicy{
			{Endpoint: 1, Identity: app1, Ingress: EnforceEnabled, Egress: EnforceDisabled, Entries: []policy.Key{ingress(app2, 80, ProtoTCP)}},
			{Endpoint: 2, Identity: app2, Ingress: EnforceDisabled, Egress: EnforceDisabled},
			{Endpoint: 3, Identity: app3, Ingress: EnforceDisabled, Egress: EnforceDisabled},
		},
		Labels: labelsOf,
	}
}

// cells renders the matrix as "from>to:ports" lines, "-" for denied.
func cells(m Matrix) string {
	var b strings.Builder
	for _, c := range m.Cells {
		ports := strings.Join(c.Ports, ",")
		if ports == "" {
			ports = "-"
		}
		partial := ""
		if c.Partial {
			partial = " partial"
		}
		fmt.Fprintf(&b, "%d>%d:%s%s\n", c.From, c.To, ports, partial)
	}
	return b.String()
}

func TestMatrixOfTheWalkThrough(t *testing.T) {
	m := BuildMatrix(walkThrough())
	var ids []string
	for _, id := range m.Identities {
		ids = append(ids, fmt.Sprintf("%d %s %v %s/%s", id.ID, id.Name, id.Containers, id.Ingress, id.Egress))
	}
	wantIDs := []string{
		"1 host [] /", "2 world [] /",
		"256 id=app1 [app1] enabled/disabled", "257 id=app2 [app2] disabled/disabled", "258 id=app3 [app3] disabled/disabled",
	}
	if !reflect.DeepEqual(ids, wantIDs) {
		t.Errorf("identities:\n got %q\nwant %q", ids, wantIDs)
	}
	want := `1>256:-
1>257:any
1>258:any
2>256:-
2>257:any
2>258:any
256>1:any
256>2:any
256>256:-
256>257:any
256>258:any
257>1:any
257>2:any
257>256:80/TCP
257>257:any
257>258:any
258>1:any
258>2:any
258>256:-
258>257:any
258>258:any
`
	if got := cells(m); got != want {
		t.Errorf("cells:\n%s\nwant:\n%s", got, want)
	}
}

// A flow needs the sender's egress and the receiver's ingress: the cell is
// what both allow, a wider entry covering a narrower one.
func TestMatrixIntersectsEgressAndIngress(t *testing.T) {
	inv := walkThrough()
	inv.Policies[1] = EndpointPolicy{Endpoint: 2, Identity: app2, Ingress: EnforceDisabled, Egress: EnforceEnabled,
		Entries: []policy.Key{egress(app1, 0, ProtoTCP), egress(app1, 53, ProtoUDP), egress(0, 443, ProtoTCP)}}
	inv.Policies[0].Entries = append(inv.Policies[0].Entries, ingress(app2, 8080, ProtoTCP), ingress(0, 53, ProtoUDP), ingress(0, 443, ProtoTCP))
	m := BuildMatrix(inv)
	got := cellOf(m, app2, app1)
	if want := []string{"80/TCP", "443/TCP", "8080/TCP", "53/UDP"}; !reflect.DeepEqual(got.Ports, want) {
		t.Errorf("app2 -> app1: %q, want %q", got.Ports, want)
	}
	if got := cellOf(m, app3, app1).Ports; !reflect.DeepEqual(got, []string{"443/TCP", "53/UDP"}) {
		t.Errorf("app3 -> app1 (entries for every identity): %q", got)
	}
	if got := cellOf(m, app2, app3).Ports; !reflect.DeepEqual(got, []string{"443/TCP"}) {
		t.Errorf("app2 -> app3 (app2's egress to any identity on 443): %q", got)
	}
	// An L3 entry covers the ports.
	inv.Policies[0].Entries = append(inv.Policies[0].Entries, ingress(app2, 0, 0))
	inv.Policies[1].Entries = append(inv.Policies[1].Entries, egress(app1, 0, 0))
	if got := cellOf(BuildMatrix(inv), app2, app1).Ports; !reflect.DeepEqual(got, []string{"any"}) {
		t.Errorf("app2 -> app1 under L3 entries both ways: %q", got)
	}
}

// Endpoints of one identity on networks with different enforcement: the
// identity accepts what any of them accepts, and says "mixed".
func TestMatrixUnitesAnIdentitysEndpoints(t *testing.T) {
	inv := walkThrough()
	inv.Endpoints = append(inv.Endpoints, Endpoint{ID: 4, Identity: app1, Container: "app1-b", Node: "host-a", Local: true})
	inv.Policies = append(inv.Policies, EndpointPolicy{Endpoint: 4, Identity: app1, Ingress: EnforceDisabled, Egress: EnforceDisabled})
	m := BuildMatrix(inv)
	if got := cellOf(m, app3, app1).Ports; !reflect.DeepEqual(got, []string{"any"}) {
		t.Errorf("app3 -> app1 with one of app1's endpoints unenforced: %q", got)
	}
	for _, id := range m.Identities {
		if id.ID == app1 && (id.Ingress != EnforceMixed || id.Endpoints != 2 || !reflect.DeepEqual(id.Containers, []string{"app1", "app1-b"})) {
			t.Errorf("app1: %+v", id)
		}
	}
}

// In a cluster: an identity whose endpoints are all on other nodes has
// only this node's side in its cells, marked partial; pairs decided only
// elsewhere are left out; identities a map names (a CIDR) are listed.
func TestMatrixAcrossNodes(t *testing.T) {
	inv := walkThrough()
	inv.Endpoints = append(inv.Endpoints,
		Endpoint{Identity: 259, IPv4: netip.MustParseAddr("10.77.1.2"), Node: "host-b"},
		Endpoint{Identity: 259, IPv4: netip.MustParseAddr("10.77.2.2"), Node: "host-c"},
		Endpoint{Identity: 260, IPv4: netip.MustParseAddr("10.77.2.3"), Node: "host-c"},
	)
	inv.Policies[0].Entries = append(inv.Policies[0].Entries, ingress(259, 80, ProtoTCP), ingress(16777217, 0, 0))
	m := BuildMatrix(inv)
	if c := cellOf(m, 259, app1); !reflect.DeepEqual(c.Ports, []string{"80/TCP"}) || !c.Partial {
		t.Errorf("remote 259 -> app1: %+v", c)
	}
	if c := cellOf(m, app2, 260); !reflect.DeepEqual(c.Ports, []string{"any"}) || !c.Partial {
		t.Errorf("app2 -> remote 260: %+v", c)
	}
	if c := cellOf(m, 16777217, app1); !reflect.DeepEqual(c.Ports, []string{"any"}) || c.Partial {
		t.Errorf("CIDR -> app1: %+v", c)
	}
	for _, c := range m.Cells {
		if (c.From == 259 || c.From == 260 || c.From < 256) && (c.To == 259 || c.To == 260 || c.To < 256) {
			t.Errorf("cell %d -> %d is decided on other nodes only, yet listed", c.From, c.To)
		}
	}
	for _, id := range m.Identities {
		if id.ID == 259 && (id.Endpoints != 2 || !reflect.DeepEqual(id.Nodes, []string{"host-b", "host-c"}) || id.Containers != nil || id.Ingress != "") {
			t.Errorf("remote identity 259: %+v", id)
		}
		if id.ID == 16777217 && id.Name != "192.0.2.0/24" {
			t.Errorf("CIDR identity: %+v", id)
		}
	}
}

func cellOf(m Matrix, from, to uint32) Cell {
	for _, c := range m.Cells {
		if c.From == from && c.To == to {
			return c
		}
	}
	return Cell{From: from, To: to, Ports: []string{"(not listed)"}}
}

func TestGraphNamesEveryIdentityItShows(t *testing.T) {
	inv := walkThrough()
	inv.Endpoints = append(inv.Endpoints, Endpoint{Identity: 259, IPv4: netip.MustParseAddr("10.77.1.2"), Node: "host-b"})
	edges := []Edge{
		{From: IdentityWorld, To: app1, Verdict: Denied, Flows: 1},
		{From: app2, To: app1, Verdict: Allowed, Flows: 2},
	}
	g := BuildGraph(inv, edges, Limits{Window: 90 * time.Second})
	var ids []string
	for _, id := range g.Identities {
		ids = append(ids, fmt.Sprintf("%d %s %d %v", id.ID, id.Name, id.Endpoints, id.Nodes))
	}
	want := []string{"2 world 0 []", "256 id=app1 1 [host-a]", "257 id=app2 1 [host-a]", "258 id=app3 1 [host-a]", "259 id=app4 1 [host-b]"}
	if !reflect.DeepEqual(ids, want) {
		t.Errorf("identities:\n got %q\nwant %q", ids, want)
	}
	if g.Node != "host-a" || g.WindowSeconds != 90 || len(g.Edges) != 2 {
		t.Errorf("graph: %+v", g)
	}
	if empty := BuildGraph(Inventory{}, nil, Limits{}); empty.Edges == nil || empty.Identities == nil {
		t.Errorf("an empty graph has null lists (the page wants [])")
	}
}

func TestDisplayName(t *testing.T) {
	for _, c := range []struct {
		labels []string
		want   string
	}{
		{[]string{"container:id=app1"}, "id=app1"},
		{[]string{"container:app=web", "container:tier=front"}, "app=web,tier=front"},
		{[]string{"reserved:host"}, "host"},
		{[]string{"cidr:192.0.2.0/24", "reserved:world"}, "192.0.2.0/24"},
		{[]string{"unknown"}, "unknown"},
		{nil, "identity 7"},
	} {
		if got := DisplayName(7, c.labels); got != c.want {
			t.Errorf("DisplayName(%q) = %q, want %q", c.labels, got, c.want)
		}
	}
}

func TestResolver(t *testing.T) {
	r := NewResolver(map[uint16]uint32{1: app1}, map[netip.Prefix]uint32{
		netip.MustParsePrefix("10.77.0.2/32"): app1,
		netip.MustParsePrefix("10.77.1.2/32"): 259,
		netip.MustParsePrefix("10.77.1.0/24"): IdentityWorld + 1000, // a remote block
		netip.MustParsePrefix("10.77.0.1/32"): IdentityHost,
		netip.MustParsePrefix("192.0.2.0/24"): 16777217,
	})
	for _, c := range []struct {
		epid uint16
		addr string
		want uint32
	}{
		{1, "10.99.9.9", app1}, // the flow's endpoint decides
		{9, "10.77.1.2", 259},  // an unknown epid falls back to the address
		{0, "10.77.1.3", IdentityWorld + 1000},
		{0, "10.77.0.1", IdentityHost},
		{0, "192.0.2.77", 16777217},
		{0, "198.51.100.1", IdentityWorld},
	} {
		if got := r.Identity(c.epid, netip.MustParseAddr(c.addr)); got != c.want {
			t.Errorf("Identity(%d, %s) = %d, want %d", c.epid, c.addr, got, c.want)
		}
	}
	if !r.HasEndpoint(1) || r.HasEndpoint(9) {
		t.Error("HasEndpoint")
	}
}
