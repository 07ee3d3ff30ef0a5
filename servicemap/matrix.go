package servicemap

import (
	"sort"

	"github.com/ebpfnet/ebpfnet/policy"
)

// Matrix says which identity may open flows to which, on which ports, as
// this node's policy maps decide it. A flow from A to B must pass A's
// egress policy and B's ingress policy: the ports of a cell are what both
// allow.
type Matrix struct {
	Node       string     `json:"node"`
	Identities []Identity `json:"identities"`
	// Cells hold every pair of identities at least one of which has its
	// endpoints' policy on this node. A pair left out is decided on other
	// nodes only.
	Cells []Cell `json:"cells"`
}

// Cell is what From may open to To.
type Cell struct {
	From uint32 `json:"from"`
	To   uint32 `json:"to"`
	// Ports: "any" (every port and protocol), "TCP" (every TCP port),
	// "80/TCP". Empty: denied.
	Ports []string `json:"ports"`
	// Partial: one end's endpoints are all on other nodes, which enforce
	// its side; only this node's side is in Ports.
	Partial bool `json:"partial,omitempty"`
}

// Allowed reports whether the cell lets any flow through.
func (c Cell) Allowed() bool { return len(c.Ports) > 0 }

// BuildMatrix computes the matrix from the endpoints' policy maps. Its
// identities are those with endpoints, host and world, and every identity
// a policy map names.
func BuildMatrix(inv Inventory) Matrix {
	ids := identitiesOf(inv)
	ids.add(IdentityHost)
	ids.add(IdentityWorld)
	byIdentity := map[uint32][]EndpointPolicy{}
	for _, p := range inv.Policies {
		byIdentity[p.Identity] = append(byIdentity[p.Identity], p)
		for _, k := range p.Entries {
			if k.Identity != 0 {
				ids.add(k.Identity)
			}
		}
	}
	list := ids.list(inv)
	elsewhere := map[uint32]bool{}
	for _, ep := range inv.Endpoints {
		if !ep.Local {
			elsewhere[ep.Identity] = true
		}
	}
	m := Matrix{Node: inv.Node, Identities: list, Cells: []Cell{}}
	for _, from := range list {
		for _, to := range list {
			src, dst := byIdentity[from.ID], byIdentity[to.ID]
			if src == nil && dst == nil {
				continue
			}
			ports := allowedBy(src, policy.Egress, to.ID).intersect(allowedBy(dst, policy.Ingress, from.ID))
			m.Cells = append(m.Cells, Cell{
				From: from.ID, To: to.ID, Ports: ports.strings(),
				Partial: (src == nil && elsewhere[from.ID]) || (dst == nil && elsewhere[to.ID]),
			})
		}
	}
	return m
}

// allowedBy is what the endpoints of one identity let pass in dir with
// peer: the union of their maps' answers. No endpoint here: nothing is
// enforced here.
func allowedBy(eps []EndpointPolicy, dir policy.Direction, peer uint32) portSet {
	if len(eps) == 0 {
		return anyPort()
	}
	out := portSet{}
	for _, ep := range eps {
		enforce := ep.Ingress
		if dir == policy.Egress {
			enforce = ep.Egress
		}
		if enforce == EnforceDisabled {
			return anyPort()
		}
		for _, k := range ep.Entries {
			if k.Direction == dir && (k.Identity == peer || k.Identity == 0) {
				out[portProto{k.Port, k.Proto}] = true
			}
		}
	}
	return out
}

// portProto is a policy key's port half: proto 0 is every protocol (and
// then port is 0), port 0 every port of proto.
type portProto struct {
	port  uint16
	proto uint8
}

type portSet map[portProto]bool

func anyPort() portSet { return portSet{{}: true} }

// meet is what two port entries both allow.
func meet(a, b portProto) (portProto, bool) {
	switch {
	case a.proto == 0:
		return b, true
	case b.proto == 0:
		return a, true
	case a.proto != b.proto:
		return portProto{}, false
	case a.port == 0:
		return b, true
	case b.port == 0, a.port == b.port:
		return a, true
	}
	return portProto{}, false
}

func (s portSet) intersect(o portSet) portSet {
	out := portSet{}
	for a := range s {
		for b := range o {
			if m, ok := meet(a, b); ok {
				out[m] = true
			}
		}
	}
	return out
}

// strings lists the set without what a wider entry covers, protocols in
// number order, then ports.
func (s portSet) strings() []string {
	if s[portProto{}] {
		return []string{"any"}
	}
	keep := make([]portProto, 0, len(s))
	for p := range s {
		if p.port != 0 && s[portProto{proto: p.proto}] {
			continue
		}
		keep = append(keep, p)
	}
	sort.Slice(keep, func(i, j int) bool {
		if keep[i].proto != keep[j].proto {
			return keep[i].proto < keep[j].proto
		}
		return keep[i].port < keep[j].port
	})
	out := make([]string, 0, len(keep))
	for _, p := range keep {
		out = append(out, PortString(p.port, p.proto))
	}
	return out
}
