package servicemap

import (
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/ebpfnet/ebpfnet/policy"
)

// Endpoint is one container's attachment, on this node or another.
type Endpoint struct {
	// ID is the node-local endpoint ID; 0 for another node's endpoint.
	ID        uint16
	Identity  uint32
	Container string // the container's name; empty where unknown
	IPv4      netip.Addr
	// Node is the node the endpoint runs on.
	Node  string
	Local bool
}

// How an endpoint enforces policy in one direction, as `ebpfnet endpoint
// list` says it.
const (
	EnforceDisabled = "disabled"
	EnforceEnabled  = "enabled"
	EnforceAudit    = "audit"
	// EnforceMixed: the identity's endpoints on this node differ (the
	// networks they are on have different enforcement options).
	EnforceMixed = "mixed"
)

// EndpointPolicy is what a local endpoint's policy map holds.
type EndpointPolicy struct {
	Endpoint uint16
	Identity uint32
	// Ingress and Egress are Enforce*: an endpoint that does not enforce
	// a direction lets everything pass that way, whatever its map holds.
	Ingress, Egress string
	Entries         []policy.Key
}

// Inventory is what the daemon knows at one moment.
type Inventory struct {
	// Node is this node's name.
	Node      string
	Endpoints []Endpoint
	Policies  []EndpointPolicy
	// Labels resolves an identity to its labels.
	Labels func(id uint32) []string
}

// Identity is a node of the graph: a security identity and the endpoints
// that carry it.
type Identity struct {
	ID     uint32   `json:"id"`
	Name   string   `json:"name"`
	Labels []string `json:"labels"`
	// Containers are the names of the identity's containers on this node.
	Containers []string `json:"containers,omitempty"`
	// Endpoints counts its endpoints, on this node and the others.
	Endpoints int `json:"endpoints"`
	// Nodes are the nodes its endpoints run on.
	Nodes []string `json:"nodes,omitempty"`
	// Ingress and Egress say how its endpoints on this node enforce
	// policy (Enforce*); empty when none is on this node, where its
	// policy is not known.
	Ingress string `json:"ingress,omitempty"`
	Egress  string `json:"egress,omitempty"`
}

// Graph is the service map: identities and the flows between them.
type Graph struct {
	Node          string     `json:"node"`
	WindowSeconds int        `json:"windowSeconds"`
	Identities    []Identity `json:"identities"`
	Edges         []Edge     `json:"edges"`
}

// BuildGraph puts the identities that have endpoints or flows together
// with the edges.
func BuildGraph(inv Inventory, edges []Edge, l Limits) Graph {
	ids := identitiesOf(inv)
	for _, e := range edges {
		ids.add(e.From)
		ids.add(e.To)
	}
	if edges == nil {
		edges = []Edge{}
	}
	return Graph{Node: inv.Node, WindowSeconds: int(l.Window.Seconds()), Identities: ids.list(inv), Edges: edges}
}

// identitySet gathers identities and what their endpoints say of them.
type identitySet map[uint32]*Identity

func (s identitySet) add(id uint32) *Identity {
	if e, ok := s[id]; ok {
		return e
	}
	e := &Identity{ID: id}
	s[id] = e
	return e
}

func identitiesOf(inv Inventory) identitySet {
	s := identitySet{}
	for _, ep := range inv.Endpoints {
		e := s.add(ep.Identity)
		e.Endpoints++
		if ep.Container != "" && ep.Local {
			e.Containers = append(e.Containers, ep.Container)
		}
		if ep.Node != "" && !contains(e.Nodes, ep.Node) {
			e.Nodes = append(e.Nodes, ep.Node)
		}
	}
	for _, p := range inv.Policies {
		e := s.add(p.Identity)
		e.Ingress = combine(e.Ingress, p.Ingress)
		e.Egress = combine(e.Egress, p.Egress)
	}
	return s
}

// combine is the enforcement of an identity with endpoints that say a and b.
func combine(a, b string) string {
	if a == "" || a == b {
		return b
	}
	return EnforceMixed
}

func (s identitySet) list(inv Inventory) []Identity {
	out := make([]Identity, 0, len(s))
	for _, e := range s {
		if inv.Labels != nil {
			e.Labels = inv.Labels(e.ID)
		}
		if e.Labels == nil {
			e.Labels = []string{}
		}
		e.Name = DisplayName(e.ID, e.Labels)
		sort.Strings(e.Containers)
		sort.Strings(e.Nodes)
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// DisplayName is a short name for an identity: its container labels
// without their source ("id=app1"), a reserved identity's word ("world"),
// a CIDR identity's prefix.
func DisplayName(id uint32, labels []string) string {
	var names, reserved []string
	for _, l := range labels {
		source, rest, ok := strings.Cut(l, ":")
		switch {
		case !ok:
			names = append(names, l)
		case source == "cidr":
			return rest
		case source == "reserved":
			reserved = append(reserved, rest)
		case source == "container":
			names = append(names, rest)
		default:
			names = append(names, l)
		}
	}
	if len(names) == 0 {
		names = reserved
	}
	if len(names) == 0 {
		return "identity " + strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(names, ",")
}
