// Package policy reads Cilium-format L3/L4 rules and turns them into the
// per-endpoint allow entries that the datapath's policy map holds. It speaks
// neither Docker nor the kernel: rules, label sets and identities in,
// entries out.
package policy

import "sort"

// Rule is one rule in Cilium's JSON format, restricted to the L3/L4 subset
// ebpfnet enforces. Marshalled, it is again a rule `cilium policy import`
// would take.
type Rule struct {
	// EndpointSelector picks the endpoints the rule applies to; {} picks
	// every endpoint.
	EndpointSelector Selector `json:"endpointSelector"`
	// Ingress and Egress allow traffic; a non-empty section makes the
	// selected endpoints default-deny in that direction.
	Ingress []IngressRule `json:"ingress,omitempty"`
	Egress  []EgressRule  `json:"egress,omitempty"`
	// Labels name the rule; importing a rule replaces the rules that carry
	// the same labels.
	Labels      []RuleLabel `json:"labels,omitempty"`
	Description string      `json:"description,omitempty"`
}

// RuleLabel is a label of a rule (not of an endpoint), as Cilium writes it.
type RuleLabel struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Source string `json:"source,omitempty"`
}

// Selector is a Kubernetes-style label selector. Keys may carry Cilium's
// source prefix ("container:id", "reserved:host", "any:id"); without one
// they match a label of any source. All of MatchLabels and MatchExpressions
// must hold.
type Selector struct {
	MatchLabels      map[string]string `json:"matchLabels,omitempty"`
	MatchExpressions []Requirement     `json:"matchExpressions,omitempty"`
}

// Operator is a matchExpressions operator.
type Operator string

// The operators, with Kubernetes' semantics.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one matchExpressions element.
type Requirement struct {
	Key      string   `json:"key"`
	Operator Operator `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Entities that fromEntities/toEntities accept.
const (
	EntityHost    = "host"    // reserved:host, the node (and the gateways)
	EntityWorld   = "world"   // reserved:world and every CIDR identity
	EntityAll     = "all"     // any peer at all (identity 0)
	EntityCluster = "cluster" // the node and every endpoint on it
	EntityInit    = "init"    // endpoints whose labels are not known yet
)

// IngressRule allows traffic from the peers it names, on the ports it
// names. At most one of the From fields may be set (as in Cilium); with none
// set, ToPorts alone allows any peer on those ports, and an entirely empty
// item allows nothing (it only turns default-deny on).
type IngressRule struct {
	FromEndpoints []Selector `json:"fromEndpoints,omitempty"`
	FromEntities  []string   `json:"fromEntities,omitempty"`
	FromCIDR      []string   `json:"fromCIDR,omitempty"`
	ToPorts       []PortRule `json:"toPorts,omitempty"`
}

// EgressRule is IngressRule's mirror for traffic the endpoint sends.
type EgressRule struct {
	ToEndpoints []Selector `json:"toEndpoints,omitempty"`
	ToEntities  []string   `json:"toEntities,omitempty"`
	ToCIDR      []string   `json:"toCIDR,omitempty"`
	ToPorts     []PortRule `json:"toPorts,omitempty"`
}

// PortRule lists ports; a peer is allowed on any of them.
type PortRule struct {
	Ports []PortProtocol `json:"ports"`
}

// PortProtocol is one port: a decimal number ("0" or empty means every
// port) and TCP, UDP or ANY (empty means ANY).
type PortProtocol struct {
	Port     string `json:"port,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// Protocols accepted in PortProtocol.Protocol.
const (
	ProtoNameTCP = "TCP"
	ProtoNameUDP = "UDP"
	ProtoNameANY = "ANY"
)

// peerRule is the direction-free view of an IngressRule or EgressRule, so
// that validation and compilation are written once.
type peerRule struct {
	endpoints []Selector
	entities  []string
	cidrs     []string
	ports     []PortRule
}

func (r IngressRule) peers() peerRule {
	return peerRule{r.FromEndpoints, r.FromEntities, r.FromCIDR, r.ToPorts}
}

func (r EgressRule) peers() peerRule {
	return peerRule{r.ToEndpoints, r.ToEntities, r.ToCIDR, r.ToPorts}
}

// clone copies everything a caller could change, so the repository's rules
// are its own.
func (r Rule) clone() Rule {
	out := Rule{EndpointSelector: r.EndpointSelector.clone(), Description: r.Description}
	out.Labels = append([]RuleLabel(nil), r.Labels...)
	for _, in := range r.Ingress {
		out.Ingress = append(out.Ingress, IngressRule{
			FromEndpoints: cloneSelectors(in.FromEndpoints),
			FromEntities:  append([]string(nil), in.FromEntities...),
			FromCIDR:      append([]string(nil), in.FromCIDR...),
			ToPorts:       clonePorts(in.ToPorts),
		})
	}
	for _, eg := range r.Egress {
		out.Egress = append(out.Egress, EgressRule{
			ToEndpoints: cloneSelectors(eg.ToEndpoints),
			ToEntities:  append([]string(nil), eg.ToEntities...),
			ToCIDR:      append([]string(nil), eg.ToCIDR...),
			ToPorts:     clonePorts(eg.ToPorts),
		})
	}
	return out
}

func (s Selector) clone() Selector {
	var out Selector
	if s.MatchLabels != nil {
		out.MatchLabels = make(map[string]string, len(s.MatchLabels))
		for k, v := range s.MatchLabels {
			out.MatchLabels[k] = v
		}
	}
	for _, e := range s.MatchExpressions {
		e.Values = append([]string(nil), e.Values...)
		out.MatchExpressions = append(out.MatchExpressions, e)
	}
	return out
}

func cloneSelectors(ss []Selector) []Selector {
	var out []Selector
	for _, s := range ss {
		out = append(out, s.clone())
	}
	return out
}

func clonePorts(ps []PortRule) []PortRule {
	var out []PortRule
	for _, p := range ps {
		out = append(out, PortRule{Ports: append([]PortProtocol(nil), p.Ports...)})
	}
	return out
}

func sortRuleLabels(ls []RuleLabel) {
	sort.Slice(ls, func(i, j int) bool {
		a, b := ls[i], ls[j]
		if a.Source != b.Source {
			return a.Source < b.Source
		}
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		return a.Value < b.Value
	})
}
